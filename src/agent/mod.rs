//! The node agent: wires config, the pure warm plan and the node stack
//! together. It reloads its config file in place, serves metrics and health,
//! and on SIGTERM cancels pulls (releasing their leases) before exiting.

mod desired;
pub mod http;
pub mod link;
pub mod metrics;
mod pins;
mod report;
mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use chrono::Utc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::reference::ImageRef;
use crate::config::{AgentConfig, ConfigError};
use crate::k8s::{ApiNodeLabels, Labels, NodeLabels, StaticNodeLabels};
use crate::node::manifest::host_platform;
use crate::node::pace::DiskProbe;
use crate::node::pull::{PullOptions, WindowBandwidth};
use crate::node::runtime::ImageStore;
use crate::node::setup::{self, NodeStack};
use crate::plan::throughput::Throughput;
use crate::wire::v1::Intent;

use self::link::NodeReport;
use self::pins::Pins;
use self::report::{applicable_intents, node_report, window_states, AgentObserver};
use crate::plan::warm::{Action, HoldPolicy, Observed, Present};
use crate::plan::windows::{plan_windows as plan_windows_pure, NodeView, Phase, WindowPlan};
use crate::wire::v1::{image_state::Phase as ImagePhase, ImageState};

use self::http::Health;
use self::metrics::{unix_now, Metrics};

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
}

/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// Wait between attempts to reach containerd.
const RUNTIME_RETRY: Duration = Duration::from_secs(5);
/// How often node labels are re-read from the API server.
const LABELS_TTL: Duration = Duration::from_secs(300);
/// Measured missing bytes are trusted this long.
const SIZE_TTL: Duration = Duration::from_secs(600);
/// Sizes are measured for windows starting within this many hours.
const SIZE_HORIZON_HOURS: i64 = 48;
/// Budget for measuring one image's missing bytes.
const SIZE_TIMEOUT: Duration = Duration::from_secs(30);
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
        let node = NodeState::new(opts.node_name.clone(), source);
        let observer = Arc::new(AgentObserver::new(metrics.clone()));
        let (intents_tx, intents_rx) = watch::channel(Vec::new());
        // Without a coordinator the sender is dropped; the loop then simply
        // never sees intents (a closed channel disables that select branch).
        let link = rx.borrow().coordinator.clone();
        metrics.coordinator_configured.set(link.is_some() as i64);
        let reports = match link {
            Some(c) => {
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
        };
        let task = tokio::spawn(reconcile_loop(rx, metrics.clone(), health, parts, cancel));
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
    pulls: JoinSet<PullDone>,
    in_flight: BTreeMap<String, Vec<String>>,
    node: NodeState,
    observer: Arc<AgentObserver>,
    /// To the coordinator link, when one is configured.
    reports: Option<watch::Sender<Arc<NodeReport>>>,
    intents: watch::Receiver<Vec<Intent>>,
}

/// What the agent learns about its node over time.
struct NodeState {
    name: String,
    source: Option<Arc<dyn NodeLabels>>,
    labels: Labels,
    labels_read: Option<Instant>,
    throughput: Throughput,
    /// Missing bytes per image, with when they were measured.
    sizes: HashMap<String, (u64, Instant)>,
    tracker: windows::Tracker,
}

/// A finished pull: its name and, if it moved bytes, how many and how fast.
struct PullDone {
    name: String,
    sample: Option<(u64, f64)>,
}

struct LoopParts {
    node: NodeState,
    observer: Arc<AgentObserver>,
    reports: Option<watch::Sender<Arc<NodeReport>>>,
    intents: watch::Receiver<Vec<Intent>>,
}

async fn reconcile_loop(
    mut rx: watch::Receiver<Arc<AgentConfig>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    parts: LoopParts,
    cancel: CancellationToken,
) {
    let mut lp = Loop {
        metrics,
        health,
        cancel: cancel.clone(),
        stack: None,
        pulls: JoinSet::new(),
        in_flight: BTreeMap::new(),
        node: parts.node,
        observer: parts.observer,
        reports: parts.reports,
        intents: parts.intents,
    };
    loop {
        let cfg = rx.borrow_and_update().clone();
        let wait = match lp.reconcile(&cfg).await {
            Ok(wait) => wait,
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
            Ok(()) = lp.intents.changed() => {}
            Some(done) = lp.pulls.join_next(), if !lp.pulls.is_empty() => {
                if let Ok(done) = done {
                    lp.finished(done);
                }
            }
            _ = cancel.cancelled() => break,
        }
        // Reap every finished pull, not just the one that woke us.
        while let Some(done) = lp.pulls.try_join_next() {
            if let Ok(done) = done {
                lp.finished(done);
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
    fn finished(&mut self, done: PullDone) {
        self.in_flight.remove(&done.name);
        if let Some((bytes, secs)) = done.sample {
            self.node.throughput.record(bytes, secs);
            if let Some(bps) = self.node.throughput.bytes_per_second() {
                self.metrics.throughput.set(bps);
            }
        }
        // Sizes changed: measure again when needed.
        self.node.sizes.remove(&done.name);
    }

    /// One pass: observe the node, plan, act. Returns how long to sleep.
    async fn reconcile(&mut self, cfg: &Arc<AgentConfig>) -> Result<Duration, setup::SetupError> {
        if self
            .stack
            .as_ref()
            .is_none_or(|(_, old)| stack_inputs_changed(old, cfg))
        {
            let stack = setup::connect(cfg, self.observer.clone()).await?;
            crate::node::leases::release_predecessors(&stack).await;
            tracing::info!(version = %stack.runtime_version, pin_supported = stack.pin_supported, "connected to containerd");
            if !stack.pin_supported {
                tracing::warn!(version = %stack.runtime_version, "this containerd ignores the CRI pinned label: warm images are not protected from kubelet image GC");
            }
            self.metrics.pin_supported.set(stack.pin_supported as i64);
            self.stack = Some((stack, cfg.clone()));
        }
        self.node.refresh_labels().await;
        let (stack, _) = self.stack.as_ref().expect("connected above");
        let store: &dyn ImageStore = &stack.containerd;
        let platform = cfg.registry.platform.clone().unwrap_or_else(host_platform);

        // Every image this node may need: config images and applying windows'.
        let mut candidates: BTreeMap<String, ImageRef> = cfg
            .images
            .iter()
            .map(|e| (e.image.cri_name(), e.image.clone()))
            .collect();
        for w in cfg
            .windows
            .iter()
            .filter(|w| w.applies_to(&self.node.labels))
        {
            candidates.extend(
                w.images
                    .iter()
                    .map(|i| (i.image.cri_name(), i.image.clone())),
            );
        }
        // Rollout intents from the coordinator, kept until their deadline
        // even while the coordinator is unreachable.
        let intents = self.intents.borrow().clone();
        let mut intent_images: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for i in applicable_intents(&intents, &self.node.name, &self.node.labels, Utc::now()) {
            for raw in &i.images {
                match raw.parse::<ImageRef>() {
                    Ok(img) => {
                        let name = img.cri_name();
                        candidates.insert(name.clone(), img);
                        let e = intent_images
                            .entry(name)
                            .or_insert((i.priority, i.id.clone()));
                        e.0 = e.0.max(i.priority);
                    }
                    Err(e) => {
                        tracing::warn!(intent = %i.id, error = %e, "intent names a bad image; ignored")
                    }
                }
            }
        }
        let mut present = BTreeMap::new();
        for name in candidates.keys() {
            if let Some(img) = store.image_status(name).await? {
                let mut names = img.repo_tags.clone();
                names.extend(img.repo_digests.iter().cloned());
                names.push(img.id.clone());
                present.insert(
                    name.clone(),
                    Present {
                        names,
                        pinned: img.pinned,
                    },
                );
            }
        }
        let warm: BTreeSet<String> = present.keys().cloned().collect();

        // The window plan, with sizes measured for windows coming up soon.
        let now = Utc::now();
        let wplan = self
            .node
            .plan_windows(
                cfg,
                stack,
                &self.in_flight,
                &self.cancel,
                &candidates,
                &warm,
                &platform,
                now,
            )
            .await;
        self.node
            .tracker
            .observe(&wplan.windows, now, &self.metrics);

        let (desired, reasons) = desired::merge(cfg, &wplan.desired, &intent_images);

        let pins = Pins::observe(store).await?;
        let mut observed = Observed {
            present: present
                .into_iter()
                .filter(|(n, _)| desired.iter().any(|d| &d.name == n))
                .collect(),
            in_flight: self.in_flight.keys().cloned().collect(),
            pin_supported: stack.pin_supported,
            ..Default::default()
        };
        let policy = HoldPolicy {
            period: cfg.scheduling.intent_hold,
        };
        let warm_plan = pins
            .plan(store, &desired, &mut observed, &policy, now)
            .await?;
        let held = pins.held_images(&warm_plan.held);
        self.metrics.runtime_up.set(1);
        self.health.ready.store(true, Ordering::Relaxed);
        self.metrics.images_desired.set(desired.len() as i64);
        self.metrics.images_warm.set(observed.present.len() as i64);
        self.metrics
            .images_pinned
            .set(observed.present.values().filter(|p| p.pinned).count() as i64);
        self.metrics.images_held.set(held.len() as i64);

        let mut actions = warm_plan.actions;
        // Highest priority first, so late windows start before anything else.
        actions.sort_by_key(|a| match a {
            Action::Warm { priority, .. } => -priority,
            _ => i64::MIN,
        });
        for action in actions {
            match action {
                Action::Warm {
                    name,
                    pin,
                    priority,
                } => {
                    let Some(image) = candidates.get(&name).cloned() else {
                        continue;
                    };
                    let windows = reasons.get(&name).cloned().unwrap_or_default();
                    let overrides = window_overrides(cfg, &windows);
                    if let Some(cap_window) = self.window_at_capacity(cfg, &windows) {
                        tracing::debug!(image = %name, window = %cap_window, "window pull cap reached; waiting");
                        continue;
                    }
                    let engine = stack.engine.clone();
                    let cancel = self.cancel.clone();
                    let opts = PullOptions {
                        pin,
                        platform: platform.clone(),
                        cri_timeout: Duration::from_secs(3600),
                        priority,
                        bandwidth: overrides,
                    };
                    if !windows.is_empty() {
                        tracing::info!(image = %name, windows = ?windows, priority, "warming for window");
                    }
                    self.in_flight.insert(name.clone(), windows);
                    self.pulls.spawn(async move {
                        // The engine's observer (metrics) records the outcome.
                        let sample = engine
                            .warm(&image, &opts, &cancel)
                            .await
                            .ok()
                            .filter(|o| o.fetched_bytes > 0)
                            .map(|o| (o.fetched_bytes, o.duration.as_secs_f64()));
                        PullDone { name, sample }
                    });
                }
                other => pins.apply(store, &other, &self.metrics).await?,
            }
        }
        self.metrics
            .pulls_in_flight
            .set(self.in_flight.len() as i64);
        if let Some(tx) = &self.reports {
            // Every image this node wants or keeps pinned past its reason.
            let mut images: BTreeMap<String, ImageState> = desired
                .iter()
                .filter_map(|d| {
                    let image = candidates.get(&d.name)?;
                    let present = observed.present.get(&d.name).map(|p| p.pinned);
                    let running = self.in_flight.contains_key(&d.name);
                    Some((
                        d.name.clone(),
                        self.observer.image_state(&d.name, image, present, running),
                    ))
                })
                .collect();
            for name in held {
                images.entry(name.clone()).or_insert(ImageState {
                    name,
                    phase: ImagePhase::Warm as i32,
                    // Our marker is on it; CRI honours it from 1.7 on.
                    pinned: stack.pin_supported,
                    ..Default::default()
                });
            }
            let free = stack.disk.usage().map(|u| u.free).unwrap_or(0);
            let report = node_report(
                &self.node.labels,
                images,
                window_states(&wplan.windows),
                free,
                stack.pin_supported,
                self.node.throughput.bytes_per_second(),
            );
            tx.send_if_modified(|cur| {
                let changed = **cur != report;
                if changed {
                    *cur = Arc::new(report);
                }
                changed
            });
        }
        // Wake for the plan's next transition or hold expiry, or the resync,
        // whichever is first.
        let until_next = [wplan.next_wakeup, warm_plan.next_expiry]
            .into_iter()
            .flatten()
            .min()
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(cfg.resync);
        Ok(until_next.clamp(Duration::from_millis(200), cfg.resync))
    }

    /// The first of `windows` whose maxConcurrentPulls is reached, if any.
    fn window_at_capacity(&self, cfg: &AgentConfig, windows: &[String]) -> Option<String> {
        windows.iter().find_map(|w| {
            let cap = cfg
                .windows
                .iter()
                .find(|x| &x.name == w)?
                .pacing
                .as_ref()?
                .max_concurrent_pulls?;
            let running = self.in_flight.values().filter(|ws| ws.contains(w)).count();
            (running >= cap).then(|| w.clone())
        })
    }
}

/// The bandwidth budget of the highest-priority window that sets one: the
/// pull counts against that window's budget, inside the node's.
fn window_overrides(cfg: &AgentConfig, windows: &[String]) -> Option<WindowBandwidth> {
    cfg.windows
        .iter()
        .filter(|w| windows.contains(&w.name))
        .filter_map(|w| Some((w.priority, &w.name, w.pacing.as_ref()?.bandwidth?)))
        .max_by_key(|(p, _, _)| *p)
        .map(|(_, name, b)| WindowBandwidth {
            window: name.clone(),
            bytes_per_sec: b.0,
        })
}

impl NodeState {
    #[allow(clippy::too_many_arguments)]
    async fn plan_windows(
        &mut self,
        cfg: &AgentConfig,
        stack: &NodeStack,
        in_flight: &BTreeMap<String, Vec<String>>,
        cancel: &CancellationToken,
        candidates: &BTreeMap<String, ImageRef>,
        warm: &BTreeSet<String>,
        platform: &crate::config::Platform,
        now: chrono::DateTime<Utc>,
    ) -> WindowPlan {
        let fresh = |t: &Instant| t.elapsed() < SIZE_TTL;
        let sizes = |node: &NodeState| -> BTreeMap<String, u64> {
            node.sizes
                .iter()
                .map(|(k, (b, _))| (k.clone(), *b))
                .collect()
        };
        let missing = sizes(self);
        let view = NodeView {
            labels: &self.labels,
            missing_bytes: &missing,
            warm,
            throughput: self.throughput.bytes_per_second(),
        };
        let first = plan_windows_pure(&cfg.windows, &cfg.scheduling, &view, now);
        // Measure what is missing for windows that are near or running.
        let horizon = now + chrono::Duration::hours(SIZE_HORIZON_HOURS);
        let opts = PullOptions {
            pin: false,
            platform: platform.clone(),
            cri_timeout: Duration::from_secs(60),
            priority: 0,
            bandwidth: None,
        };
        let mut measured = false;
        for st in first
            .windows
            .iter()
            .filter(|s| s.applies && (s.phase != Phase::Idle || s.next_activation <= horizon))
        {
            for name in &st.images {
                if warm.contains(name) || in_flight.contains_key(name) {
                    continue;
                }
                if self.sizes.get(name).is_some_and(|(_, t)| fresh(t)) {
                    continue;
                }
                let Some(image) = candidates.get(name) else {
                    continue;
                };
                match tokio::time::timeout(
                    SIZE_TIMEOUT,
                    stack.engine.missing_bytes(image, &opts, cancel),
                )
                .await
                {
                    Ok(Ok(bytes)) => {
                        self.sizes.insert(name.clone(), (bytes, Instant::now()));
                        measured = true;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(image = %name, error = %e, "cannot measure missing bytes; lead time uses the minimum")
                    }
                    Err(_) => tracing::warn!(image = %name, "measuring missing bytes timed out"),
                }
            }
        }
        if !measured {
            return first;
        }
        let missing = sizes(self);
        let view = NodeView {
            missing_bytes: &missing,
            ..view
        };
        plan_windows_pure(&cfg.windows, &cfg.scheduling, &view, now)
    }

    fn new(name: String, source: Option<Arc<dyn NodeLabels>>) -> Self {
        Self {
            name,
            source,
            labels: Labels::new(),
            labels_read: None,
            throughput: Throughput::default(),
            sizes: HashMap::new(),
            tracker: windows::Tracker::default(),
        }
    }

    /// Re-reads the node's labels now and then; on failure the last known
    /// labels stay (the API server being down must not stop the agent).
    async fn refresh_labels(&mut self) {
        if self.labels_read.is_some_and(|t| t.elapsed() < LABELS_TTL) {
            return;
        }
        let Some(source) = &self.source else {
            self.labels_read = Some(Instant::now());
            return;
        };
        match source.labels(&self.name).await {
            Ok(labels) => {
                if labels != self.labels {
                    tracing::info!(node = %self.name, labels = labels.len(), "node labels read");
                }
                self.labels = labels;
                self.labels_read = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(node = %self.name, error = %e, "cannot read node labels; keeping the last known");
                // Try again soon rather than after the full TTL.
                self.labels_read = Some(Instant::now() - LABELS_TTL + RUNTIME_RETRY);
            }
        }
    }
}
