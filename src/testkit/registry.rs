//! A throwaway real registry: `docker-registry serve` (distribution v2) on a
//! free loopback port, with its storage, config and log in a private temp dir
//! that is removed on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

use super::push::Pusher;

/// Overrides the registry binary path.
pub const REGISTRY_BIN_ENV: &str = "PREWARM_REGISTRY_BIN";
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const BIND_ATTEMPTS: usize = 5;
/// `sh -c WATCHDOG name BIN CONFIG PARENT_PID DIR`: if PARENT_PID dies while
/// the registry (which `exec` puts on the shell's pid) still runs, kill it and
/// remove DIR. Exits quietly once the registry is gone.
const WATCHDOG: &str = r#"p=$3
(while kill -0 "$p" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done
 if kill -0 $$ 2>/dev/null; then kill $$; sleep 1; rm -rf "$4"; fi) &
exec "$1" serve "$2""#;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry temp dir {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(
        "cannot run {bin} (install it with scripts/setup.sh or set {REGISTRY_BIN_ENV}): {source}"
    )]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("htpasswd failed: {0}")]
    Htpasswd(String),
    #[error("registry did not become ready: {reason}; log tail:\n{log}")]
    NotReady { reason: String, log: String },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A running registry; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Registry {
    pub addr: SocketAddr,
    pub auth: Option<(String, String)>,
    child: Child,
    dir: PathBuf,
}

impl Registry {
    /// Starts a registry, optionally with htpasswd basic auth for one user.
    pub async fn start(auth: Option<(&str, &str)>) -> Result<Registry> {
        let dir = make_temp_dir()?;
        match Self::start_in(&dir, auth).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn start_in(dir: &Path, auth: Option<(&str, &str)>) -> Result<Registry> {
        let io = |e| RegistryError::Io(dir.to_path_buf(), e);
        let htpasswd = match auth {
            Some((user, pass)) => {
                let path = dir.join("htpasswd");
                std::fs::write(&path, htpasswd_line(user, pass).await?).map_err(io)?;
                Some(path)
            }
            None => None,
        };
        let bin = std::env::var(REGISTRY_BIN_ENV).unwrap_or_else(|_| DEFAULT_REGISTRY_BIN.into());
        if bin.contains('/') {
            if let Err(source) = std::fs::metadata(&bin) {
                return Err(RegistryError::Spawn { bin, source });
            }
        }
        let mut last = None;
        for attempt in 0..BIND_ATTEMPTS {
            let port = free_port().map_err(io)?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let config = dir.join("config.yml");
            std::fs::write(&config, config_yaml(dir, addr, htpasswd.as_deref())).map_err(io)?;
            let log_path = dir.join(format!("registry-{attempt}.log"));
            let log = std::fs::File::create(&log_path).map_err(io)?;
            let log2 = log.try_clone().map_err(io)?;
            // A watchdog kills the registry if this process dies without
            // running Drop (SIGKILL, SIGINT on a test run); `exec` keeps the
            // registry on the shell's pid so kill_on_drop still hits it.
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(WATCHDOG)
                .arg("prewarm-registry")
                .arg(&bin)
                .arg(&config)
                .arg(std::process::id().to_string())
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .kill_on_drop(true);
            // REGISTRY_* variables would override the config file.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd.spawn().map_err(|source| RegistryError::Spawn {
                bin: bin.clone(),
                source,
            })?;
            let mut reg = Registry {
                addr,
                auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
                child,
                dir: dir.to_path_buf(),
            };
            match reg.wait_ready(&log_path).await {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    let _ = reg.child.kill().await;
                    // Don't let Drop remove the dir we are still using.
                    reg.dir = PathBuf::new();
                    let port_taken = matches!(&e, RegistryError::NotReady { log, .. }
                        if log.contains("address already in use"));
                    last = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NotReady {
            reason: "no attempt made".into(),
            log: String::new(),
        }))
    }

    /// Polls `GET /v2/` until it answers 200 or 401.
    async fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| not_ready(format!("client: {e}"), log))?;
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(not_ready(format!("process exited with {status}"), log));
            }
            if let Ok(r) = client.get(&url).send().await {
                if matches!(r.status().as_u16(), 200 | 401) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(not_ready(
                    format!("no answer on {url} within {READY_TIMEOUT:?}"),
                    log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the htpasswd user's password (the registry re-reads its
    /// htpasswd file when it changes); the old one stops working.
    pub async fn rotate_password(&mut self, pass: &str) -> Result<()> {
        let Some((user, _)) = self.auth.clone() else {
            return Err(RegistryError::Htpasswd(
                "registry has no htpasswd auth".into(),
            ));
        };
        let path = self.dir.join("htpasswd");
        let line = htpasswd_line(&user, pass).await?;
        // Written aside and renamed, as a Secret volume update swaps files.
        let tmp = self.dir.join("htpasswd.new");
        std::fs::write(&tmp, line).map_err(|e| RegistryError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RegistryError::Io(path.clone(), e))?;
        self.auth = Some((user, pass.to_string()));
        Ok(())
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Last 4 KiB of the current log (registry warnings and access log).
    pub fn log_tail(&self) -> String {
        self.log_path().map(|p| tail(&p)).unwrap_or_default()
    }

    /// The current log file (registry warnings and the access log).
    pub fn log_path(&self) -> Option<PathBuf> {
        (0..BIND_ATTEMPTS)
            .rev()
            .map(|i| self.dir.join(format!("registry-{i}.log")))
            .find(|p| p.exists())
    }

    /// A pusher with this registry's URL and credentials.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url(), self.auth.clone()).expect("registry url is valid")
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn not_ready(reason: String, log: &Path) -> RegistryError {
    RegistryError::NotReady {
        reason,
        log: tail(log),
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read(p).unwrap_or_default();
    let start = s.len().saturating_sub(4096);
    String::from_utf8_lossy(&s[start..]).into_owned()
}

fn make_temp_dir() -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "prewarm-registry-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("data")).map_err(|e| RegistryError::Io(dir.clone(), e))?;
    Ok(dir)
}

/// Binds port 0 and releases it; the registry may race another process for it.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn htpasswd_line(user: &str, pass: &str) -> Result<Vec<u8>> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .await
        .map_err(|e| RegistryError::Htpasswd(format!("running htpasswd (apache2-utils): {e}")))?;
    if !out.status.success() {
        return Err(RegistryError::Htpasswd(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.stdout)
}

fn config_yaml(dir: &Path, addr: SocketAddr, htpasswd: Option<&Path>) -> String {
    // Paths are quoted as JSON strings, which YAML accepts.
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    let mut s = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n",
        root = q(&dir.join("data")),
    );
    if let Some(p) = htpasswd {
        s.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: prewarm-testkit\n    path: {}\n",
            q(p)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::corpus::corpus_shapes_with;

    #[test]
    fn config_has_auth_only_when_asked() {
        let a: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let plain = config_yaml(Path::new("/tmp/x"), a, None);
        assert!(plain.contains("addr: 127.0.0.1:5555") && !plain.contains("htpasswd"));
        assert!(plain.contains("rootdirectory: \"/tmp/x/data\""));
        let auth = config_yaml(Path::new("/tmp/x"), a, Some(Path::new("/tmp/x/h")));
        assert!(auth.contains("path: \"/tmp/x/h\""));
    }

    async fn roundtrip(reg: &Registry, large_layer: usize) {
        let corpus = corpus_shapes_with(7, large_layer);
        let p = reg.pusher();
        p.push_corpus(&corpus).await.unwrap();
        for (repo, tag, built) in &corpus {
            let (ct, body) = p.fetch_manifest(repo, tag).await.unwrap();
            assert_eq!(ct, built.media_type(), "{repo}");
            assert_eq!(crate::testkit::image::sha256_digest(&body), built.digest());
            for b in built.blobs() {
                p.fetch_blob(repo, &b.digest).await.unwrap();
            }
        }
        // Second push uploads nothing (HEAD finds every blob).
        let (repo, _, built) = &corpus[0];
        for b in built.blobs() {
            assert!(!p.push_blob(repo, &b).await.unwrap());
        }
    }

    #[tokio::test]
    async fn plain_registry_roundtrip() {
        let reg = Registry::start(None).await.unwrap();
        roundtrip(&reg, 64 << 20).await; // the default corpus_shapes size
        let dir = reg.dir.clone();
        assert!(dir.exists());
        reg.stop().await;
        assert!(!dir.exists());
    }

    /// distribution 2.8 answers 404 MANIFEST_UNKNOWN for an OCI manifest
    /// unless the Accept header lists the OCI media type.
    #[tokio::test]
    async fn oci_manifest_needs_accept_header() {
        let reg = Registry::start(None).await.unwrap();
        let corpus = corpus_shapes_with(3, 1024);
        let (repo, tag, built) = &corpus[0];
        reg.pusher().push_built(repo, tag, built).await.unwrap();
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("{}/v2/{repo}/manifests/{tag}", reg.url());
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = c
            .get(&url)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], built.digest());
    }

    #[tokio::test]
    async fn htpasswd_registry_requires_auth() {
        let reg = Registry::start(Some(("alice", "s3cret"))).await.unwrap();
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}/v2/", reg.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let www = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.starts_with("Basic realm="), "{www}");
        let anon = Pusher::new(&reg.url(), None).unwrap();
        let err = anon.blob_exists("x", "sha256:00").await.unwrap_err();
        assert!(
            matches!(err, super::super::push::PushError::Http { status: 401, .. }),
            "{err}"
        );
        let wrong = Pusher::new(&reg.url(), Some(("alice".into(), "nope".into()))).unwrap();
        assert!(wrong.blob_exists("x", "sha256:00").await.is_err());
        roundtrip(&reg, 4 << 20).await;
        assert!(
            reg.log_tail().contains("GET /v2/"),
            "access log is captured"
        );
    }
}
