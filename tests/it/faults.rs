//! Bad input and failures get clear errors, retries where they help, and
//! never a crash or a leaked lease.

use std::time::{Duration, Instant};

use prewarm::config::reference::ImageRef;
use prewarm::config::units::DiskFloor;
use prewarm::node::setup;
use prewarm::testkit::containerd::Version;
use prewarm::testkit::faultproxy::{Fault, Rule};
use tokio_util::sync::CancellationToken;

use crate::common::{
    hold_first_get, ingest_offset, large_layer, opts, range_starts, Node, Upstream, MIB,
};

fn large_layer_path(up: &Upstream) -> String {
    format!("/blobs/{}", large_layer(up).0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_is_resumed() {
    let up = Upstream::start(None, 8 * MIB).await;
    let node = Node::start(Version::V2, |_| {}).await;
    let path = large_layer_path(&up);
    up.proxy
        .add(Rule::new(path.clone(), Fault::TruncateBody { after: 3 * MIB }).times(1));
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let out = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert!(node.status(&image.to_string()).await.is_some());
    assert_eq!(up.proxy.hits(&path), 2, "{:?}", up.proxy.request_log());
    assert!(out.fetched_bytes >= 3 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_and_manifest_fail_without_retry() {
    let up = Upstream::start(None, 2 * MIB).await;
    let node = Node::start(Version::V2, |_| {}).await;
    let path = large_layer_path(&up);
    up.proxy.add(Rule::new(path.clone(), Fault::CorruptBody));
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let err = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "digest_mismatch", "{err}");
    assert_eq!(
        up.proxy.hits(&path),
        1,
        "digest mismatch must not be retried"
    );
    assert!(node.our_leases().await.is_empty());

    up.proxy.clear();
    up.proxy
        .add(Rule::new("/manifests/v1", Fault::CorruptBody).method("GET"));
    let image: ImageRef = up.image("shapes/zstd").parse().unwrap();
    let err = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "digest_mismatch", "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_are_retried() {
    let up = Upstream::start(None, 2 * MIB).await;
    // Retry-After is honoured up to maxBackoff: leave room for 1 s.
    let node = Node::start(Version::V17, |c| {
        c.pacing.retry.max_backoff = Duration::from_secs(2)
    })
    .await;
    let path = large_layer_path(&up);
    up.proxy.add(
        Rule::new(
            path.clone(),
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        )
        .times(2),
    );
    up.proxy.add(
        Rule::new(
            path.clone(),
            Fault::Status {
                code: 429,
                retry_after: Some(1),
            },
        )
        .times(1),
    );
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let started = Instant::now();
    node.stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(up.proxy.hits(&path), 4);
    // Retry-After: 1 was honoured (a lower bound only; slowness is no bug).
    assert!(started.elapsed() >= Duration::from_secs(1));

    up.proxy.add(
        Rule::new(
            "/manifests/",
            Fault::Status {
                code: 404,
                retry_after: None,
            },
        )
        .method("HEAD"),
    );
    up.proxy.add(
        Rule::new(
            "/manifests/",
            Fault::Status {
                code: 404,
                retry_after: None,
            },
        )
        .method("GET"),
    );
    let missing: ImageRef = up.image("shapes/docker").parse().unwrap();
    up.proxy.reset_counters();
    let err = node
        .stack
        .engine
        .warm(&missing, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "not_found", "{err}");
    assert_eq!(
        up.proxy.requests(),
        1,
        "404 is not retried: {:?}",
        up.proxy.request_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_registry_host_is_a_clear_error() {
    let node = Node::start(Version::V2, |_| {}).await;
    let image: ImageRef = "no-such-registry.invalid/team/app:1".parse().unwrap();
    let err = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err.reason(), "unknown_host"), "{err}");
    assert!(
        err.to_string().contains("no-such-registry.invalid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_socket_is_a_clear_error() {
    let mut cfg = prewarm::config::AgentConfig::default();
    cfg.runtime.socket = "/nonexistent/containerd.sock".into();
    let err = setup::connect(&cfg, std::sync::Arc::new(prewarm::node::pull::NoopObserver))
        .await
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/containerd.sock") && text.contains("no such socket"),
        "{text}"
    );
}

/// containerd restarted while the big blob is half in its content store:
/// the pull resumes from what containerd kept (a Range request) and ends
/// with the image. The hold makes "mid-pull" a hand-shake, not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_mid_pull_is_survived() {
    let up = Upstream::start(None, 24 * MIB).await;
    let mut node = Node::start(Version::V2, |c| c.pacing.retry.attempts = 20).await;
    let (digest, size) = large_layer(&up);
    let hold = hold_first_get(&up, &digest, 8 * MIB);
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let engine = node.stack.engine.clone();
    let img2 = image.clone();
    let pull = tokio::spawn(async move {
        engine
            .warm(&img2, &opts(false), &CancellationToken::new())
            .await
    });
    tokio::time::timeout(Duration::from_secs(60), hold.reached())
        .await
        .expect("the pull never got 8 MiB into the big blob");
    let written = ingest_offset(&node.stack.containerd, &digest).await;
    node.ctd.restart().await.unwrap();
    hold.release();
    let out = pull
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("pull did not survive the restart: {e}"));
    assert!(out.fetched_bytes > 0);
    assert!(node.status(&image.to_string()).await.is_some());
    // Resumed from containerd's offset, not from the start.
    let starts = range_starts(&up.proxy, &digest);
    assert!(
        starts
            .iter()
            .any(|s| *s >= written && *s <= hold.after() as u64 && *s < size),
        "no resume from {written}..={} bytes: ranges {:?}, requests {:?}",
        hold.after(),
        up.proxy.ranges(&digest),
        up.proxy.request_log()
    );
    assert!(node.our_leases().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_below_floor_refuses_before_fetching() {
    let up = Upstream::start(None, 2 * MIB).await;
    let node = Node::start(Version::V17, |c| {
        c.pacing.disk_floor = DiskFloor::Percent(99.9)
    })
    .await;
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    up.proxy.reset_counters();
    let err = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "disk_floor", "{err}");
    assert!(err.to_string().contains("disk below floor"), "{err}");
    assert_eq!(up.proxy.hits("/blobs/"), 0);
}

/// Cancelled while its lease holds half a blob (a hand-shake, not a
/// timer): the pull says so and its lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pull_releases_its_lease() {
    let up = Upstream::start(None, 16 * MIB).await;
    let node = Node::start(Version::V17, |_| {}).await;
    let (digest, _) = large_layer(&up);
    let hold = hold_first_get(&up, &digest, 4 * MIB);
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let cancel = CancellationToken::new();
    let o = opts(false);
    let pull = node.stack.engine.warm(&image, &o, &cancel);
    let mid_pull = async {
        hold.reached().await;
        let leases = node.our_leases().await;
        cancel.cancel();
        leases
    };
    let (result, during) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(pull, mid_pull)
    })
    .await
    .expect("the pull never reached the hold point");
    hold.release();
    let err = result.unwrap_err();
    assert_eq!(during.len(), 1, "one lease while mid-blob: {during:?}");
    assert_eq!(err.reason(), "cancelled", "{err}");
    assert!(
        node.our_leases().await.is_empty(),
        "lease leaked after cancel"
    );
}
