//! The serving certificate, reloaded while the coordinator runs: the link
//! and the webhook present whatever [`CertReloader`] holds now, so a
//! renewed certificate (cert-manager renews the Secret, the kubelet swaps
//! the mounted files with an atomic `..data` symlink rename) is used for
//! new connections without a restart. Like the agent's config, the files
//! are polled by content, which sees that swap reliably. A new pair that
//! does not parse, or whose key does not match the certificate, is refused
//! with an error log and the previous pair stays in use.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files are read for a change.
pub const POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("TLS {path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

/// Outcomes of reloads since start, to wait on (tests) or log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reloads {
    /// New pairs taken into use.
    pub loaded: u64,
    /// New pairs refused (the previous one kept).
    pub refused: u64,
}

/// A certificate and key from files, re-read on change.
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents last looked at (taken or refused).
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
    reloads: watch::Sender<Reloads>,
}

impl fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReloader")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|e| TlsError {
        path: p.display().to_string(),
        message: e.to_string(),
    })
}

/// Parses a PEM certificate chain and key and checks they belong together.
pub fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let err = |p: &Path, m: String| TlsError {
        path: p.display().to_string(),
        message: m,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(err(cert, "no certificate in the file".into()));
    }
    let k = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| err(key, format!("not a PEM private key: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(k)
        .map_err(|e| err(key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(tokio_rustls::rustls::Error::InconsistentKeys(
            tokio_rustls::rustls::InconsistentKeys::Unknown,
        )) => Ok(ck),
        Err(e) => Err(err(
            cert,
            format!("certificate and key do not go together: {e}"),
        )),
    }
}

impl CertReloader {
    /// Reads the pair; it must be valid to start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let (c, k) = (read(cert)?, read(key)?);
        let ck = certified_key(cert, &c, key, &k)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            seen: Mutex::new((c, k)),
            reloads: watch::channel(Reloads::default()).0,
        }))
    }

    pub fn subscribe(&self) -> watch::Receiver<Reloads> {
        self.reloads.subscribe()
    }

    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files; takes a changed valid pair into use. `None` when
    /// nothing changed (or a file is missing for now, as during a swap).
    pub fn check(&self) -> Option<Result<(), TlsError>> {
        let (c, k) = (read(&self.cert).ok()?, read(&self.key).ok()?);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == c && seen.1 == k {
                return None;
            }
            // Looked at once: a bad pair is reported once, not every poll.
            *seen = (c.clone(), k.clone());
        }
        match certified_key(&self.cert, &c, &self.key, &k) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
                tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                self.reloads.send_modify(|r| r.loaded += 1);
                Some(Ok(()))
            }
            Err(e) => {
                tracing::error!(error = %e, "new serving certificate refused; keeping the previous one");
                self.reloads.send_modify(|r| r.refused += 1);
                Some(Err(e))
            }
        }
    }

    /// Polls the files every `every` until cancelled.
    pub async fn watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let me = self.clone();
            // File reads off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.check()).await;
        }
    }

    /// A server config presenting the current pair, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: self.cert.display().to_string(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Accepts TCP connections on `tcp` and hands on those whose TLS handshake
/// completed, each on its own task so one slow client does not hold up the
/// others, until cancelled.
pub fn accept(
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
    cancel: CancellationToken,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tcp.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, server = what, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, server = what, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, server = what, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
