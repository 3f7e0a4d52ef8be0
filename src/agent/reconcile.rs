//! The reconcile loop: observe the node, plan (pure, in `plan/` and
//! [`super::decide`]), act; then wait for the next reason to look again
//! (a timer, a config change, new intents, a finished pull, or rotated
//! registry credentials).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Backoffs};
use super::desired;
use super::http::Health;
use super::learned::Persisted;
use super::link::NodeReport;
use super::metrics::{ImageRow, Metrics};
use super::node::NodeState;
use super::pins::Pins;
use super::report::{node_report, window_states, AgentObserver};
use super::stack::{Connector, Stack};
use crate::config::reference::ImageRef;
use crate::config::{AgentConfig, Platform};
use crate::node::manifest::host_platform;
use crate::node::pull::PullOptions;
use crate::node::runtime::ImageStore;
use crate::node::setup::SetupError;
use crate::plan::intents::{self, Admission, Applicable, Receipts, Refusal, Room};
use crate::plan::pull_secrets;
use crate::plan::pull_start::Starts;
use crate::plan::warm::{Action, HoldPolicy, Observed, Present};
use crate::plan::windows::WindowPlan;
use crate::wire::v1::{image_state::Phase as ImagePhase, ImageState, IntentSet};

/// Wait between attempts to reach containerd.
const RUNTIME_RETRY: Duration = Duration::from_secs(5);
/// How long in-flight pulls get to stop on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often credential files are compared with what was loaded (the
/// config file's poll period).
pub const CREDENTIALS_POLL: Duration = super::CONFIG_POLL;

/// Wall-clock time for the plans (tests drive it from tokio's paused clock).
pub type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Everything the loop runs on besides the config.
pub struct LoopParts {
    pub node: NodeState,
    pub observer: Arc<AgentObserver>,
    /// To the coordinator link, when one is configured.
    pub reports: Option<watch::Sender<Arc<NodeReport>>>,
    /// The coordinator's last intent set: intents and windows.
    pub intents: watch::Receiver<IntentSet>,
    pub connector: Arc<dyn Connector>,
    pub clock: WallClock,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Where learned values are kept across restarts; None: nowhere.
    pub persisted: Option<Persisted>,
}

struct Loop {
    p: LoopParts,
    cancel: CancellationToken,
    stack: Option<(Stack, Arc<AgentConfig>)>,
    pulls: JoinSet<PullDone>,
    /// Image → the windows it is pulled for.
    in_flight: BTreeMap<String, Vec<String>>,
    receipts: Receipts,
    refused: BTreeMap<String, Refusal>,
    backoffs: Backoffs,
    /// Whether a stack was ever built: before that, a missing mount is fatal.
    connected: bool,
    /// Seconds of the last successful pull per image (desired ones only).
    last_pull: BTreeMap<String, f64>,
    /// Intent credentials that did not parse, logged once each.
    bad_credentials: BTreeSet<String>,
    /// Coordinator windows last dropped (logged when this changes).
    dropped_windows: Vec<crate::plan::keda::Dropped>,
}

/// A finished pull: its name, whether it worked and, if it moved bytes,
/// how many and how fast.
struct PullDone {
    name: String,
    ok: bool,
    sample: Option<(u64, f64)>,
    /// Seconds, when it succeeded and pulled (not already present).
    pulled_secs: Option<f64>,
}

/// Runs until cancelled, then gives pulls [`SHUTDOWN_GRACE`] to stop.
/// At start, a node stack that cannot work in this pod (a mount missing)
/// ends it with that error, cancelling `cancel`.
pub async fn reconcile_loop(
    mut rx: watch::Receiver<Arc<AgentConfig>>,
    parts: LoopParts,
    cancel: CancellationToken,
) -> Result<(), SetupError> {
    let mut lp = Loop {
        p: parts,
        cancel: cancel.clone(),
        stack: None,
        pulls: JoinSet::new(),
        in_flight: BTreeMap::new(),
        receipts: Receipts::new(),
        refused: BTreeMap::new(),
        backoffs: Backoffs::default(),
        connected: false,
        last_pull: BTreeMap::new(),
        bad_credentials: BTreeSet::new(),
        dropped_windows: Vec::new(),
    };
    let mut creds = tokio::time::interval(CREDENTIALS_POLL);
    creds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !cancel.is_cancelled() {
        let cfg = rx.borrow_and_update().clone();
        let wait = match lp.pass(&cfg).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "the agent cannot work in this pod; stopping");
                cancel.cancel();
                return Err(e);
            }
        };
        let wait = lp.save_learned(wait, false);
        let until = tokio::time::Instant::now() + wait;
        // Wait for a reason to look again.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                Ok(()) = rx.changed() => break,
                Ok(()) = lp.p.intents.changed() => break,
                Some(done) = lp.pulls.join_next(), if !lp.pulls.is_empty() => {
                    if let Ok(done) = done {
                        lp.finished(done, &cfg);
                    }
                    break;
                }
                _ = creds.tick() => if lp.reload_credentials() { break },
                _ = cancel.cancelled() => break,
            }
        }
        // Reap every finished pull, not just the one that woke us.
        while let Some(done) = lp.pulls.try_join_next() {
            if let Ok(done) = done {
                lp.finished(done, &cfg);
            }
        }
        lp.p.metrics.pulls_in_flight.set(lp.in_flight.len() as i64);
    }
    // Pulls see the same token; give them time to release their leases.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while lp.pulls.join_next().await.is_some() {}
    })
    .await;
    lp.save_learned(Duration::ZERO, true);
    tracing::info!("agent stopped");
    Ok(())
}

fn stack_inputs_changed(a: &AgentConfig, b: &AgentConfig) -> bool {
    a.runtime != b.runtime || a.registry != b.registry || a.pacing != b.pacing
}

/// CRI status and size of each of `names` that is present: recorded and
/// unpacked in `snapshotter`, so a container start unpacks nothing.
async fn observe_present(
    store: &dyn ImageStore,
    snapshotter: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<String, (Present, u64)>, SetupError> {
    let mut present = BTreeMap::new();
    for name in names {
        if let Some(img) = store.image_status(name).await? {
            if !store.unpacked(&img, snapshotter).await? {
                tracing::info!(image = %name, snapshotter, "recorded but not unpacked; warming again");
                continue;
            }
            let mut names = img.repo_tags.clone();
            names.extend(img.repo_digests.iter().cloned());
            names.push(img.id.clone());
            let p = Present {
                names,
                pinned: img.pinned,
            };
            present.insert(name.clone(), (p, img.size));
        }
    }
    Ok(present)
}

impl Loop {
    /// One reconcile; a failure drops the stack and retries soon, except
    /// a missing mount before the first stack was built (returned).
    async fn pass(&mut self, cfg: &Arc<AgentConfig>) -> Result<Duration, SetupError> {
        Ok(match self.reconcile(cfg).await {
            Ok(wait) => wait,
            Err(e) if e.needs_mount() && !self.connected => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed; retrying");
                self.p.health.ready.store(false, Ordering::Relaxed);
                self.p.metrics.runtime_up.set(0);
                self.stack = None;
                RUNTIME_RETRY
            }
        })
    }

    /// Saves the learned values if due; `wait` shortened to when a
    /// rate-limited save is due.
    fn save_learned(&mut self, wait: Duration, shutdown: bool) -> Duration {
        let Some(p) = self.p.persisted.as_mut() else {
            return wait;
        };
        let now = (self.p.clock)();
        match p.save(&self.p.node, now, shutdown) {
            Some(due) => {
                let until = (due - now).to_std().unwrap_or_default();
                wait.min(until.max(decide::MIN_WAKE))
            }
            None => wait,
        }
    }

    fn finished(&mut self, done: PullDone, cfg: &AgentConfig) {
        self.in_flight.remove(&done.name);
        if let Some(secs) = done.pulled_secs {
            self.last_pull.insert(done.name.clone(), secs);
        }
        let now = (self.p.clock)();
        match done.ok {
            true => self.backoffs.succeeded(&done.name),
            false => self
                .backoffs
                .failed(&done.name, cfg.pacing.retry.max_backoff, now),
        }
        if let Some((bytes, secs)) = done.sample {
            self.p.node.throughput.record(bytes, secs);
            if let Some(bps) = self.p.node.throughput.bytes_per_second() {
                self.p.metrics.throughput.set(bps);
            }
        }
        // Sizes changed: measure again when needed.
        self.p.node.sizes.remove(&done.name);
    }

    /// Re-reads the registry credential files if they changed; true when
    /// new credentials are in use (failed pulls are then tried at once).
    fn reload_credentials(&mut self) -> bool {
        let Some(creds) = self.stack.as_ref().and_then(|(s, _)| s.credentials.clone()) else {
            return false;
        };
        match creds.reload_if_changed() {
            Ok(false) => false,
            Ok(true) => {
                tracing::info!(files = ?creds.files(), "registry credentials changed; reloaded");
                self.p.metrics.credentials_reloads.inc();
                self.backoffs = Backoffs::default();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "changed registry credentials rejected; keeping the previous ones");
                self.p.metrics.credentials_reload_failures.inc();
                false
            }
        }
    }

    async fn ensure_stack(&mut self, cfg: &Arc<AgentConfig>) -> Result<(), SetupError> {
        if self
            .stack
            .as_ref()
            .is_some_and(|(_, old)| !stack_inputs_changed(old, cfg))
        {
            return Ok(());
        }
        let stack = self
            .p
            .connector
            .connect(cfg, self.p.observer.clone())
            .await?;
        tracing::info!(version = %stack.runtime_version, pin_supported = stack.pin_supported, "connected to containerd");
        if !stack.pin_supported {
            tracing::warn!(version = %stack.runtime_version, "this containerd ignores the CRI pinned label: warm images are not protected from kubelet image GC");
        }
        self.p.metrics.pin_supported.set(stack.pin_supported as i64);
        self.stack = Some((stack, cfg.clone()));
        self.connected = true;
        Ok(())
    }

    /// One pass: observe the node, plan, act. Returns how long to sleep.
    async fn reconcile(&mut self, cfg: &Arc<AgentConfig>) -> Result<Duration, SetupError> {
        self.ensure_stack(cfg).await?;
        // Before any pull this pass starts: a secret rotated together with
        // a config change is used by the pulls that change asks for.
        self.reload_credentials();
        self.p.node.refresh_labels().await;
        let cfg = &self.with_coordinator_windows(cfg);
        let (stack, stack_cfg) = self.stack.take().expect("connected above");
        let result = self.reconcile_on(cfg, &stack).await;
        self.stack = Some((stack, stack_cfg));
        result
    }

    async fn reconcile_on(
        &mut self,
        cfg: &Arc<AgentConfig>,
        stack: &Stack,
    ) -> Result<Duration, SetupError> {
        let now = (self.p.clock)();
        let store = stack.store.as_ref();
        let platform = cfg.registry.platform.clone().unwrap_or_else(host_platform);
        let mut candidates = decide::local_candidates(cfg, &self.p.node.labels);
        let applicable = self.applicable_intents(cfg, now);
        self.set_workload_credentials(stack, &applicable);
        let names = candidates.keys().chain(applicable.images.keys()).cloned();
        let present = observe_present(store, &stack.snapshotter, &names.collect()).await?;
        let sizes: BTreeMap<String, u64> =
            present.iter().map(|(n, (_, s))| (n.clone(), *s)).collect();
        let admission = self.admit_intents(cfg, stack, &applicable, &present);
        candidates.extend(
            admission
                .images
                .iter()
                .map(|(n, i)| (n.clone(), i.image.clone())),
        );
        let warm: BTreeSet<String> = present
            .keys()
            .filter(|n| candidates.contains_key(*n))
            .cloned()
            .collect();

        // The window plan, with sizes measured for windows coming up soon,
        // started when the registry budget's schedule (or the jitter) says.
        let schedules = self.p.intents.borrow().schedules.clone();
        let node_name = self.p.node.name.clone();
        let starts = Starts {
            node: &node_name,
            max_jitter: cfg.scheduling.start_jitter,
            schedules: &schedules,
        };
        let wplan = self
            .p
            .node
            .plan_windows(
                cfg,
                stack,
                (&self.in_flight, &self.cancel),
                &candidates,
                &warm,
                &platform,
                &starts,
                now,
            )
            .await;
        self.p
            .node
            .tracker
            .observe(&wplan.windows, now, &self.p.metrics);
        let intent_images = admission
            .images
            .iter()
            .map(|(n, i)| (n.clone(), (i.priority, i.intent.clone())))
            .collect();
        let (desired, reasons) = desired::merge(cfg, &wplan.desired, &intent_images);

        let pins = Pins::observe(store).await?;
        let mut observed = Observed {
            present: present
                .into_iter()
                .filter(|(n, _)| desired.iter().any(|d| &d.name == n))
                .map(|(n, (p, _))| (n, p))
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
        // Holds as they stand after this pass's writes.
        let written = warm_plan.actions.iter().filter_map(|a| match a {
            Action::Hold { until, .. } => Some(*until),
            Action::Pin { hold_until, .. } => *hold_until,
            _ => None,
        });
        let holds: Vec<_> = observed.holds.values().copied().chain(written).collect();
        self.set_gauges(desired.len(), &observed, held.len());
        self.set_image_gauges(&desired, &observed, &sizes);
        self.backoffs
            .retain(|n| desired.iter().any(|d| d.name == n));

        let mut scheduled: Option<DateTime<Utc>> = None;
        for action in decide::order_actions(warm_plan.actions) {
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
                    let start =
                        decide::pull_start(cfg, &starts, &wplan.windows, &name, &windows, now);
                    let bandwidth = match start {
                        decide::PullStart::Now(b) => b,
                        decide::PullStart::At(at) => {
                            tracing::debug!(image = %name, start = %at, "waiting for its scheduled start");
                            scheduled = Some(scheduled.map_or(at, |s| s.min(at)));
                            continue;
                        }
                    };
                    let pull = Pull {
                        name,
                        image,
                        windows,
                        pin,
                        priority,
                        bandwidth,
                    };
                    self.start_pull(cfg, stack, &platform, pull, now);
                }
                other => pins.apply(store, &other, &self.p.metrics).await?,
            }
        }
        self.p
            .metrics
            .pulls_in_flight
            .set(self.in_flight.len() as i64);
        self.p
            .metrics
            .pull_retries_waiting
            .set(self.backoffs.waiting(now) as i64);
        self.publish(stack, &desired, &candidates, &observed, held, &wplan);
        // Holds of running intents are renewed by a pass before they get
        // short, however long `resync` is.
        let renew = decide::renew_wake(holds, policy.period, now);
        let wakeups = [
            wplan.next_wakeup,
            warm_plan.next_expiry,
            applicable.next_end,
            self.backoffs.next(now),
            renew,
            scheduled,
        ];
        Ok(decide::next_wake(now, wakeups, cfg.resync))
    }

    /// `cfg` with the coordinator's windows for this node added where the
    /// ConfigMap's do not conflict ([`crate::plan::keda::merge_windows`]);
    /// the last windows received stay while the coordinator is unreachable.
    fn with_coordinator_windows(&mut self, cfg: &Arc<AgentConfig>) -> Arc<AgentConfig> {
        let received = self.p.intents.borrow().windows.clone();
        let now = (self.p.clock)();
        let labels = &self.p.node.labels;
        let (windows, dropped) =
            crate::plan::keda::merge_windows(&cfg.windows, &received, labels, now);
        if dropped != self.dropped_windows {
            for d in &dropped {
                tracing::warn!(window = %d.name, source = %d.source, reason = %d.reason, "coordinator window not planned");
            }
            self.dropped_windows = dropped;
        }
        let m = &self.p.metrics;
        m.coordinator_windows_dropped
            .set(self.dropped_windows.len() as i64);
        if windows.len() == cfg.windows.len() {
            return cfg.clone();
        }
        let mut merged = (**cfg).clone();
        merged.windows = windows;
        Arc::new(merged)
    }

    /// The coordinator's intents that apply now, kept until they end even
    /// while the coordinator is unreachable.
    fn applicable_intents(&mut self, cfg: &AgentConfig, now: DateTime<Utc>) -> Applicable {
        let intents = self.p.intents.borrow().intents.clone();
        self.receipts = intents::receipts(&self.receipts, &intents, now);
        let node = &self.p.node;
        let max = cfg.intents.max_deadline;
        let a = intents::applicable(&intents, &self.receipts, &node.name, &node.labels, max, now);
        for (id, error) in &a.bad {
            tracing::warn!(intent = %id, error = %error, "intent names a bad image; ignored");
        }
        a
    }

    /// Hands the registry client the pull-secret credentials of the
    /// intents applying now (and only those: an ended intent's go). New
    /// ones end the failure backoffs, as rotated node credentials do.
    fn set_workload_credentials(&mut self, stack: &Stack, applicable: &Applicable) {
        let Some(store) = &stack.workload else {
            return;
        };
        let intents = self.p.intents.borrow().intents.clone();
        let (entries, bad) = pull_secrets::for_node(&intents, &applicable.ids, &self.p.node.name);
        let bad: BTreeSet<String> = bad.into_iter().collect();
        for why in bad.difference(&self.bad_credentials) {
            tracing::warn!(error = %why, "intent credential ignored");
        }
        self.bad_credentials = bad;
        let gained = !entries.is_empty();
        if store.set(entries) {
            tracing::info!(
                repositories = store.repositories(),
                "workload pull-secret credentials changed"
            );
            if gained {
                self.backoffs = Backoffs::default();
            }
        }
    }

    /// The intent images within `intents:` limits and the disk floor.
    fn admit_intents(
        &mut self,
        cfg: &AgentConfig,
        stack: &Stack,
        applicable: &Applicable,
        present: &BTreeMap<String, (Present, u64)>,
    ) -> Admission {
        let floor = cfg.pacing.disk_floor;
        let above_floor = stack
            .disk
            .usage()
            .map(|u| u.free > floor.min_free_bytes(u.total))
            .unwrap_or(true);
        let room = Room {
            present: applicable
                .images
                .keys()
                .filter_map(|n| Some((n.clone(), present.get(n)?.1)))
                .collect(),
            above_floor,
        };
        let admission = intents::admit(&applicable.images, &cfg.intents, &room);
        for (name, why) in &admission.refused {
            if self.refused.get(name) != Some(why) {
                tracing::warn!(image = %name, reason = why.as_str(), "intent image refused");
            }
        }
        self.refused = admission.refused.clone();
        let refused = self.refused.len() as i64;
        self.p.metrics.intent_images_refused.set(refused);
        admission
    }

    fn set_gauges(&self, desired: usize, observed: &Observed, held: usize) {
        let m = &self.p.metrics;
        m.runtime_up.set(1);
        self.p.health.ready.store(true, Ordering::Relaxed);
        m.images_desired.set(desired as i64);
        m.images_warm.set(observed.present.len() as i64);
        let pinned = observed.present.values().filter(|p| p.pinned).count();
        m.images_pinned.set(pinned as i64);
        m.images_held.set(held as i64);
    }

    /// Per-image series for the desired set only; the others are deleted.
    fn set_image_gauges(
        &mut self,
        desired: &[crate::plan::warm::Desired],
        observed: &Observed,
        sizes: &BTreeMap<String, u64>,
    ) {
        let wanted: BTreeSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
        self.last_pull.retain(|n, _| wanted.contains(n.as_str()));
        let rows: BTreeMap<String, ImageRow> = desired
            .iter()
            .map(|d| {
                let present = observed.present.get(&d.name);
                let row = ImageRow {
                    warm: present.is_some(),
                    pinned: present.is_some_and(|p| p.pinned),
                    bytes: present.and(sizes.get(&d.name)).copied().unwrap_or(0),
                    last_pull_seconds: self.last_pull.get(&d.name).copied(),
                };
                (d.name.clone(), row)
            })
            .collect();
        self.p.metrics.images.set(&rows);
    }

    /// Starts a pull unless its image waits out a backoff or one of its
    /// windows is at its pull cap.
    fn start_pull(
        &mut self,
        cfg: &AgentConfig,
        stack: &Stack,
        platform: &Platform,
        pull: Pull,
        now: DateTime<Utc>,
    ) {
        let Pull {
            name,
            image,
            windows,
            pin,
            priority,
            bandwidth,
        } = pull;
        if !self.backoffs.ready(&name, now) {
            tracing::debug!(image = %name, "last pull failed; waiting out its backoff");
            return;
        }
        if let Some(w) = decide::window_at_capacity(cfg, &windows, &self.in_flight) {
            tracing::debug!(image = %name, window = %w, "window pull cap reached; waiting");
            return;
        }
        let opts = PullOptions {
            pin,
            platform: platform.clone(),
            cri_timeout: Duration::from_secs(3600),
            priority,
            bandwidth,
        };
        if !windows.is_empty() {
            tracing::info!(image = %name, windows = ?windows, priority, "warming for window");
        }
        self.in_flight.insert(name.clone(), windows);
        let engine = stack.engine.clone();
        let cancel = self.cancel.clone();
        self.pulls.spawn(async move {
            // The engine's observer (metrics) records the outcome.
            let result = engine.warm(&image, &opts, &cancel).await;
            let sample = result
                .as_ref()
                .ok()
                .filter(|o| o.fetched_bytes > 0)
                .map(|o| (o.fetched_bytes, o.duration.as_secs_f64()));
            let pulled_secs = result
                .as_ref()
                .ok()
                .filter(|o| !o.already_present)
                .map(|o| o.duration.as_secs_f64());
            PullDone {
                name,
                ok: result.is_ok(),
                sample,
                pulled_secs,
            }
        });
    }

    /// Sends the node report to the link when it changed.
    fn publish(
        &self,
        stack: &Stack,
        desired: &[crate::plan::warm::Desired],
        candidates: &BTreeMap<String, ImageRef>,
        observed: &Observed,
        held: BTreeSet<String>,
        wplan: &WindowPlan,
    ) {
        let Some(tx) = &self.p.reports else {
            return;
        };
        // Every image this node wants or keeps pinned past its reason.
        let mut images: BTreeMap<String, ImageState> = desired
            .iter()
            .filter_map(|d| {
                let image = candidates.get(&d.name)?;
                let present = observed.present.get(&d.name).map(|p| p.pinned);
                let running = self.in_flight.contains_key(&d.name);
                let state = self
                    .p
                    .observer
                    .image_state(&d.name, image, present, running);
                Some((d.name.clone(), state))
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
            &self.p.node.labels,
            images,
            window_states(&wplan.windows),
            free,
            stack.pin_supported,
            self.p.node.throughput.bytes_per_second(),
        );
        tx.send_if_modified(|cur| {
            let changed = **cur != report;
            if changed {
                *cur = Arc::new(report);
            }
            changed
        });
    }
}

/// A warm the plan asks for.
struct Pull {
    name: String,
    image: ImageRef,
    windows: Vec<String>,
    pin: bool,
    priority: i64,
    /// The window (and registry schedule) budget it counts against.
    bandwidth: Option<crate::node::pull::WindowBandwidth>,
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
