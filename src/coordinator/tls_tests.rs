//! Certificate reload: files swapped the way the kubelet updates a mounted
//! Secret, seen by new TLS connections to the link and the webhook.

use std::path::Path;
use std::process::Command;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::*;

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and two serving certificates for 127.0.0.1 it signed: `a.crt`/
/// `a.key` and `b.crt`/`b.key`.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sh(d, "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=prewarm-test-ca -keyout ca.key -out ca.crt 2>/dev/null");
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for n in ["a", "b"] {
        sh(d, &format!("openssl req -newkey rsa:2048 -nodes -subj /CN=coordinator-{n} -keyout {n}.key -out {n}.csr 2>/dev/null"));
        sh(d, &format!("openssl x509 -req -in {n}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out {n}.crt 2>/dev/null"));
    }
    dir
}

/// A Secret volume as the kubelet's atomic writer lays it out: the files
/// in a timestamped dir, `..data` a symlink to it, and `tls.crt`/`tls.key`
/// symlinks through `..data`.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(cert: &[u8], key: &[u8]) -> Self {
        let mut v = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        v.write(cert, key);
        let d = v.dir.path();
        std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", d.join("tls.key")).unwrap();
        v
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a new generation and swaps `..data` to it with one rename.
    fn write(&mut self, cert: &[u8], key: &[u8]) {
        let d = self.dir.path();
        self.generation += 1;
        let gen = format!("..2026_12_01_00_00_0{}.000", self.generation);
        std::fs::create_dir(d.join(&gen)).unwrap();
        std::fs::write(d.join(&gen).join("tls.crt"), cert).unwrap();
        std::fs::write(d.join(&gen).join("tls.key"), key).unwrap();
        std::os::unix::fs::symlink(&gen, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        if self.generation > 1 {
            let old = format!("..2026_12_01_00_00_0{}.000", self.generation - 1);
            std::fs::remove_dir_all(d.join(old)).unwrap();
        }
    }
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_file).unwrap().to_vec()
}

/// The leaf certificate a new TLS connection to `addr` is shown, verified
/// against the CA.
async fn served(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn until_reloads(rx: &mut watch::Receiver<Reloads>, want: Reloads) {
    let wait = async { rx.wait_for(|r| *r == want).await.map(|_| ()) };
    let got = tokio::time::timeout(Duration::from_secs(30), wait).await;
    assert!(got.is_ok(), "reloads {:?}, want {want:?}", *rx.borrow());
}

/// The link and the webhook started with certificate A show B to new
/// connections once the files are swapped; a bad pair keeps B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let certs = certificates();
    let c = certs.path();
    let read = |n: &str| std::fs::read(c.join(n)).unwrap();
    let mut vol = SecretVolume::new(&read("a.crt"), &read("a.key"));
    let cancel = CancellationToken::new();
    let opts = super::super::CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some((vol.path("tls.crt"), vol.path("tls.key"))),
        insecure: false,
        view_auth: None,
        retention: Default::default(),
        watch_api: false,
    };
    let auth = Arc::new(super::super::auth::StaticAuth(Default::default()));
    let coord = super::super::Coordinator::start(opts, auth, cancel.clone())
        .await
        .unwrap();
    let cert = coord.tls.clone().expect("TLS on");
    // The HTTPS listener (webhook and view) presents the same certificate.
    let webhook = coord.https_addr.expect("HTTPS listener with TLS");
    let ca = c.join("ca.crt");
    assert_eq!(
        served(coord.grpc_addr, &ca, &[b"h2"]).await,
        der_of(&c.join("a.crt"))
    );
    assert_eq!(served(webhook, &ca, &[]).await, der_of(&c.join("a.crt")));

    let mut reloads = cert.subscribe();
    vol.write(&read("b.crt"), &read("b.key"));
    until_reloads(
        &mut reloads,
        Reloads {
            loaded: 1,
            refused: 0,
        },
    )
    .await;
    assert_eq!(
        served(coord.grpc_addr, &ca, &[b"h2"]).await,
        der_of(&c.join("b.crt"))
    );
    assert_eq!(served(webhook, &ca, &[]).await, der_of(&c.join("b.crt")));

    // A certificate with another certificate's key is refused: B stays.
    vol.write(&read("a.crt"), &read("b.key"));
    until_reloads(
        &mut reloads,
        Reloads {
            loaded: 1,
            refused: 1,
        },
    )
    .await;
    assert_eq!(
        served(coord.grpc_addr, &ca, &[b"h2"]).await,
        der_of(&c.join("b.crt"))
    );
    assert_eq!(served(webhook, &ca, &[]).await, der_of(&c.join("b.crt")));
    cancel.cancel();
}

#[test]
fn bad_pairs_are_refused_with_the_file_named_and_the_old_pair_kept() {
    let certs = certificates();
    let c = certs.path();
    let read = |n: &str| std::fs::read(c.join(n)).unwrap();
    let mut vol = SecretVolume::new(&read("a.crt"), &read("a.key"));
    let r = CertReloader::load(&vol.path("tls.crt"), &vol.path("tls.key")).unwrap();
    let a = der_of(&c.join("a.crt"));
    let leaf = |r: &CertReloader| r.current().cert[0].to_vec();
    assert_eq!(r.check(), None, "unchanged");
    vol.write(b"not a certificate", &read("a.key"));
    let e = r.check().unwrap().unwrap_err();
    assert_eq!(e.path, vol.path("tls.crt").display().to_string());
    assert!(e.message.contains("no certificate in the file"), "{e}");
    assert_eq!(leaf(&r), a);
    assert_eq!(r.check(), None, "a refused pair is reported once");
    vol.write(
        &read("a.crt"),
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let e = r.check().unwrap().unwrap_err();
    assert_eq!(e.path, vol.path("tls.key").display().to_string(), "{e}");
    assert_eq!(leaf(&r), a);
    vol.write(&read("b.crt"), &read("a.key"));
    let e = r.check().unwrap().unwrap_err();
    assert!(e.message.contains("do not go together"), "{e}");
    assert_eq!(leaf(&r), a);
    vol.write(&read("b.crt"), &read("b.key"));
    assert_eq!(r.check(), Some(Ok(())));
    assert_eq!(leaf(&r), der_of(&c.join("b.crt")));
    assert_eq!(
        *r.subscribe().borrow(),
        Reloads {
            loaded: 1,
            refused: 3
        }
    );
    // A missing file at start is an error naming it.
    let e = CertReloader::load(&c.join("missing.crt"), &c.join("a.key")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("TLS {}", c.join("missing.crt").display())),
        "{e}"
    );
}

/// Options for a coordinator on loopback without a serving certificate.
fn plaintext_options() -> super::super::CoordinatorOptions {
    super::super::CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure: false,
        view_auth: None,
        retention: Default::default(),
        watch_api: false,
    }
}

/// Without a certificate the coordinator does not start, and says which
/// flags would make it: the certificate's, or the explicit opt-out.
#[tokio::test]
async fn plaintext_is_refused_without_insecure() {
    let cancel = CancellationToken::new();
    let auth = Arc::new(super::super::auth::StaticAuth(Default::default()));
    let started = super::super::Coordinator::start(plaintext_options(), auth, cancel.clone()).await;
    let err = match started {
        Ok(c) => panic!(
            "a plaintext coordinator started on {} without --insecure",
            c.grpc_addr
        ),
        Err(e) => e.to_string(),
    };
    for flag in ["--tls-cert", "--tls-key", "--insecure"] {
        assert!(err.contains(flag), "{flag} not named: {err}");
    }

    // Opted out explicitly: the link serves plain gRPC.
    let opts = super::super::CoordinatorOptions {
        insecure: true,
        ..plaintext_options()
    };
    let auth = Arc::new(super::super::auth::StaticAuth(Default::default()));
    let coord = super::super::Coordinator::start(opts, auth, cancel.clone())
        .await
        .expect("--insecure starts without a certificate");
    assert!(coord.tls.is_none());
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", coord.grpc_addr))
        .unwrap()
        .connect()
        .await;
    assert!(plain.is_ok(), "plain gRPC connect: {:?}", plain.err());
    cancel.cancel();
}
