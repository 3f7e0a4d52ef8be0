//! The coordinator: serves the agent link (gRPC over TLS; plain text only
//! when explicitly `insecure`) and the cluster view (HTTP JSON and
//! metrics), and publishes intents. It only wires `auth`, `link`, `http`
//! and the pure view together.

pub mod announce;
pub mod auth;
pub mod auth_cache;
pub mod budget;
pub mod ca;
pub mod deploys;
pub mod events;
pub mod gate;
pub mod http;
pub mod https;
pub mod keda;
pub mod leader;
pub mod leader_label;
pub mod link;
pub mod metrics;
pub mod nodes;
pub mod pull_secrets;
pub mod ready;
pub mod rollouts;
pub mod tls;
pub mod view_auth;
pub mod webhook;

#[cfg(test)]
#[path = "churn_tests.rs"]
mod churn_tests;
#[cfg(test)]
mod outage_tests;
#[cfg(test)]
pub(crate) mod process_tests;
#[cfg(test)]
#[path = "readyz_tests.rs"]
mod readyz_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use self::auth::Authenticator;
use self::link::{LinkService, LinkState};
use self::metrics::CoordinatorMetrics;
use self::tls::CertReloader;
use self::view_auth::ViewAuth;
use crate::plan::forget::Retention;
use crate::wire::v1::Intent;

/// Forgets silent nodes every quarter of the TTL (at most a minute apart);
/// deleted nodes go as soon as the Node watch or their stream's end says so.
async fn forget_loop(state: Arc<LinkState>, cancel: CancellationToken) {
    let every = (state.retention.silent_ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                state.forget_stale(None);
            }
        }
    }
}

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
    /// Plain HTTP: metrics and probes (and the view when `insecure` and no
    /// `tls`).
    pub http_listen: SocketAddr,
    /// HTTPS, with `tls` only: the admission webhook and the view.
    pub https_listen: SocketAddr,
    /// Serving certificate and key (PEM), e.g. from a cert-manager Secret.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plaintext allowed (local tests only): without `tls` the coordinator
    /// then serves in plain text instead of refusing to start, and the view
    /// is served on `http_listen` without authentication. No effect with `tls`.
    pub insecure: bool,
    /// Checks view callers on the HTTPS listener; without it the view is
    /// not served there.
    pub view_auth: Option<Arc<dyn ViewAuth>>,
    /// How long disconnected nodes are remembered.
    pub retention: Retention,
    /// Whether Nodes, workloads and the leader Lease are watched (the
    /// `prewarm coordinator` default): `/readyz` then also waits for their
    /// first lists and the election (see [`ready`]).
    pub watch_api: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Https(#[from] https::HttpsError),
    #[error("no serving certificate: pass --tls-cert and --tls-key (tls.crt and tls.key of the Secret prewarm-coordinator-tls), or --insecure to serve agents' tokens and the cluster view in plain text (local tests only)")]
    NoCertificate,
}

pub struct Coordinator {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The HTTPS listener's address (with a serving certificate only).
    pub https_addr: Option<SocketAddr>,
    pub state: Arc<LinkState>,
    /// The serving certificate, reloaded on change (shared with the
    /// webhook).
    pub tls: Option<Arc<CertReloader>>,
    server: tokio::task::JoinHandle<()>,
}

/// Runs the link's gRPC server on `incoming` until `shutdown`.
async fn serve_link<IO, E>(
    state: Arc<LinkState>,
    mut builder: Server,
    service: crate::wire::v1::link_server::LinkServer<LinkService>,
    incoming: impl futures::Stream<Item = Result<IO, E>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    IO: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Unpin
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    state.readiness.set(ready::LINK, true);
    if let Err(e) = builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        tracing::error!(error = %e, "gRPC server stopped");
    }
    state.readiness.set(ready::LINK, false);
}

/// Where the rollout loop publishes: the `rollouts` intents, and readiness
/// (it publishes only once its first lists are complete).
pub fn publish_rollouts(state: Arc<LinkState>) -> impl Fn(Vec<Intent>) + Send + 'static {
    move |intents| {
        state.readiness.set(ready::WORKLOADS, true);
        state.publish("rollouts", intents);
    }
}

/// Mirrors leadership into the metric and whether this replica takes
/// agents (the leader label follows it in `leader_label::run`), and the
/// election's readiness condition: met while the election runs.
pub async fn follow_leadership(state: Arc<LinkState>, leadership: leader::Leadership) {
    let leader::Leadership {
        mut is_leader,
        mut takes_agents,
    } = leadership;
    state.readiness.set(ready::ELECTION, true);
    loop {
        let leader = *is_leader.borrow_and_update();
        state.metrics.is_leader.set(leader as i64);
        state
            .serving
            .send_replace(*takes_agents.borrow_and_update());
        let stopped = tokio::select! {
            r = is_leader.changed() => r.is_err(),
            r = takes_agents.changed() => r.is_err(),
        };
        if stopped {
            // The election stopped: this replica can never lead again.
            tracing::error!("leader election stopped; this replica is not ready");
            state.readiness.set(ready::ELECTION, false);
            state.serving.send_replace(false);
            return;
        }
    }
}

/// TLS unless explicitly opted out: refuses plaintext without `insecure`,
/// and says loudly when it is on.
fn check_transport(opts: &CoordinatorOptions) -> Result<(), CoordinatorError> {
    match (&opts.tls, opts.insecure) {
        (Some(_), insecure) => {
            if insecure {
                tracing::info!("--insecure has no effect: a serving certificate is configured");
            }
            Ok(())
        }
        (None, true) => {
            tracing::warn!(grpc = %opts.grpc_listen, http = %opts.http_listen, "INSECURE: no serving certificate and --insecure: the agent link is served in plain text, so agents' ServiceAccount tokens cross the network in clear text; for local tests only, never in a cluster");
            Ok(())
        }
        (None, false) => Err(CoordinatorError::NoCertificate),
    }
}

impl Coordinator {
    /// Starts the link and the view. Without a serving certificate it
    /// refuses to start unless `opts.insecure` says plain text is meant.
    pub async fn start(
        opts: CoordinatorOptions,
        auth: Arc<dyn Authenticator>,
        cancel: CancellationToken,
    ) -> Result<Self, CoordinatorError> {
        check_transport(&opts)?;
        let metrics = Arc::new(CoordinatorMetrics::new());
        let state = LinkState::with_retention(auth, metrics, cancel.clone(), opts.retention);
        if opts.tls.is_none() {
            // Workload pull secrets travel only over the TLS link.
            tracing::warn!(
                "the agent link is plain text: workload pull secrets are not sent to agents"
            );
            state.forbid_credentials();
        }
        tokio::spawn(forget_loop(state.clone(), cancel.clone()));
        let ready = &state.readiness;
        ready.require(ready::LINK, "the agent link is not serving");
        if opts.watch_api {
            ready.require(ready::NODES, "the first list of Nodes is not complete");
            ready.require(
                ready::WORKLOADS,
                "the first lists of opted-in workloads are not complete",
            );
            ready.require(ready::ELECTION, "leader election is not running");
        }
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
        let builder = link::server();
        let service = LinkService::new(state.clone()).into_server();
        let shutdown = cancel.clone().cancelled_owned();
        let (tls, server) = match &opts.tls {
            Some((cert, key)) => {
                let reloader = CertReloader::load(cert, key)?;
                tokio::spawn(reloader.clone().watch(tls::POLL, cancel.clone()));
                let config = reloader.server_config(&[b"h2"])?;
                let rx = tls::accept(listener, config, "link", cancel.clone());
                let incoming = tokio_stream::wrappers::ReceiverStream::new(rx)
                    .map(|(s, _)| Ok::<_, std::io::Error>(s));
                let server = tokio::spawn(serve_link(
                    state.clone(),
                    builder,
                    service,
                    incoming,
                    shutdown,
                ));
                (Some(reloader), server)
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let server = serve_link(state.clone(), builder, service, incoming, shutdown);
                (None, tokio::spawn(server))
            }
        };
        let https_addr = match &tls {
            Some(cert) => {
                let view = opts.view_auth.clone().map(|a| (state.clone(), a));
                if view.is_none() {
                    tracing::info!("no view authenticator: the cluster view is not served");
                }
                let addr = opts.https_listen;
                Some(https::serve(addr, cert.clone(), view, cancel.clone()).await?)
            }
            None => None,
        };
        let open_view = tls.is_none() && opts.insecure;
        let http_addr = http::serve(opts.http_listen, state.clone(), open_view, cancel)
            .await
            .map_err(|source| CoordinatorError::Listen {
                addr: opts.http_listen,
                source,
            })?;
        if open_view {
            tracing::warn!(%http_addr, "INSECURE: no serving certificate, so the cluster view is served over plain HTTP WITHOUT authentication to anyone who can reach this port");
        }
        tracing::info!(%grpc_addr, %http_addr, ?https_addr, tls = opts.tls.is_some(), "coordinator serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            https_addr,
            state,
            tls,
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
