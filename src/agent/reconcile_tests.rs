//! The reconcile loop against the in-memory containerd and registry, on
//! tokio's paused clock (the plans' wall clock follows it). Every wait is
//! on the node report the loop publishes; a condition that never comes
//! fails after hours of virtual time, not on a real timer.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::k8s::{Labels, StaticNodeLabels};
use crate::node::auth::workload::WorkloadCredentials;
use crate::node::auth::Credential;
use crate::node::fake::{BlobFault, FakeDisk, FakeRegistry, FakeRuntime};
use crate::node::pace::DiskUsage;
use crate::node::pull::{Engine, PullObserver};
use crate::node::runtime::{
    version_supports_pinning, ImageRecord, PREWARM_HOLD_LABEL, PREWARM_PINNED_LABEL,
};
use crate::node::state::{MemoryStateStore, StateStore};
use crate::plan::learned::LearnedState;
use crate::wire::v1::Intent;
use crate::wire::v1::RegistryCredential;

/// A Tuesday, 10:00 UTC.
fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct FakeConnector {
    reg: FakeRegistry,
    rt: FakeRuntime,
    disk: Arc<FakeDisk>,
    /// Connects so far, watched by the test.
    connects: watch::Sender<usize>,
    /// Connects that fail as if the content store were not mounted.
    unmounted: Arc<AtomicUsize>,
    workload: Arc<WorkloadCredentials>,
}

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(
        &self,
        cfg: &AgentConfig,
        observer: Arc<dyn PullObserver>,
    ) -> Result<Stack, SetupError> {
        self.connects.send_modify(|n| *n += 1);
        let fail =
            self.unmounted
                .fetch_update(AtomicOrdering::SeqCst, AtomicOrdering::SeqCst, |n| {
                    n.checked_sub(1)
                });
        if fail.is_ok() {
            return Err(SetupError::ContentStore {
                path: "/var/lib/containerd/io.containerd.content.v1.content".into(),
                what: "under the default containerd root".into(),
                reason: "No such file or directory".into(),
                hint: "set runtime.root",
            });
        }
        let engine = Engine::new(
            Arc::new(self.reg.clone()),
            Arc::new(self.rt.clone()),
            Arc::new(self.rt.clone()),
            self.disk.clone(),
            cfg.pacing.clone(),
            observer,
        );
        Ok(Stack {
            store: Arc::new(self.rt.clone()),
            engine: Arc::new(engine),
            disk: self.disk.clone(),
            pin_supported: version_supports_pinning(&self.rt.version),
            runtime_version: self.rt.version.clone(),
            snapshotter: "overlayfs".into(),
            credentials: None,
            workload: Some(self.workload.clone()),
        })
    }
}

struct Rig {
    reg: FakeRegistry,
    rt: FakeRuntime,
    cfg: watch::Sender<Arc<AgentConfig>>,
    intents: Option<watch::Sender<IntentSet>>,
    reports: watch::Receiver<Arc<NodeReport>>,
    connects: watch::Receiver<usize>,
    /// How many connects from now fail as unmounted.
    unmounted: Arc<AtomicUsize>,
    /// The workload credentials the loop hands the registry client.
    workload: Arc<WorkloadCredentials>,
    t0: Instant,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), SetupError>>,
}

/// Test config: quick failures (one attempt, a 30 s agent backoff), no
/// disk floor, the given extra YAML.
fn config(extra: &str) -> Arc<AgentConfig> {
    config_with("", extra)
}

/// [`config`] with more `pacing:` keys.
fn config_with(pacing: &str, extra: &str) -> Arc<AgentConfig> {
    let text = format!(
        "pacing: {{diskFloor: 0, retry: {{attempts: 1, initialBackoff: 1s, maxBackoff: 30s}}{pacing}}}\nscheduling: {{intentHold: 10s}}\n{extra}"
    );
    Arc::new(AgentConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}")))
}

fn layer(seed: u8) -> Bytes {
    Bytes::from((0..4096u32).map(|i| (i as u8) ^ seed).collect::<Vec<_>>())
}

impl Rig {
    fn start(cfg: Arc<AgentConfig>) -> Rig {
        Rig::start_with(cfg, None)
    }

    /// With learned state kept in `store`, restored first as the agent does.
    fn start_with(cfg: Arc<AgentConfig>, store: Option<MemoryStateStore>) -> Rig {
        let reg = FakeRegistry::default();
        let rt = FakeRuntime::new("1.7.24");
        let disk = Arc::new(FakeDisk(Mutex::new(DiskUsage {
            free: 1 << 40,
            total: 2 << 40,
        })));
        let (connects_tx, connects) = watch::channel(0);
        let unmounted = Arc::new(AtomicUsize::new(0));
        let workload = Arc::new(WorkloadCredentials::default());
        let connector = FakeConnector {
            reg: reg.clone(),
            rt: rt.clone(),
            disk,
            connects: connects_tx,
            unmounted: unmounted.clone(),
            workload: workload.clone(),
        };
        let t0 = Instant::now();
        let clock: WallClock =
            Arc::new(move || base() + chrono::TimeDelta::from_std(t0.elapsed()).expect("small"));
        let labels: Labels = [("pool".to_string(), "int".to_string())].into();
        let metrics = Arc::new(Metrics::new());
        let (reports_tx, reports) = watch::channel(Arc::new(NodeReport::default()));
        let (intents_tx, intents_rx) = watch::channel(IntentSet::default());
        let (cfg_tx, cfg_rx) = watch::channel(cfg);
        let mut node = NodeState::new("n1".into(), Some(Arc::new(StaticNodeLabels(labels))));
        let persisted = store.map(|s| {
            let mut p = Persisted::new(Arc::new(s));
            p.restore(&mut node, &metrics, base());
            p
        });
        let parts = LoopParts {
            node,
            observer: Arc::new(AgentObserver::new(metrics.clone())),
            reports: Some(reports_tx),
            intents: intents_rx,
            connector: Arc::new(connector),
            clock,
            metrics: metrics.clone(),
            health: Arc::new(Health::default()),
            persisted,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(reconcile_loop(cfg_rx, parts, cancel.clone()));
        Rig {
            reg,
            rt,
            cfg: cfg_tx,
            intents: Some(intents_tx),
            reports,
            connects,
            unmounted,
            workload,
            t0,
            metrics,
            cancel,
            task,
        }
    }

    /// Registers an image in the registry and in the fake CRI's catalog.
    fn image(&self, name_tag: &str, seed: u8) -> String {
        let (digest, config, blobs) = self.reg.add_image(name_tag, &[layer(seed)]);
        self.rt
            .catalog
            .lock()
            .unwrap()
            .insert(name_tag.to_string(), (digest, config, blobs));
        name_tag.to_string()
    }

    /// An image of one `bytes`-long layer: big enough to measure throughput.
    fn big_image(&self, name_tag: &str, bytes: usize) -> String {
        let layer = Bytes::from((0..bytes).map(|i| i as u8).collect::<Vec<_>>());
        let (digest, config, blobs) = self.reg.add_image(name_tag, &[layer]);
        self.rt
            .catalog
            .lock()
            .unwrap()
            .insert(name_tag.to_string(), (digest, config, blobs));
        name_tag.to_string()
    }

    /// The first published report satisfying `pred`.
    async fn until(&mut self, what: &str, pred: impl Fn(&NodeReport) -> bool) -> Arc<NodeReport> {
        let wait = async {
            loop {
                let r = self.reports.borrow_and_update().clone();
                if pred(&r) {
                    return r;
                }
                self.reports.changed().await.expect("loop running");
            }
        };
        tokio::time::timeout(Duration::from_secs(6 * 3600), wait)
            .await
            .unwrap_or_else(|_| panic!("never happened: {what}"))
    }

    fn intent(&self, id: &str, image: &str, deadline_unix: i64) {
        let i = Intent {
            id: id.into(),
            images: vec![image.into()],
            priority: 500,
            deadline_unix,
            ..Default::default()
        };
        let tx = self.intents.as_ref().expect("link up");
        tx.send(IntentSet {
            intents: vec![i],
            ..Default::default()
        })
        .unwrap();
    }

    fn pinned_by_us(&self, name: &str) -> bool {
        let st = self.rt.lock();
        st.records
            .get(name)
            .is_some_and(|r| r.labels.contains_key(PREWARM_PINNED_LABEL))
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().expect("the loop ran to its end");
    }
}

fn phase(r: &NodeReport, name: &str) -> Option<ImagePhase> {
    r.images
        .get(name)
        .and_then(|i| ImagePhase::try_from(i.phase).ok())
}

fn warm_pinned(r: &NodeReport, name: &str) -> bool {
    phase(r, name) == Some(ImagePhase::Warm) && r.images[name].pinned
}

#[tokio::test(start_paused = true)]
async fn a_config_change_replans() {
    let mut rig = Rig::start(config("images: [reg.test/a:1]\n"));
    let a = rig.image("reg.test/a:1", 1);
    let b = rig.image("reg.test/b:1", 2);
    rig.until("a warm", |r| warm_pinned(r, &a)).await;
    assert!(!rig.rt.lock().cri_pulls.contains(&b));
    rig.cfg
        .send(config("images: [reg.test/a:1, reg.test/b:1]\n"))
        .unwrap();
    rig.until("b warm after the reload", |r| warm_pinned(r, &b))
        .await;
    // Images changed, the stack's inputs did not: no reconnect.
    assert_eq!(*rig.connects.borrow(), 1);
    // A pacing change rebuilds the stack.
    let c = rig.image("reg.test/c:1", 3);
    let more = ", maxConcurrentPulls: 3";
    rig.cfg
        .send(config_with(
            more,
            "images: [reg.test/a:1, reg.test/b:1, reg.test/c:1]\n",
        ))
        .unwrap();
    rig.until("c warm", |r| warm_pinned(r, &c)).await;
    assert_eq!(*rig.connects.borrow(), 2);
    rig.stop().await;
}

/// An image CRI still lists but whose snapshots are gone is not warm: the
/// loop has CRI unpack it again.
#[tokio::test(start_paused = true)]
async fn an_image_whose_snapshots_are_gone_is_unpacked_again() {
    let mut rig = Rig::start(config("images: [reg.test/a:1]\n"));
    let a = rig.image("reg.test/a:1", 1);
    rig.until("a warm", |r| warm_pinned(r, &a)).await;
    let pulls = |rig: &Rig| rig.rt.lock().cri_pulls.iter().filter(|p| **p == a).count();
    assert_eq!(pulls(&rig), 1);
    rig.rt.lock().unpacked.clear();
    let again = async {
        while pulls(&rig) < 2 {
            // Virtual time: each step lets the loop's resync come round.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(6 * 3600), again)
        .await
        .expect("a CRI pull unpacks the image again");
    assert!(!rig.rt.lock().unpacked.is_empty(), "unpacked again");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_intent_arriving_warms_and_pins_with_a_hold() {
    let mut rig = Rig::start(config(""));
    let c = rig.image("reg.test/c:1", 3);
    rig.until("first report", |r| r.labels.contains_key("pool"))
        .await;
    rig.intent("rollout-1", &c, base().timestamp() + 3600);
    rig.until("c warm for the intent", |r| warm_pinned(r, &c))
        .await;
    let held = rig.rt.lock().records[&c]
        .labels
        .contains_key(PREWARM_HOLD_LABEL);
    assert!(held, "the intent's pin carries a hold");
    rig.stop().await;
}

/// An intent ends at its deadline; its pin goes after the hold.
#[tokio::test(start_paused = true)]
async fn an_expired_intent_unpins_after_its_hold() {
    let mut rig = Rig::start(config(""));
    let c = rig.image("reg.test/c:1", 3);
    rig.intent("gate-1", &c, base().timestamp() + 30);
    rig.until("c warm", |r| warm_pinned(r, &c)).await;
    rig.until("c no longer wanted nor held", |r| {
        !r.images.contains_key(&c)
    })
    .await;
    assert!(!rig.pinned_by_us(&c));
    // Deadline 30 s, then a hold of 10 to 15 s (intentHold 10s).
    let after = rig.t0.elapsed();
    assert!(after >= Duration::from_secs(40), "{after:?}");
    assert!(after <= Duration::from_secs(46), "{after:?}");
    rig.stop().await;
}

/// Issue 10: an intent with deadline 0, still sent by a live coordinator,
/// must not pin its image for good: it ends `intents.maxDeadline` after
/// it was received.
#[tokio::test(start_paused = true)]
async fn an_intent_without_deadline_ends_at_max_deadline() {
    let mut rig = Rig::start(config("intents: {maxDeadline: 1m}\n"));
    let c = rig.image("reg.test/c:1", 3);
    rig.intent("forever", &c, 0);
    rig.until("c warm", |r| warm_pinned(r, &c)).await;
    rig.until("c released", |r| !r.images.contains_key(&c))
        .await;
    assert!(!rig.pinned_by_us(&c));
    assert!(rig.t0.elapsed() >= Duration::from_secs(60));
    rig.stop().await;
}

/// A coordinator cannot make the node pin more than `intents.maxImages`.
#[tokio::test(start_paused = true)]
async fn intents_pin_at_most_max_images() {
    let mut rig = Rig::start(config("intents: {maxImages: 1}\n"));
    let a = rig.image("reg.test/a:1", 1);
    let b = rig.image("reg.test/b:1", 2);
    let deadline = base().timestamp() + 3600;
    let mk = |id: &str, image: &str, priority| Intent {
        id: id.into(),
        images: vec![image.into()],
        priority,
        deadline_unix: deadline,
        ..Default::default()
    };
    let tx = rig.intents.as_ref().unwrap();
    tx.send(IntentSet {
        intents: vec![mk("low", &a, 0), mk("high", &b, 9)],
        ..Default::default()
    })
    .unwrap();
    rig.until("b warm", |r| warm_pinned(r, &b)).await;
    assert!(!rig.rt.lock().cri_pulls.contains(&a), "a was refused");
    rig.stop().await;
}

/// A pull that fails at once (403) is tried again after the backoff
/// (`pacing.retry.maxBackoff`), not in a hot loop.
#[tokio::test(start_paused = true)]
async fn a_failed_pull_is_retried_after_a_backoff() {
    let mut rig = Rig::start(config("images: [reg.test/d:1]\n"));
    let d = rig.image("reg.test/d:1", 4);
    let layer_digest = {
        let (_, _, blobs) = rig.rt.catalog.lock().unwrap()[&d].clone();
        blobs[1].clone()
    };
    rig.reg.fault(&layer_digest, BlobFault::Status(403, None));
    rig.until("d warm", |r| warm_pinned(r, &d)).await;
    let after = rig.t0.elapsed();
    assert!(after >= Duration::from_secs(30), "retried after {after:?}");
    let requests = rig.reg.blob_requests.lock().unwrap().clone();
    let tries = requests.iter().filter(|(g, _)| *g == layer_digest).count();
    assert_eq!(tries, 2, "{requests:?}");
    rig.stop().await;
}

/// With the link gone, intents already received and local windows keep
/// running.
#[tokio::test(start_paused = true)]
async fn with_the_coordinator_gone_windows_and_intents_keep_working() {
    let window = "windows:\n- {name: w, schedule: '0 10 * * *', duration: 1h, nodeSelector: {pool: int}, images: [reg.test/w:1]}\n";
    let mut rig = Rig::start(config(window));
    let w = rig.image("reg.test/w:1", 5);
    let c = rig.image("reg.test/c:1", 3);
    rig.intent("rollout-1", &c, base().timestamp() + 3600);
    rig.until("intent received", |r| r.images.contains_key(&c))
        .await;
    rig.intents = None;
    rig.until("both warm", |r| warm_pinned(r, &w) && warm_pinned(r, &c))
        .await;
    let r = rig
        .until("window active", |r| r.windows.contains_key("w"))
        .await;
    assert_eq!(r.windows["w"].phase, "active");
    rig.stop().await;
}

/// A content store missing at start stops the agent with that error (its
/// other tasks cancelled); once a stack was built, the same error is
/// retried like any other, as after a config change.
#[tokio::test(start_paused = true)]
async fn a_missing_mount_at_start_stops_the_agent() {
    let rig = Rig::start(config(""));
    rig.unmounted.store(1, AtomicOrdering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(3600), rig.task)
        .await
        .expect("the loop did not stop")
        .unwrap();
    let err = ended.expect_err("the loop ended without the error");
    assert!(err.needs_mount(), "{err}");
    assert!(
        rig.cancel.is_cancelled(),
        "the agent's other tasks keep running"
    );
    assert_eq!(*rig.connects.borrow(), 1);

    let mut rig = Rig::start(config(""));
    rig.until("connected", |r| r.pin_supported).await;
    rig.unmounted.store(1, AtomicOrdering::SeqCst);
    // A pacing change rebuilds the stack: that connect fails, the next works.
    rig.cfg.send(config_with(", bandwidth: 1MiB", "")).unwrap();
    let reconnected = rig.connects.wait_for(|n| *n >= 3);
    tokio::time::timeout(Duration::from_secs(3600), reconnected)
        .await
        .expect("no reconnect after the failure")
        .expect("the connector is alive");
    assert_eq!(
        rig.unmounted.load(AtomicOrdering::SeqCst),
        0,
        "the failure happened"
    );
    assert!(!rig.cancel.is_cancelled());
    rig.stop().await;
}

/// Issue 12: a throughput learned by the previous agent is in the very
/// first report (the link's Snapshot), before any pull, and on the metric.
#[tokio::test(start_paused = true)]
async fn a_restored_throughput_is_reported_before_any_pull() {
    let store = MemoryStateStore::default();
    let mut learned = LearnedState::new("n1", base());
    learned.throughput_bytes_per_second = Some(7_000_000.0);
    store.save(&learned).unwrap();
    let mut rig = Rig::start_with(config(""), Some(store));
    let r = rig
        .until("first report", |r| r.labels.contains_key("pool"))
        .await;
    assert_eq!(r.throughput_bytes_per_second, Some(7_000_000.0));
    assert_eq!(rig.metrics.throughput.get(), 7_000_000.0);
    assert_eq!(rig.metrics.learned_state_restored.get(), 1);
    assert!(rig.rt.lock().cri_pulls.is_empty());
    rig.stop().await;
}

/// Bad or foreign state is not used: the report has no throughput.
#[tokio::test(start_paused = true)]
async fn corrupt_or_foreign_state_falls_back_to_the_default() {
    let foreign = {
        let mut s = LearnedState::new("another-node", base());
        s.throughput_bytes_per_second = Some(7e6);
        serde_json::to_vec(&s).unwrap()
    };
    let insane = {
        let mut s = LearnedState::new("n1", base());
        s.throughput_bytes_per_second = Some(-3.0);
        serde_json::to_vec(&s).unwrap()
    };
    let cases: [&[u8]; 4] = [
        b"{\"version\": 1, \"node\": \"n1\", \"throughp",
        br#"{"version": 9}"#,
        &foreign,
        &insane,
    ];
    for bytes in cases {
        let store = MemoryStateStore::default();
        store.set_bytes(bytes);
        let mut rig = Rig::start_with(config(""), Some(store));
        let r = rig
            .until("first report", |r| r.labels.contains_key("pool"))
            .await;
        let shown = String::from_utf8_lossy(bytes);
        assert_eq!(r.throughput_bytes_per_second, None, "{shown}");
        assert_eq!(rig.metrics.learned_state_restored.get(), 0, "{shown}");
        rig.stop().await;
    }
}

/// Equal up to JSON's float parsing (serde_json may be a unit in the last
/// place off without its float_roundtrip feature).
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= b.abs() * 1e-12
}

/// A measured throughput is saved 30 s after the previous save at the
/// earliest (the loop wakes for it), not on every change.
#[tokio::test(start_paused = true)]
async fn learned_values_are_saved_at_most_every_30s() {
    let store = MemoryStateStore::default();
    let mut rig = Rig::start_with(config("images: [reg.test/big:1]\n"), Some(store.clone()));
    rig.big_image("reg.test/big:1", 5 << 20);
    let r = rig
        .until("throughput measured", |r| {
            r.throughput_bytes_per_second.is_some()
        })
        .await;
    let learned = r.throughput_bytes_per_second.unwrap();
    let saved = || {
        store
            .load()
            .ok()
            .and_then(|s| s.throughput_bytes_per_second)
    };
    let wait = async {
        while !saved().is_some_and(|s| same_rate(s, learned)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3600), wait)
        .await
        .expect("the throughput is saved");
    let after = rig.t0.elapsed();
    assert!(
        after >= super::super::learned::SAVE_EVERY,
        "saved after {after:?}"
    );
    assert!(
        after < Duration::from_secs(31),
        "not woken for the save: {after:?}"
    );
    assert_eq!(store.saves(), 2, "the first pass's, then the throughput");
    rig.stop().await;
    assert_eq!(store.saves(), 2, "nothing changed since");
}

/// On shutdown a change waiting out the rate limit is written at once.
#[tokio::test(start_paused = true)]
async fn a_pending_change_is_saved_on_shutdown() {
    let store = MemoryStateStore::default();
    let mut rig = Rig::start_with(config("images: [reg.test/big:1]\n"), Some(store.clone()));
    rig.big_image("reg.test/big:1", 5 << 20);
    let r = rig
        .until("throughput measured", |r| {
            r.throughput_bytes_per_second.is_some()
        })
        .await;
    let saved = store.load().unwrap().throughput_bytes_per_second;
    assert_eq!(saved, None, "saved within 30 s of the first save");
    rig.stop().await;
    let saved = store.load().unwrap().throughput_bytes_per_second;
    let learned = r.throughput_bytes_per_second.unwrap();
    assert!(
        saved.is_some_and(|s| same_rate(s, learned)),
        "{saved:?} {learned}"
    );
}

fn image_series(m: &Metrics) -> Vec<String> {
    m.render()
        .lines()
        .filter(|l| l.starts_with("prewarm_image_"))
        .map(str::to_string)
        .collect()
}

/// Issue 12: per-image series exist for the desired images only, and go
/// when an image leaves the set; an image someone else pulled has none.
#[tokio::test(start_paused = true)]
async fn image_series_exist_only_for_desired_images() {
    let mut rig = Rig::start(config("images: [reg.test/a:1, reg.test/b:1]\n"));
    let a = rig.image("reg.test/a:1", 1);
    let b = rig.image("reg.test/b:1", 2);
    // Pulled by the kubelet, not wanted by this agent.
    rig.rt.lock().records.insert(
        "reg.test/other:1".into(),
        ImageRecord {
            name: "reg.test/other:1".into(),
            target_digest: "sha256:other".into(),
            labels: Default::default(),
        },
    );
    rig.until("a and b warm", |r| warm_pinned(r, &a) && warm_pinned(r, &b))
        .await;
    let series = image_series(&rig.metrics);
    for want in [
        format!("prewarm_image_warm{{image=\"{a}\"}} 1"),
        format!("prewarm_image_pinned{{image=\"{b}\"}} 1"),
        format!("prewarm_image_bytes{{image=\"{a}\"}} 0"),
    ] {
        assert!(series.contains(&want), "{want} not in {series:?}");
    }
    assert!(
        series.iter().any(|l| l.starts_with(&format!(
            "prewarm_image_last_pull_duration_seconds{{image=\"{a}\"}}"
        ))),
        "{series:?}"
    );
    assert!(series.iter().all(|l| !l.contains("other")), "{series:?}");
    let images: std::collections::BTreeSet<&str> =
        series.iter().filter_map(|l| l.split('"').nth(1)).collect();
    assert_eq!(images.len(), 2, "{images:?}");
    // b leaves the config: its series go.
    rig.cfg.send(config("images: [reg.test/a:1]\n")).unwrap();
    rig.until("b no longer reported", |r| !r.images.contains_key(&b))
        .await;
    let series = image_series(&rig.metrics);
    assert!(series.iter().all(|l| !l.contains(&b)), "{series:?}");
    assert!(series.iter().any(|l| l.contains(&a)), "{series:?}");
    rig.stop().await;
}

fn credentialed(id: &str, image: &str, deadline_unix: i64, with: bool) -> Intent {
    let credentials = match with {
        true => vec![RegistryCredential {
            registry: "reg.test".into(),
            username: "robot".into(),
            password: "pw".into(),
            source: "ns/pull".into(),
            ..Default::default()
        }],
        false => Vec::new(),
    };
    Intent {
        id: id.into(),
        images: vec![image.into()],
        priority: 500,
        deadline_unix,
        nodes: vec!["n1".into()],
        credentials,
        ..Default::default()
    }
}

/// An intent's pull-secret credentials reach the registry client while it
/// applies, and go when its deadline passes or it is no longer sent.
#[tokio::test(start_paused = true)]
async fn workload_credentials_live_as_long_as_their_intent() {
    let mut rig = Rig::start(config(""));
    let a = rig.image("reg.test/a:1", 1);
    let robot = vec![Credential::Basic {
        username: "robot".into(),
        password: "pw".into(),
    }];
    let soon = (base() + chrono::TimeDelta::seconds(60)).timestamp();
    let tx = rig.intents.clone().expect("link up");
    tx.send(IntentSet {
        intents: vec![credentialed("A", &a, soon, true)],
        ..Default::default()
    })
    .unwrap();
    rig.until("a warm", |r| warm_pinned(r, &a)).await;
    assert_eq!(rig.workload.get("reg.test/a"), robot);
    // Past its deadline and hold, a's pin goes: the intent ended before.
    rig.until("a released", |r| !r.images.contains_key(&a))
        .await;
    assert_eq!(rig.workload.repositories(), 0);

    let later = (base() + chrono::TimeDelta::hours(2)).timestamp();
    let b = rig.image("reg.test/b:1", 2);
    let c = rig.image("reg.test/c:1", 3);
    tx.send(IntentSet {
        intents: vec![credentialed("B", &b, later, true)],
        ..Default::default()
    })
    .unwrap();
    rig.until("b warm", |r| warm_pinned(r, &b)).await;
    assert_eq!(rig.workload.get("reg.test/b"), robot);
    // Withdrawn; once the intent replacing it is warm, the loop acted.
    tx.send(IntentSet {
        intents: vec![credentialed("C", &c, later, false)],
        ..Default::default()
    })
    .unwrap();
    rig.until("c warm", |r| warm_pinned(r, &c)).await;
    assert_eq!(rig.workload.repositories(), 0);
    rig.stop().await;
}

/// A coordinator (KEDA) window is planned like a ConfigMap window, reported
/// with its source, and kept when the link goes; a ConfigMap window of the
/// same name wins over it.
#[tokio::test(start_paused = true)]
async fn coordinator_windows_are_planned_kept_offline_and_lose_to_the_configmap() {
    use crate::wire::v1::WindowSpec;
    let mut rig = Rig::start(config(""));
    let k = rig.image("reg.test/k:1", 6);
    let spec = WindowSpec {
        name: "keda-erp-orders-0".into(),
        schedule: "0 10 * * *".into(),
        timezone: "UTC".into(),
        end_schedule: "0 11 * * *".into(),
        images: vec![k.clone()],
        source: "keda:erp/orders#0".into(),
        lead_time_seconds: 3600,
        node_selector: [("pool".to_string(), "int".to_string())].into(),
        ..Default::default()
    };
    let tx = rig.intents.as_ref().expect("link up");
    tx.send(IntentSet {
        windows: vec![spec.clone()],
        ..Default::default()
    })
    .unwrap();
    let r = rig
        .until("the KEDA window warm", |r| {
            warm_pinned(r, &k) && r.windows.contains_key("keda-erp-orders-0")
        })
        .await;
    assert_eq!(r.windows["keda-erp-orders-0"].source, "keda:erp/orders#0");
    assert_eq!(r.windows["keda-erp-orders-0"].phase, "active");
    // The link goes: the last windows received stay planned, through the
    // end at 11:00 into the grace period, the pin held.
    rig.intents = None;
    let r = rig
        .until("the KEDA window in grace", |r| {
            r.windows
                .get("keda-erp-orders-0")
                .is_some_and(|w| w.phase == "grace")
        })
        .await;
    assert!(warm_pinned(&r, &k));
    // A ConfigMap window of the same name replaces it.
    let mine = "windows:\n- {name: keda-erp-orders-0, schedule: '0 20 * * *', duration: 1h, images: [reg.test/k:1]}\n";
    rig.cfg.send(config(mine)).unwrap();
    let r = rig
        .until("the ConfigMap's window", |r| {
            r.windows
                .get("keda-erp-orders-0")
                .is_some_and(|w| w.source == "config")
        })
        .await;
    assert_eq!(r.windows.len(), 1);
    rig.stop().await;
}

/// A window at 12:00 with a 30 min lead: its own plan warms from 11:30.
fn budget_window(jitter: &str) -> Arc<AgentConfig> {
    let text = format!(
        "pacing: {{diskFloor: 0}}\nscheduling: {{intentHold: 10s, startJitter: {jitter}}}\nwindows:\n- {{name: w, schedule: '0 12 * * *', duration: 1h, leadTime: 30m, images: [reg.test/s:1]}}\n"
    );
    Arc::new(AgentConfig::from_yaml(&text).unwrap())
}

fn schedule_at(start: DateTime<Utc>, deadline: DateTime<Utc>) -> IntentSet {
    IntentSet {
        schedules: vec![crate::wire::v1::PullSchedule {
            window: "w".into(),
            registry: "reg.test".into(),
            start_unix: start.timestamp(),
            bytes_per_second: 1 << 20,
            late: false,
            deadline_unix: deadline.timestamp(),
        }],
        ..Default::default()
    }
}

/// Issue 13: a registry budget's schedule holds a window's pulls back
/// until its start, even when that is after the node's own plan.
#[tokio::test(start_paused = true)]
async fn a_schedule_starts_the_window_pulls_at_its_start() {
    let mut rig = Rig::start(budget_window("0s"));
    let s = rig.image("reg.test/s:1", 7);
    let noon = base() + chrono::TimeDelta::hours(2);
    let start = noon - chrono::TimeDelta::minutes(10);
    rig.intents
        .as_ref()
        .unwrap()
        .send(schedule_at(start, noon))
        .unwrap();
    rig.until("s warm", |r| warm_pinned(r, &s)).await;
    let at = base() + chrono::TimeDelta::from_std(rig.t0.elapsed()).unwrap();
    assert!(at >= start, "pulled at {at}, before the scheduled {start}");
    assert!(at - start < chrono::TimeDelta::seconds(2), "pulled at {at}");
    rig.stop().await;
}

/// Without a schedule (or once the link dropped it) the node's own plan
/// applies, moved earlier by its jitter, never later.
#[tokio::test(start_paused = true)]
async fn without_a_schedule_the_jittered_local_plan_applies() {
    let mut rig = Rig::start(budget_window("10m"));
    let s = rig.image("reg.test/s:1", 8);
    let noon = base() + chrono::TimeDelta::hours(2);
    let local = noon - chrono::TimeDelta::minutes(30);
    let j = crate::plan::pull_start::jitter("n1", "w", noon, Duration::from_secs(600));
    assert!(
        j > Duration::from_secs(1),
        "a jitter this test can see: {j:?}"
    );
    let expected = local - chrono::TimeDelta::from_std(j).unwrap();
    // A schedule arrives, then the link drops it before its start.
    let tx = rig.intents.as_ref().unwrap();
    tx.send(schedule_at(noon - chrono::TimeDelta::minutes(5), noon))
        .unwrap();
    tx.send(IntentSet::default()).unwrap();
    rig.until("s warm", |r| warm_pinned(r, &s)).await;
    let at = base() + chrono::TimeDelta::from_std(rig.t0.elapsed()).unwrap();
    assert!(at >= expected, "pulled at {at}, expected {expected}");
    assert!(
        at - expected < chrono::TimeDelta::seconds(2),
        "pulled at {at}, expected {expected}"
    );
    rig.stop().await;
}
