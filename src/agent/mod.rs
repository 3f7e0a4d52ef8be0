//! The node agent: wires config, the pure warm plan and the node stack
//! together. It reloads its config file in place, serves metrics and health,
//! and on SIGTERM cancels pulls (releasing their leases) before exiting.

pub mod http;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError, ImageEntry};
use crate::node::manifest::host_platform;
use crate::node::pin;
use crate::node::pull::{cri_name, PullOptions};
use crate::node::runtime::{ImageRecord, ImageStore};
use crate::node::setup::{self, NodeStack};
use crate::plan::warm::{plan, Action, Desired, Observed, Present};

use self::http::Health;
use self::metrics::{unix_now, Metrics};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub node_name: String,
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
}

/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// Wait between attempts to reach containerd.
const RUNTIME_RETRY: Duration = Duration::from_secs(5);
/// How long in-flight pulls get to stop on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

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
    agent.join().await;
    Ok(())
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
    task: tokio::task::JoinHandle<()>,
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
        let task = tokio::spawn(reconcile_loop(rx, metrics.clone(), health, cancel));
        Ok(Agent {
            addr,
            metrics,
            task,
        })
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
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

struct Loop {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
    stack: Option<(NodeStack, Arc<AgentConfig>)>,
    pulls: JoinSet<String>,
    in_flight: BTreeSet<String>,
}

async fn reconcile_loop(
    mut rx: watch::Receiver<Arc<AgentConfig>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let mut lp = Loop {
        metrics,
        health,
        cancel: cancel.clone(),
        stack: None,
        pulls: JoinSet::new(),
        in_flight: BTreeSet::new(),
    };
    loop {
        let cfg = rx.borrow_and_update().clone();
        let wait = match lp.reconcile(&cfg).await {
            Ok(()) => cfg.resync,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed; retrying");
                lp.health.ready.store(false, Ordering::Relaxed);
                lp.metrics.runtime_up.set(0);
                lp.stack = None;
                RUNTIME_RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = rx.changed() => {}
            Some(done) = lp.pulls.join_next(), if !lp.pulls.is_empty() => {
                if let Ok(name) = done {
                    lp.in_flight.remove(&name);
                }
            }
            _ = cancel.cancelled() => break,
        }
        // Reap every finished pull, not just the one that woke us.
        while let Some(done) = lp.pulls.try_join_next() {
            if let Ok(name) = done {
                lp.in_flight.remove(&name);
            }
        }
        lp.metrics.pulls_in_flight.set(lp.in_flight.len() as i64);
    }
    // Pulls see the same token; give them time to release their leases.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while lp.pulls.join_next().await.is_some() {}
    })
    .await;
    tracing::info!("agent stopped");
}

fn stack_inputs_changed(a: &AgentConfig, b: &AgentConfig) -> bool {
    a.runtime != b.runtime || a.registry != b.registry || a.pacing != b.pacing
}

impl Loop {
    async fn reconcile(&mut self, cfg: &Arc<AgentConfig>) -> Result<(), setup::SetupError> {
        if self
            .stack
            .as_ref()
            .is_none_or(|(_, old)| stack_inputs_changed(old, cfg))
        {
            let stack = setup::connect(cfg, self.metrics.clone()).await?;
            tracing::info!(version = %stack.runtime_version, pin_supported = stack.pin_supported, "connected to containerd");
            if !stack.pin_supported {
                tracing::warn!(version = %stack.runtime_version, "this containerd ignores the CRI pinned label: warm images are not protected from kubelet image GC");
            }
            self.metrics.pin_supported.set(stack.pin_supported as i64);
            self.stack = Some((stack, cfg.clone()));
        }
        let (stack, _) = self.stack.as_ref().expect("connected above");
        let store: &dyn ImageStore = &stack.containerd;

        let entries: HashMap<String, &ImageEntry> =
            cfg.images.iter().map(|e| (cri_name(&e.image), e)).collect();
        let desired: Vec<Desired> = cfg
            .images
            .iter()
            .map(|e| Desired {
                name: cri_name(&e.image),
                pin: e.pin,
            })
            .collect();
        let mut observed = Observed {
            pin_supported: stack.pin_supported,
            in_flight: self.in_flight.clone(),
            ..Default::default()
        };
        for d in &desired {
            if let Some(img) = store.image_status(&d.name).await? {
                let mut names = img.repo_tags.clone();
                names.extend(img.repo_digests.iter().cloned());
                names.push(img.id.clone());
                observed.present.insert(
                    d.name.clone(),
                    Present {
                        names,
                        pinned: img.pinned,
                    },
                );
            }
        }
        let ours: BTreeMap<String, ImageRecord> = pin::pinned_by_us(store)
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        observed.pinned_by_us = ours.keys().cloned().collect();
        self.metrics.runtime_up.set(1);
        self.health.ready.store(true, Ordering::Relaxed);
        self.metrics.images_desired.set(desired.len() as i64);
        self.metrics.images_warm.set(observed.present.len() as i64);
        self.metrics
            .images_pinned
            .set(observed.present.values().filter(|p| p.pinned).count() as i64);

        let platform = cfg.registry.platform.clone().unwrap_or_else(host_platform);
        for action in plan(&desired, &observed) {
            match action {
                Action::Warm { name, pin } => {
                    let Some(entry) = entries.get(&name) else {
                        continue;
                    };
                    let image = entry.image.clone();
                    let engine = stack.engine.clone();
                    let cancel = self.cancel.clone();
                    let opts = PullOptions {
                        pin,
                        platform: platform.clone(),
                        cri_timeout: Duration::from_secs(3600),
                        priority: 0,
                    };
                    self.in_flight.insert(name.clone());
                    self.pulls.spawn(async move {
                        // The engine's observer (metrics) records the outcome.
                        let _ = engine.warm(&image, &opts, &cancel).await;
                        name
                    });
                }
                Action::Pin { name } => {
                    if let Some(img) = store.image_status(&name).await? {
                        let honoured = pin::pin(store, &img).await?;
                        tracing::info!(image = %name, honoured, "pinned");
                    }
                }
                Action::Unpin { record } => {
                    if let Some(r) = ours.get(&record) {
                        pin::unpin_record(store, r).await?;
                        tracing::info!(record = %record, "unpinned: no longer desired");
                    }
                }
            }
        }
        self.metrics
            .pulls_in_flight
            .set(self.in_flight.len() as i64);
        Ok(())
    }
}
