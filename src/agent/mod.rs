//! The node agent: wires config, the pure warm plan and the node stack
//! together. It reloads its config file in place, serves metrics and health,
//! and on SIGTERM cancels pulls (releasing their leases) before exiting.

mod decide;
mod desired;
pub mod http;
mod learned;
pub mod link;
pub mod metrics;
mod node;
mod pins;
mod reconcile;
mod report;
mod stack;
mod windows;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError};
use crate::k8s::{ApiNodeLabels, Labels, NodeLabels, StaticNodeLabels};

use self::http::Health;
use self::link::NodeReport;
use self::metrics::{unix_now, Metrics};
use self::node::NodeState;
use self::reconcile::{reconcile_loop, LoopParts};
use self::report::AgentObserver;
use self::stack::RealConnector;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub node_name: String,
    /// Fixed node labels instead of reading them from the API server.
    pub node_labels: Option<Labels>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The node stack cannot work here (e.g. a mount is missing).
    #[error(transparent)]
    Node(#[from] crate::node::setup::SetupError),
}

/// How often the config file (and the registry credential files) are
/// checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Runs until SIGTERM or SIGINT.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        c.cancel();
    });
    let agent = Agent::start(opts, cancel).await?;
    agent.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub struct Agent {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<Result<(), crate::node::setup::SetupError>>,
}

impl Agent {
    /// Loads the config (a bad file at start is fatal), starts the HTTP
    /// server and the reconcile loop; returns once serving.
    pub async fn start(opts: AgentOptions, cancel: CancellationToken) -> Result<Agent, AgentError> {
        let cfg = AgentConfig::load(&opts.config_path)?;
        let metrics = Arc::new(Metrics::new());
        metrics.config_last_reload.set(unix_now());
        let health = Arc::new(Health::default());
        let addr = http::serve(opts.listen, metrics.clone(), health.clone(), cancel.clone())
            .await
            .map_err(|source| AgentError::Listen {
                addr: opts.listen,
                source,
            })?;
        tracing::info!(%addr, node = %opts.node_name, config = %opts.config_path.display(), "agent started");
        let (tx, rx) = watch::channel(Arc::new(cfg));
        tokio::spawn(watch_config(
            opts.config_path.clone(),
            tx,
            metrics.clone(),
            cancel.clone(),
        ));
        let source: Option<Arc<dyn NodeLabels>> = match opts.node_labels {
            Some(l) => Some(Arc::new(StaticNodeLabels(l))),
            None if opts.node_name.is_empty() => {
                tracing::warn!("NODE_NAME is not set: node labels unknown, windows with a nodeSelector will not apply");
                None
            }
            None => match ApiNodeLabels::from_env().await {
                Ok(api) => Some(Arc::new(api)),
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes API: node labels unknown, windows with a nodeSelector will not apply");
                    None
                }
            },
        };
        let mut node = NodeState::new(opts.node_name.clone(), source);
        let persisted = learned_state(&rx.borrow(), &mut node, &metrics);
        let observer = Arc::new(AgentObserver::new(metrics.clone()));
        let (intents_tx, intents_rx) = watch::channel(Default::default());
        // Without a coordinator the sender is dropped; the loop then simply
        // never sees intents (a closed channel disables that select branch).
        let link = rx.borrow().coordinator.clone();
        metrics.coordinator_configured.set(link.is_some() as i64);
        let reports = match link {
            Some(c) => {
                if c.insecure && c.endpoint.starts_with("http://") {
                    tracing::warn!(endpoint = %c.endpoint, "INSECURE: coordinator.insecure is set and the endpoint is plain http://: this agent's ServiceAccount token crosses the network in clear text; for local tests only, never in a cluster");
                }
                tracing::info!(endpoint = %c.endpoint, token = %c.token_file.display(), ca = ?c.ca_file.as_ref().map(|p| p.display().to_string()), "coordinator link configured; prewarm_coordinator_linked shows when it is up");
                let (tx, mut reports_rx) = watch::channel(Arc::new(NodeReport::default()));
                let cfg = link::LinkConfig {
                    endpoint: c.endpoint,
                    token_file: c.token_file,
                    ca_file: c.ca_file,
                    node: opts.node_name.clone(),
                };
                let progress =
                    report::refresh_progress(observer.clone(), tx.clone(), cancel.clone());
                tokio::spawn(progress);
                let cancel = cancel.clone();
                let observer: Arc<dyn link::LinkObserver> = metrics.clone();
                tokio::spawn(async move {
                    // Attach once the first reconcile has published a report:
                    // the placeholder would tell the coordinator this node has
                    // no labels (so no pod can land on it) and nothing warm.
                    tokio::select! {
                        first = reports_rx.changed() => if first.is_err() { return },
                        _ = cancel.cancelled() => return,
                    }
                    link::run_observed(cfg, reports_rx, intents_tx, observer, cancel).await
                });
                Some(tx)
            }
            None => {
                tracing::info!("no coordinator configured (no coordinator: section): no rollout intents, and gated pods are not released onto this node");
                None
            }
        };
        let parts = LoopParts {
            node,
            observer,
            reports,
            intents: intents_rx,
            connector: Arc::new(RealConnector),
            clock: Arc::new(Utc::now),
            metrics: metrics.clone(),
            health,
            persisted,
        };
        let task = tokio::spawn(reconcile_loop(rx, parts, cancel));
        Ok(Agent {
            addr,
            metrics,
            task,
        })
    }

    /// Waits until the agent stops: cancelled, or on its own at start
    /// because it cannot work in this pod (the error says why).
    pub async fn wait(self) -> Result<(), AgentError> {
        match self.task.await {
            Ok(r) => r.map_err(AgentError::Node),
            Err(_) => Ok(()),
        }
    }

    /// Waits until the agent stops, whatever the reason.
    pub async fn join(self) {
        let _ = self.wait().await;
    }
}

/// The learned state at `state.path` (read at start only), restored into
/// `node`; None when the config keeps none.
fn learned_state(
    cfg: &AgentConfig,
    node: &mut NodeState,
    metrics: &Metrics,
) -> Option<learned::Persisted> {
    let Some(path) = cfg.state.path.clone() else {
        metrics.learned_state_restored.set(0);
        tracing::info!("state.path is null: nothing learned is kept across restarts; planning from the defaults until a pull is measured");
        return None;
    };
    let store = Arc::new(crate::node::state::FileStateStore::new(path));
    let mut p = learned::Persisted::new(store);
    p.restore(node, metrics, Utc::now());
    Some(p)
}

/// Polls the file: a mounted ConfigMap is replaced by a symlink swap, which
/// content polling sees reliably. Bad files are rejected and the old config stays.
async fn watch_config(
    path: PathBuf,
    tx: watch::Sender<Arc<AgentConfig>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CONFIG_POLL) => {}
            _ = cancel.cancelled() => return,
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match AgentConfig::from_yaml(&text) {
            Ok(cfg) => {
                tracing::info!(config = %path.display(), images = cfg.images.len(), "config reloaded");
                metrics.config_last_reload.set(unix_now());
                let _ = tx.send(Arc::new(cfg));
            }
            Err(e) => {
                metrics.config_reload_failures.inc();
                tracing::error!(config = %path.display(), error = %e, "new config rejected; keeping the previous one");
            }
        }
    }
}
