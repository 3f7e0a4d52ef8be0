//! The registry is down when a window's warm-up starts: the agent keeps
//! retrying with backoff, the window opens late (counted once, with the
//! failure reason on the pull failures), and it is warm once the registry
//! is back. Every wait is on observable state (the proxy's counters, the
//! agent's /metrics); the timeouts are only a safety net.

use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use prewarm::k8s::Labels;
use prewarm::node::containerd::Containerd;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

use crate::common::{metric, wait_until, Upstream, MIB};

const LATE: &str = "prewarm_window_late_total{window=\"nightly\"}";
const WARM: &str = "prewarm_window_warm{window=\"nightly\"}";
const PHASE_LATE: &str = "prewarm_window_phase{phase=\"late\",window=\"nightly\"}";
const TRANSPORT: &str = "prewarm_pull_failures_total{reason=\"transport\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_at_warm_up_makes_the_window_late_then_warm() {
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let image = up.image("shapes/large");
    up.proxy.refuse_connections(true);

    // Opens 8 s from now, for five minutes; warming starts 6 s before.
    let opens = (Utc::now() + chrono::Duration::seconds(8))
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
pacing:
  diskFloor: 0
  retry: {{ attempts: 3, initialBackoff: 200ms, maxBackoff: 1s }}
resync: 2s
windows:
  - name: nightly
    schedule: "{schedule}"
    timezone: UTC
    duration: 5m
    leadTime: 6s
    images: ["{image}"]
"#,
            sock = ctd.socket.display(),
            root = ctd.root.display(),
            hosts = ctd.hosts_dir.display(),
        ),
    )
    .unwrap();

    let cancel = CancellationToken::new();
    let down_since = Instant::now();
    let agent = crate::common::start_agent(path, "node-a", Some(Labels::new()), &cancel).await;
    let addr = agent.addr;
    let limit = Duration::from_secs(45);

    // The warm-up fails on the registry, then the window opens late.
    wait_until("a pull failing on the down registry", limit, async || {
        metric(addr, TRANSPORT).await.unwrap_or(0.0) >= 1.0
    })
    .await;
    wait_until("the window to be reported late", limit, async || {
        metric(addr, LATE).await == Some(1.0)
    })
    .await;
    assert_eq!(metric(addr, PHASE_LATE).await, Some(1.0));
    assert_eq!(metric(addr, WARM).await, Some(0.0));
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    assert!(store.image_status(&image).await.unwrap().is_none());

    // Retried all along, with backoff: attempts are spaced, not a spin.
    let down_for = down_since.elapsed();
    let tries = up.proxy.refused();
    let most = 2 + (down_for.as_millis() / 100) as u64;
    assert!(
        (2..=most).contains(&tries),
        "{tries} connection attempts in {down_for:?} (expected 2..={most})"
    );

    // The registry comes back: warm and pinned within the window.
    up.proxy.refuse_connections(false);
    wait_until("the window to be warm", limit, async || {
        metric(addr, WARM).await == Some(1.0)
    })
    .await;
    let st = store
        .image_status(&image)
        .await
        .unwrap()
        .expect("image present");
    assert!(st.pinned, "window images are pinned");
    assert_eq!(metric(addr, LATE).await, Some(1.0), "late counted once");
    assert!(metric(addr, TRANSPORT).await.unwrap_or(0.0) >= 1.0);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent.join())
        .await
        .expect("agent stops on cancel");
}
