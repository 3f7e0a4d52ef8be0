//! The coordinator: serves the agent link (gRPC, optionally TLS) and the
//! cluster view (HTTP JSON and metrics), and publishes intents. It only
//! wires `auth`, `link`, `http` and the pure view together.

pub mod announce;
pub mod auth;
pub mod ca;
pub mod deploys;
pub mod events;
pub mod gate;
pub mod http;
pub mod leader;
pub mod leader_label;
pub mod link;
pub mod metrics;
pub mod nodes;
pub mod rollouts;
pub mod webhook;

#[cfg(test)]
mod outage_tests;
#[cfg(test)]
pub(crate) mod process_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use self::auth::Authenticator;
use self::link::{LinkService, LinkState};
use self::metrics::CoordinatorMetrics;
use crate::wire::v1::Intent;

/// The wall clock an effector reads `now` from; tests pass one that
/// follows tokio's paused time.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>);

impl WallClock {
    pub fn new(f: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        (self.0)()
    }

    /// Starts at the system's time now and advances with tokio's clock.
    pub fn following_tokio() -> Self {
        let wall = chrono::Utc::now();
        let start = tokio::time::Instant::now();
        Self::new(move || wall + chrono::Duration::from_std(start.elapsed()).unwrap_or_default())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new(chrono::Utc::now)
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Serving certificate and key (PEM), e.g. from a cert-manager Secret.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS {path}: {message}")]
    Tls { path: String, message: String },
}

pub struct Coordinator {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<LinkState>,
    server: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    pub async fn start(
        opts: CoordinatorOptions,
        auth: Arc<dyn Authenticator>,
        cancel: CancellationToken,
    ) -> Result<Self, CoordinatorError> {
        let metrics = Arc::new(CoordinatorMetrics::new());
        let state = LinkState::new(auth, metrics, cancel.clone());
        let listener = tokio::net::TcpListener::bind(opts.grpc_listen)
            .await
            .map_err(|source| CoordinatorError::Listen {
                addr: opts.grpc_listen,
                source,
            })?;
        let grpc_addr = listener
            .local_addr()
            .map_err(|source| CoordinatorError::Listen {
                addr: opts.grpc_listen,
                source,
            })?;
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
        if let Some((cert, key)) = &opts.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| CoordinatorError::Tls {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })
            };
            let identity = Identity::from_pem(read(cert)?, read(key)?);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| CoordinatorError::Tls {
                    path: cert.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        let service = LinkService::new(state.clone()).into_server();
        let shutdown = cancel.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            if let Err(e) = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
        let http_addr = http::serve(opts.http_listen, state.clone(), cancel)
            .await
            .map_err(|source| CoordinatorError::Listen {
                addr: opts.http_listen,
                source,
            })?;
        tracing::info!(%grpc_addr, %http_addr, tls = opts.tls.is_some(), "coordinator serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            state,
            server,
        })
    }

    /// Replaces the intents of the `static` source; every connected agent
    /// gets its share of the union of all sources.
    pub fn set_intents(&self, intents: Vec<Intent>) {
        self.state.publish("static", intents);
    }

    pub async fn join(self) {
        let _ = self.server.await;
    }
}
