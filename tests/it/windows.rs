//! Activation windows end to end: a window opening ~30 s from now is warm
//! and pinned before it opens on a real containerd, unpinned after its end
//! plus grace, and a window for another node pool never pulls anything.

use std::time::Duration;

use chrono::{Timelike, Utc};
use prewarm::node::containerd::Containerd;
use prewarm::node::pin;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

use crate::common::{metric, Upstream, MIB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_is_warm_before_it_opens_and_unpinned_after() {
    let up = Upstream::start(None, 8 * MIB).await;
    let ctd = TestContainerd::start(Version::V17).await.unwrap();
    let ours = up.image("shapes/large");
    let other_pool = up.image("shapes/zstd");

    // A one-off window 30 s from now (6-field cron with seconds, UTC).
    let opens = (Utc::now() + chrono::Duration::seconds(30))
        .with_nanosecond(0)
        .unwrap();
    let schedule = opens.format("%S %M %H %d %m *").to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            r#"runtime: {{ socket: {sock}, root: {root} }}
registry: {{ dockerConfig: [], hostsDir: {hosts} }}
pacing: {{ diskFloor: 0 }}
resync: 5m
# Warming must start at the lead time exactly, not up to a jitter earlier.
scheduling: {{ startJitter: 0s }}
windows:
  - name: erp-sync
    schedule: "{schedule}"
    timezone: UTC
    duration: 6s
    leadTime: 15s
    grace: 3s
    nodeSelector: {{ kubernetes.azure.com/agentpool: integrations }}
    images: ["{ours}"]
  - name: other-pool
    schedule: "{schedule}"
    duration: 6s
    leadTime: 15s
    nodeSelector: {{ kubernetes.azure.com/agentpool: batch }}
    images: ["{other_pool}"]
"#,
            sock = ctd.socket.display(),
            root = ctd.root.display(),
            hosts = ctd.hosts_dir.display(),
        ),
    )
    .unwrap();

    let cancel = CancellationToken::new();
    let labels = prewarm::k8s::parse_labels("kubernetes.azure.com/agentpool=integrations").unwrap();
    let agent = crate::common::start_agent(path, "aks-integrations-0", Some(labels), &cancel).await;
    let addr = agent.addr;
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();

    // Not yet: warming starts 15 s before the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        store.image_status(&ours).await.unwrap().is_none(),
        "warmed before its lead time"
    );
    let next = metric(
        addr,
        "prewarm_window_next_activation_timestamp_seconds{window=\"erp-sync\"}",
    )
    .await;
    assert_eq!(next, Some(opens.timestamp() as f64));

    // Warm and pinned before it opens.
    loop {
        let st = store.image_status(&ours).await.unwrap();
        if st.as_ref().is_some_and(|s| s.pinned) {
            break;
        }
        assert!(
            Utc::now() < opens,
            "window opened before its image was warm and pinned"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(Utc::now() < opens);
    // Unpacked for the CRI snapshotter, not just recorded.
    let (_, _, built) = up
        .corpus
        .iter()
        .find(|(r, _, _)| r.ends_with("shapes/large"))
        .unwrap();
    let chain = crate::common::chain_id(&built.images()[0].diff_ids);
    assert!(
        store.snapshot_exists("overlayfs", &chain).await.unwrap(),
        "not unpacked"
    );
    // The metric catches up on the next reconcile after the pull.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        metric(addr, "prewarm_window_warm{window=\"erp-sync\"}").await,
        Some(1.0)
    );
    let lead = metric(addr, "prewarm_window_lead_seconds{window=\"erp-sync\"}")
        .await
        .unwrap();
    assert!(lead > 0.0, "lead {lead}");

    // After the end (6 s) plus grace (3 s): unpinned, but never deleted.
    let deadline = opens + chrono::Duration::seconds(40);
    loop {
        let pinned = pin::pinned_by_us(&store).await.unwrap();
        if pinned.is_empty() {
            break;
        }
        assert!(
            Utc::now() < deadline,
            "still pinned long after the window: {pinned:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        Utc::now() >= opens + chrono::Duration::seconds(9),
        "unpinned before end + grace"
    );
    assert!(
        store.image_status(&ours).await.unwrap().is_some(),
        "prewarm must never delete images"
    );
    // Exported from the start, and never counted: the window was warm.
    assert_eq!(
        metric(addr, "prewarm_window_late_total{window=\"erp-sync\"}").await,
        Some(0.0)
    );

    // The other pool's window never pulled on this node.
    assert!(store.image_status(&other_pool).await.unwrap().is_none());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent.join())
        .await
        .unwrap();
}
