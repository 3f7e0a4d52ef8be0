//! KEDA cron windows end to end on loopback: a ScaledObject in the
//! in-memory API server, the coordinator's KEDA loop, the link, and the
//! real agent on a real containerd, which warms the target's image before
//! the cron window opens and reports the window with its source.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Timelike, Utc};
use prewarm::coordinator::keda::{self, KedaConfig};
use prewarm::testkit::apiserver::MockApi;
use prewarm::testkit::containerd::Version;

use crate::link::{status, wait_for, wait_present, Rig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_objects_cron_window_is_warm_before_it_opens() {
    let rig = Rig::start(Version::V17).await;
    let image = rig.up.image("shapes/docker");

    // KEDA's cron takes minutes: the window opens at a whole minute 3 to 4
    // minutes from now (UTC) and lasts five; its lead time of 1h means
    // warming is due at once.
    let opens = (Utc::now() + chrono::Duration::minutes(4))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let ends = opens + chrono::Duration::minutes(5);
    let cron = |t: chrono::DateTime<Utc>| t.format("%M %H %d %m *").to_string();
    let api = MockApi::new();
    api.put(
        "apis/apps/v1/deployments",
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "orders-sync", "namespace": "integrations"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "orders-sync"}},
                "template": {"metadata": {"labels": {"app": "orders-sync"}},
                    "spec": {"nodeSelector": {"kubernetes.azure.com/agentpool": "integrations"},
                        "containers": [{"name": "app", "image": image}]}}}}),
    );
    api.put(
        "apis/keda.sh/v1alpha1/scaledobjects",
        serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "orders-sync", "namespace": "integrations",
                "annotations": {"prewarm.dev/lead-time": "1h"}},
            "spec": {"scaleTargetRef": {"name": "orders-sync"}, "minReplicaCount": 0,
                "triggers": [{"type": "cron", "metadata": {"timezone": "UTC",
                    "start": cron(opens), "end": cron(ends), "desiredReplicas": "2"}}]}}),
    );
    let cfg = KedaConfig {
        namespaces: vec!["integrations".into()],
        debounce: Duration::from_millis(100),
        ..KedaConfig::default()
    };
    let state = rig.coord.state.clone();
    tokio::spawn(keda::run(
        api.coordinator_client(),
        state.clone(),
        cfg,
        rig.cancel.clone(),
    ));

    // The coordinator derives node-a's window; the agent warms its image.
    let source = "keda:integrations/orders-sync#0";
    wait_for("node-a's KEDA window", 30, || {
        state
            .windows
            .borrow()
            .get("node-a")
            .is_some_and(|w| w.iter().any(|w| w.source == source))
    })
    .await;
    wait_present(
        &rig.store,
        &image,
        "the ScaledObject's image was not warmed",
    )
    .await;
    assert!(
        Utc::now() < opens,
        "warm only at {} but the window opened at {opens}",
        Utc::now()
    );
    // The agent reports the window, warm, with where it came from.
    let st = Arc::clone(&state);
    wait_for("node-a reporting the window warm", 30, || {
        st.view().node("node-a").is_some_and(|n| {
            n.windows
                .get("keda-integrations-orders-sync-0")
                .is_some_and(|w| w.warm && w.source == source && w.phase == "warming")
        })
    })
    .await;
    let text = status(rig.coord.http_addr);
    let row = text
        .lines()
        .find(|l| l.starts_with("keda-integrations-orders-sync-0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(source) && row.contains("node-a"), "{row}");
    assert!(api.forbidden().is_empty(), "{:?}", api.forbidden());
    rig.stop().await;
}
