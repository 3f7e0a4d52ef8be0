//! The KEDA window loop against the in-memory API server: opted-in
//! ScaledObjects become windows for the nodes their target can land on,
//! with the coordinator's own RBAC; a missing CRD is looked for slowly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::plan::view::POOL_LABEL;
use crate::testkit::apiserver::MockApi;
use crate::wire::v1::{Snapshot, WindowSpec};

const SCALED: &str = "apis/keda.sh/v1alpha1/scaledobjects";
const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
const NAMESPACES: &str = "api/v1/namespaces";
const WAIT: Duration = Duration::from_secs(10);

fn snap(node: &str, pool: &str) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [(POOL_LABEL.to_string(), pool.to_string())]
            .into_iter()
            .collect(),
        seq: 1,
        ..Default::default()
    }
}

fn deployment(ns: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"nodeSelector": {POOL_LABEL: "integrations"},
                                          "containers": [{"name": "app", "image": image}]}}}})
}

fn scaled_object(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": {"name": name, "namespace": ns, "labels": labels,
                        "annotations": {"prewarm.dev/lead-time": "30m"}},
           "spec": {"scaleTargetRef": {"name": name},
                    "triggers": [{"type": "cron", "metadata": {
                        "timezone": "Europe/Amsterdam", "start": "0 8 * * 1-5",
                        "end": "0 11 * * 1-5", "desiredReplicas": "3"}}]}})
}

fn cfg() -> KedaConfig {
    KedaConfig {
        resync: Duration::from_millis(200),
        debounce: Duration::from_millis(20),
        ..KedaConfig::default()
    }
}

/// Waits until `pred` holds for the published windows; returns them.
async fn wait_for(state: &LinkState, pred: impl Fn(&NodeWindows) -> bool) -> Arc<NodeWindows> {
    let mut rx = state.windows.subscribe();
    let found = tokio::time::timeout(WAIT, async {
        rx.wait_for(|w| pred(w)).await.map(|w| w.clone()).ok()
    })
    .await;
    match found {
        Ok(Some(w)) => w,
        _ => panic!("windows never matched; last: {:?}", state.windows.borrow()),
    }
}

fn names(w: &[WindowSpec]) -> Vec<(&str, &str)> {
    w.iter()
        .map(|w| (w.name.as_str(), w.source.as_str()))
        .collect()
}

#[tokio::test]
async fn opted_in_scaled_objects_become_windows_for_eligible_nodes() {
    let api = MockApi::new();
    // erp opts in by its label; batch does not, but one object there opts in by its own.
    api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "erp", "labels": {ROLLOUT_LABEL: "true"}}}),
    );
    api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "batch"}}),
    );
    api.put(
        DEPLOYMENTS,
        deployment("erp", "orders-sync", "r.example/erp/orders:1"),
    );
    api.put(
        DEPLOYMENTS,
        deployment("erp", "opted-out", "r.example/erp/out:1"),
    );
    api.put(
        DEPLOYMENTS,
        deployment("batch", "report", "r.example/batch/report:1"),
    );
    api.put(
        DEPLOYMENTS,
        deployment("batch", "ignored", "r.example/batch/ignored:1"),
    );
    api.put(SCALED, scaled_object("erp", "orders-sync", json!({})));
    api.put(
        SCALED,
        scaled_object("erp", "opted-out", json!({ROLLOUT_LABEL: "false"})),
    );
    api.put(
        SCALED,
        scaled_object("batch", "report", json!({ROLLOUT_LABEL: "true"})),
    );
    api.put(SCALED, scaled_object("batch", "ignored", json!({})));
    // A target that does not exist: skipped, the others unaffected.
    api.put(SCALED, scaled_object("erp", "missing", json!({})));
    let cancel = CancellationToken::new();
    let state = LinkState::with_nodes(
        vec![snap("n1", "integrations"), snap("n2", "batch")],
        cancel.clone(),
    );
    tokio::spawn(run(
        api.coordinator_client(),
        state.clone(),
        cfg(),
        cancel.clone(),
    ));

    let w = wait_for(&state, |w| w.get("n1").is_some_and(|v| v.len() == 2)).await;
    assert_eq!(
        names(&w["n1"]),
        [
            ("keda-batch-report-0", "keda:batch/report#0"),
            ("keda-erp-orders-sync-0", "keda:erp/orders-sync#0"),
        ]
    );
    assert!(!w.contains_key("n2"), "n2 is in another pool: {w:?}");
    let orders = &w["n1"][1];
    assert_eq!(orders.images, ["r.example/erp/orders:1"]);
    assert_eq!(
        (
            orders.schedule.as_str(),
            orders.end_schedule.as_str(),
            orders.timezone.as_str()
        ),
        ("0 8 * * 1-5", "0 11 * * 1-5", "Europe/Amsterdam")
    );
    assert_eq!(orders.lead_time_seconds, 1800);

    // A new image in the target's template reaches the window on resync.
    api.update(DEPLOYMENTS, "erp", "orders-sync", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("r.example/erp/orders:2");
    });
    wait_for(&state, |w| {
        w.get("n1")
            .is_some_and(|v| v.iter().any(|s| s.images == ["r.example/erp/orders:2"]))
    })
    .await;
    // A node joining the pool gets the windows too; deleting a ScaledObject drops its window.
    state.update_view(|v| v.apply_snapshot(snap("n3", "integrations"), chrono::Utc::now()));
    wait_for(&state, |w| w.get("n3").is_some_and(|v| v.len() == 2)).await;
    api.remove(SCALED, "batch", "report");
    let w = wait_for(&state, |w| w.get("n3").is_some_and(|v| v.len() == 1)).await;
    assert_eq!(
        names(&w["n3"]),
        [("keda-erp-orders-sync-0", "keda:erp/orders-sync#0")]
    );
    cancel.cancel();
    assert!(api.forbidden().is_empty(), "{:?}", api.forbidden());
    // Only reads: the coordinator never writes ScaledObjects from here.
    assert!(api.writes().is_empty(), "{:?}", api.writes());
}

/// The windows of a node reach its stream: `intents_for` carries them.
#[test]
fn a_nodes_intent_set_carries_its_windows_only() {
    let spec = WindowSpec {
        name: "keda-erp-x-0".into(),
        ..Default::default()
    };
    let windows = NodeWindows::from([("n1".to_string(), vec![spec.clone()])]);
    let set = super::super::link::intents_for(&[], &windows, "n1");
    assert_eq!(set.windows, [spec]);
    assert!(super::super::link::intents_for(&[], &windows, "n2")
        .windows
        .is_empty());
}

/// An API server without the KEDA CRD: every request is a 404.
fn no_keda(lists: Arc<AtomicUsize>) -> kube::Client {
    use kube::client::Body;
    let (svc, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            if req.uri().path().contains("scaledobjects") {
                lists.fetch_add(1, Ordering::SeqCst);
            }
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
            let resp = http::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
                .expect("a response");
            send.send_response(resp);
        }
    });
    kube::Client::new(svc, "default")
}

#[tokio::test(start_paused = true)]
async fn a_missing_crd_is_looked_for_slowly_and_breaks_nothing() {
    let lists = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let state = LinkState::with_nodes(vec![snap("n1", "integrations")], cancel.clone());
    let cfg = KedaConfig {
        missing_crd_retry: Duration::from_secs(300),
        ..KedaConfig::default()
    };
    let task = tokio::spawn(run(
        no_keda(lists.clone()),
        state.clone(),
        cfg,
        cancel.clone(),
    ));
    // Let the first probe happen, then 10 minutes pass: two more, no more.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(lists.load(Ordering::SeqCst), 1, "one probe at start");
    tokio::time::sleep(Duration::from_secs(601)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        lists.load(Ordering::SeqCst),
        3,
        "one probe per retry period"
    );
    assert!(!task.is_finished(), "the loop keeps looking");
    assert!(state.windows.borrow().is_empty());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops when cancelled")
        .expect("no panic");
}
