//! Engine behaviour against the in-memory fakes: dedupe, resume, retry
//! classes, the disk floor, pinning and cancellation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::reference::ImageRef;
use crate::config::units::{ByteSize, DiskFloor};
use crate::config::{Pacing, RetryPolicy};
use crate::node::fake::{BlobFault, FakeDisk, FakeRegistry, FakeRuntime};
use crate::node::leases;
use crate::node::manifest::host_platform;
use crate::node::pace::DiskUsage;
use crate::node::pin;
use crate::node::pull::{Engine, NoopObserver, PullError, PullObserver, PullOptions};
use crate::node::runtime::{ImageStore, CRI_PINNED_LABEL, PREWARM_PINNED_LABEL};
use crate::node::test_rig::Fakes;

fn layer(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

fn pacing() -> Pacing {
    Pacing {
        retry: RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        disk_floor: DiskFloor::Bytes(0),
        ..Pacing::default()
    }
}

struct Rig {
    reg: FakeRegistry,
    rt: FakeRuntime,
    disk: Arc<FakeDisk>,
    engine: Engine,
}

fn rig_with(version: &str, pacing: Pacing) -> Rig {
    rig_observed(version, pacing, Arc::new(NoopObserver))
}

fn rig_observed(version: &str, pacing: Pacing, observer: Arc<dyn PullObserver>) -> Rig {
    let fakes = Fakes::new(version);
    let engine = fakes.engine(pacing, observer);
    let Fakes { reg, rt, disk } = fakes;
    Rig {
        reg,
        rt,
        disk,
        engine,
    }
}

fn rig() -> Rig {
    rig_with("1.7.24", pacing())
}

impl Rig {
    /// Registers an image in both the registry and the fake CRI's catalog.
    fn image(&self, name_tag: &str, layers: &[Bytes]) -> ImageRef {
        let (digest, config, blobs) = self.reg.add_image(name_tag, layers);
        self.rt
            .catalog
            .lock()
            .unwrap()
            .insert(name_tag.to_string(), (digest, config, blobs));
        name_tag.parse().unwrap()
    }
}

fn opts(pin: bool) -> PullOptions {
    PullOptions {
        pin,
        platform: host_platform(),
        cri_timeout: Duration::from_secs(30),
        priority: 0,
        bandwidth: None,
    }
}

#[tokio::test]
async fn warms_then_second_pull_moves_nothing() {
    let r = rig();
    let img = r.image("reg.test/app:1", &[layer(1, 300_000), layer(2, 5_000)]);
    let out = r
        .engine
        .warm(&img, &opts(true), &CancellationToken::new())
        .await
        .unwrap();
    assert!(!out.already_present);
    assert_eq!(
        out.fetched_bytes,
        305_000
            + r.reg
                .blobs
                .lock()
                .unwrap()
                .values()
                .map(|b| b.len() as u64)
                .min()
                .unwrap()
    );
    assert!(out.pinned);
    assert_eq!(r.rt.lock().cri_pulls, vec!["reg.test/app:1"]);
    assert!(r.rt.lock().leases.is_empty(), "lease must be released");

    let served = *r.reg.blob_bytes_served.lock().unwrap();
    let again = r
        .engine
        .warm(&img, &opts(true), &CancellationToken::new())
        .await
        .unwrap();
    assert!(again.already_present);
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(*r.reg.blob_bytes_served.lock().unwrap(), served);
    assert_eq!(r.rt.lock().cri_pulls.len(), 1);
}

#[tokio::test]
async fn shared_layers_are_fetched_once_across_concurrent_pulls() {
    let r = rig();
    let base = layer(9, 400_000);
    let a = r.image("reg.test/a:1", &[base.clone(), layer(1, 1000)]);
    let b = r.image("reg.test/b:1", &[base.clone(), layer(2, 1000)]);
    let c = CancellationToken::new();
    let o = opts(false);
    let (ra, rb) = tokio::join!(r.engine.warm(&a, &o, &c), r.engine.warm(&b, &o, &c));
    ra.unwrap();
    rb.unwrap();
    let base_digest = crate::node::registry::sha256_hex(&base);
    let reqs = r.reg.blob_requests.lock().unwrap();
    assert_eq!(
        reqs.iter().filter(|(d, _)| *d == base_digest).count(),
        1,
        "{reqs:?}"
    );
}

#[tokio::test]
async fn truncated_blob_resumes_from_offset() {
    let r = rig();
    let big = layer(3, 500_000);
    let img = r.image("reg.test/t:1", std::slice::from_ref(&big));
    let d = crate::node::registry::sha256_hex(&big);
    r.reg.fault(&d, BlobFault::Truncate(200_000));
    let out = r
        .engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    let reqs: Vec<_> = r
        .reg
        .blob_requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(x, _)| *x == d)
        .cloned()
        .collect();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].1, 200_000, "second request resumes");
    assert!(out.fetched_bytes >= 500_000);
}

#[tokio::test]
async fn server_errors_retry_but_not_found_does_not() {
    let r = rig();
    let l = layer(4, 1000);
    let img = r.image("reg.test/s:1", std::slice::from_ref(&l));
    let d = crate::node::registry::sha256_hex(&l);
    r.reg.fault(&d, BlobFault::Status(503, None));
    r.reg.fault(&d, BlobFault::Status(429, Some(0)));
    r.engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        r.reg
            .blob_requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(x, _)| *x == d)
            .count(),
        3
    );

    let missing: ImageRef = "reg.test/nope:1".parse().unwrap();
    let err = r
        .engine
        .warm(&missing, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "not_found", "{err}");
}

#[tokio::test]
async fn gives_up_after_attempts() {
    let r = rig();
    let l = layer(5, 1000);
    let img = r.image("reg.test/g:1", std::slice::from_ref(&l));
    let d = crate::node::registry::sha256_hex(&l);
    for _ in 0..10 {
        r.reg.fault(&d, BlobFault::Status(500, None));
    }
    let err = r
        .engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "http");
    assert_eq!(
        r.reg
            .blob_requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(x, _)| *x == d)
            .count(),
        4
    );
    assert!(r.rt.lock().leases.is_empty(), "lease released on failure");
}

#[tokio::test]
async fn disk_floor_refuses_before_fetching() {
    let mut p = pacing();
    p.disk_floor = DiskFloor::Bytes(1_000_000);
    let r = rig_with("1.7.24", p);
    let img = r.image("reg.test/d:1", &[layer(6, 400_000)]);
    *r.disk.0.lock().unwrap() = DiskUsage {
        free: 1_500_000,
        total: 10_000_000,
    };
    let err = r
        .engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Disk { .. }), "{err}");
    assert!(err.to_string().contains("disk below floor"), "{err}");
    assert!(r.reg.blob_requests.lock().unwrap().is_empty());
}

/// Another writer: fills the disk once the download has begun.
struct FillDiskOnBytes(Mutex<Option<Arc<FakeDisk>>>);

impl PullObserver for FillDiskOnBytes {
    fn bytes(&self, _image: &str, _n: u64) {
        if let Some(disk) = self.0.lock().unwrap().as_ref() {
            disk.0.lock().unwrap().free = 1_000;
        }
    }
}

#[tokio::test]
async fn disk_filling_up_mid_download_stops_and_frees_the_ingest() {
    let mut p = pacing();
    p.disk_floor = DiskFloor::Bytes(1_000_000);
    let filler = Arc::new(FillDiskOnBytes(Mutex::new(None)));
    let r = rig_observed("1.7.24", p, filler.clone());
    *filler.0.lock().unwrap() = Some(r.disk.clone());
    let img = r.image("reg.test/f:1", &[layer(13, 12 << 20)]);
    let err = r
        .engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "disk_floor", "{err}");
    let st = r.rt.lock();
    assert!(st.ingests.is_empty(), "partial blob kept");
    assert!(st.leases.is_empty(), "{:?}", st.leases);
    assert!(st.cri_pulls.is_empty(), "{:?}", st.cri_pulls);
}

#[tokio::test]
async fn runtime_without_pin_support_reports_unpinned() {
    let r = rig_with("1.6.20", pacing());
    let img = r.image("reg.test/p:1", &[layer(7, 100)]);
    let out = r
        .engine
        .warm(&img, &opts(true), &CancellationToken::new())
        .await
        .unwrap();
    assert!(!out.pinned);
}

#[tokio::test]
async fn cri_restart_is_retried() {
    let r = rig();
    let img = r.image("reg.test/c:1", &[layer(8, 100)]);
    r.rt.lock().fail_cri_pulls = 2;
    r.engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.rt.lock().cri_pulls.len(), 1);
}

/// Cancels the moment blob bytes first arrive: lands mid-download
/// whatever the machine's speed.
struct CancelOnBytes(CancellationToken);

impl PullObserver for CancelOnBytes {
    fn bytes(&self, _image: &str, _n: u64) {
        self.0.cancel();
    }
}

#[tokio::test]
async fn cancellation_stops_and_releases() {
    let mut p = pacing();
    p.bandwidth = ByteSize(50_000);
    let cancel = CancellationToken::new();
    let r = rig_observed("1.7.24", p, Arc::new(CancelOnBytes(cancel.clone())));
    let img = r.image("reg.test/x:1", &[layer(9, 2_000_000)]);
    let err = r
        .engine
        .warm(&img, &opts(false), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "cancelled");
    let st = r.rt.lock();
    assert_eq!(
        st.deleted_leases.len(),
        1,
        "the pull's one lease is released: {:?}",
        st.deleted_leases
    );
    assert!(st.leases.is_empty(), "lease left behind: {:?}", st.leases);
    // CRI PullImage starts beside the download and is cancelled with it:
    // nothing was recorded or unpacked.
    assert!(st.records.is_empty(), "{:?}", st.records);
    assert!(st.unpacked.is_empty(), "{:?}", st.unpacked);
}

/// A dead agent's lease is handed over at start and released by the first
/// pull to settle, not kept for its hour.
#[tokio::test]
async fn leases_a_dead_agent_left_go_once_pulls_settle() {
    let r = rig();
    let img = r.image("reg.test/h:1", &[layer(12, 300_000)]);
    {
        let mut st = r.rt.lock();
        st.leases.insert("prewarm-dead".into(), vec![]);
        st.lease_labels.insert(
            "prewarm-dead".into(),
            [
                (
                    leases::OWNER_LABEL.to_string(),
                    leases::OWNER_AGENT.to_string(),
                ),
                (leases::INSTANCE_LABEL.to_string(), "dead".to_string()),
            ]
            .into(),
        );
    }
    let n = leases::adopt_leftovers(&r.rt, r.engine.leftovers(), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(n, 1);
    let handover = r.engine.leftovers().handover().expect("handover lease");
    r.engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    let st = r.rt.lock();
    assert!(st.leases.is_empty(), "leases left: {:?}", st.leases);
    assert!(
        st.deleted_leases.contains(&handover.0),
        "{:?}",
        st.deleted_leases
    );
}

#[tokio::test]
async fn index_picks_platform_or_explains() {
    let r = rig();
    let (amd, cfg, blobs) = r.reg.add_image("reg.test/m:amd", &[layer(10, 100)]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
        {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{amd}","size":1,"platform":{{"os":"linux","architecture":"{}"}}}}]}}"#,
        host_platform().architecture
    );
    let top = r.reg.add_manifest(
        "reg.test/m:1",
        crate::node::manifest::OCI_INDEX,
        Bytes::from(index),
    );
    r.rt.catalog
        .lock()
        .unwrap()
        .insert("reg.test/m:1".into(), (top.clone(), cfg, blobs));
    let img: ImageRef = "reg.test/m:1".parse().unwrap();
    let out = r
        .engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.digest, top);

    let mut o = opts(false);
    o.platform.architecture = "riscv64".into();
    let other: ImageRef = "reg.test/m:1".parse().unwrap();
    r.rt.lock().records.clear();
    let err = r
        .engine
        .warm(&other, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no manifest for platform linux/riscv64"),
        "{err}"
    );
}

#[tokio::test]
async fn never_unpins_what_others_pinned() {
    let r = rig();
    let img = r.image("reg.test/o:1", &[layer(11, 100)]);
    r.engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    // Someone else pins the tag record.
    r.rt.set_labels("reg.test/o:1", &[(CRI_PINNED_LABEL, Some("pinned"))])
        .await
        .unwrap();
    let st = r.rt.image_status("reg.test/o:1").await.unwrap().unwrap();
    assert!(pin::pin(&r.rt, &st).await.unwrap());
    let ours = pin::pinned_by_us(&r.rt).await.unwrap();
    assert!(
        ours.iter().all(|rec| rec.name != "reg.test/o:1"),
        "{ours:?}"
    );
    for rec in &ours {
        pin::unpin_record(&r.rt, rec).await.unwrap();
    }
    let tag = r.rt.lock().records.get("reg.test/o:1").cloned().unwrap();
    assert_eq!(
        tag.labels.get(CRI_PINNED_LABEL).map(String::as_str),
        Some("pinned")
    );
    assert!(!tag.labels.contains_key(PREWARM_PINNED_LABEL));
    assert!(pin::pinned_by_us(&r.rt).await.unwrap().is_empty());
}

/// Warms `img` in a task of its own.
fn spawn_warm(
    engine: Engine,
    img: &ImageRef,
    o: PullOptions,
) -> tokio::task::JoinHandle<Result<crate::node::pull::PullOutcome, PullError>> {
    let img = img.clone();
    tokio::spawn(async move { engine.warm(&img, &o, &CancellationToken::new()).await })
}

/// Polls (in paused time) until `cond` holds; panics with `what` otherwise.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn cri_pull_starts_while_a_layer_is_still_downloading() {
    let r = rig();
    let slow = layer(2, 400_000);
    let img = r.image("reg.test/app:1", &[layer(1, 300_000), slow.clone()]);
    let gate = Arc::new(tokio::sync::Notify::new());
    let slow_digest = crate::node::registry::sha256_hex(&slow);
    r.reg.fault(&slow_digest, BlobFault::Gate(gate.clone()));
    let warm = spawn_warm(r.engine, &img, opts(false));
    // containerd unpacks the first layer while the second still arrives.
    eventually("CRI PullImage while a layer is held mid-download", || {
        !r.rt.lock().present_at_cri_pull.is_empty()
    })
    .await;
    let present = r.rt.lock().present_at_cri_pull[0];
    assert!(present < 3, "CRI saw {present} of 3 blobs: it started late");
    gate.notify_one();
    let out = warm.await.unwrap().unwrap();
    assert!(!out.already_present);
    assert_eq!(r.rt.lock().cri_pulls, vec!["reg.test/app:1"]);
}

#[tokio::test(start_paused = true)]
async fn cri_timeout_counts_from_the_last_blob_not_from_the_early_start() {
    let r = rig();
    let slow = layer(2, 400_000);
    let img = r.image("reg.test/app:1", std::slice::from_ref(&slow));
    let gate = Arc::new(tokio::sync::Notify::new());
    r.reg.fault(
        &crate::node::registry::sha256_hex(&slow),
        BlobFault::Gate(gate.clone()),
    );
    let mut o = opts(false);
    o.cri_timeout = Duration::from_secs(1);
    let warm = spawn_warm(r.engine, &img, o);
    eventually("CRI PullImage started", || {
        !r.rt.lock().present_at_cri_pull.is_empty()
    })
    .await;
    // Ten times the CRI budget passes while the download is held.
    tokio::time::sleep(Duration::from_secs(10)).await;
    gate.notify_one();
    warm.await.unwrap().unwrap();
    assert_eq!(
        r.rt.lock().cri_pulls.len(),
        1,
        "one CRI attempt, no timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn blob_another_client_is_writing_is_waited_for_not_fetched_twice() {
    let r = rig();
    let theirs = layer(3, 500_000);
    let img = r.image("reg.test/app:1", &[layer(1, 1000), theirs.clone()]);
    let digest = crate::node::registry::sha256_hex(&theirs);
    // A kubelet's CRI pull is already writing that layer.
    r.rt.hold(&digest);
    let warm = spawn_warm(r.engine, &img, opts(false));
    eventually("our CRI pull to start beside the other writer", || {
        !r.rt.lock().present_at_cri_pull.is_empty()
    })
    .await;
    r.rt.finish_held(&digest, theirs);
    let out = warm.await.unwrap().unwrap();
    let reqs = r.reg.blob_requests.lock().unwrap().clone();
    assert!(
        reqs.iter().all(|(d, _)| *d != digest),
        "fetched a blob another client was writing: {reqs:?}"
    );
    assert_eq!(out.fetched_bytes, 1000 + config_len(&r.rt, &r.reg, &img));
}

fn config_len(rt: &FakeRuntime, reg: &FakeRegistry, img: &ImageRef) -> u64 {
    let (_, config, _) = rt.catalog.lock().unwrap()[&img.to_string()].clone();
    reg.blobs.lock().unwrap()[&config].len() as u64
}

#[tokio::test]
async fn blobs_are_written_under_containerds_own_ingest_refs() {
    let r = rig();
    let img = r.image("reg.test/app:1", &[layer(1, 1000)]);
    r.engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    let (top, config, blobs) = r.rt.catalog.lock().unwrap()["reg.test/app:1"].clone();
    let refs = r.rt.lock().ingest_refs.clone();
    assert!(refs.contains(&format!("manifest-{top}")), "{refs:?}");
    assert!(refs.contains(&format!("config-{config}")), "{refs:?}");
    let layer = blobs.iter().find(|b| **b != config).unwrap();
    assert!(refs.contains(&format!("layer-{layer}")), "{refs:?}");
}

#[tokio::test(start_paused = true)]
async fn without_early_cri_the_pull_waits_for_every_blob() {
    let r = rig();
    let img = r.image("reg.test/app:1", &[layer(1, 300_000), layer(2, 400_000)]);
    let engine = r.engine.with_early_cri(false);
    engine
        .warm(&img, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.rt.lock().present_at_cri_pull, vec![3]);
}
