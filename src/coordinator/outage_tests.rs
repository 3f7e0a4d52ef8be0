//! The coordinator with the API server away for 30 s (refusing, or holding
//! every request unanswered), on tokio's paused clock: the Lease loop, the
//! leadership mirror and the gate as the binary wires them, on the
//! in-memory API server. It must keep its agents, step down explicitly
//! when it cannot renew, lead again afterwards, and act on a gate timeout
//! that fell inside the outage exactly once, after it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::gate::{self, GateOptions};
use super::leader::{self, Clock, LEASE_DURATION};
use super::link::LinkState;
use super::WallClock;
use crate::plan::gate::{GateConfig, GATE, GATE_LABEL};
use crate::plan::view::POOL_LABEL;
use crate::testkit::apiserver::{MockApi, Outage, Recorded};
use crate::wire::v1::Snapshot;

const NS: &str = "prewarm-system";
const PODS: &str = "api/v1/pods";
const APP: &str = "reg.io/erp/app:1.0";
const OUTAGE: Duration = Duration::from_secs(30);

/// A pod gated for APP, schedulable only to the `apps` pool, which has no
/// node: nothing can warm it, so only its timeout releases it.
fn gated_pod(created: chrono::DateTime<Utc>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-1", "namespace": "erp", "uid": "uid-app-1",
                     "creationTimestamp": created.to_rfc3339_opts(SecondsFormat::Secs, true),
                     "labels": {GATE_LABEL: "true"}},
        "spec": {"nodeSelector": {POOL_LABEL: "apps"},
                 "containers": [{"name": "app", "image": APP}],
                 "schedulingGates": [{"name": GATE}]},
    })
}

fn releases(reqs: &[Recorded]) -> Vec<Recorded> {
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/namespaces/erp/pods/app-1")
        .cloned()
        .collect()
}

/// Every value a watch took, with the (paused) time it was seen.
type Seen = Arc<std::sync::Mutex<Vec<(Duration, bool)>>>;

/// Records every value of a watch with the (paused) time it was seen.
fn record(mut rx: watch::Receiver<bool>) -> (Seen, tokio::task::JoinHandle<()>) {
    let start = tokio::time::Instant::now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let v = *rx.borrow_and_update();
            out.lock().unwrap().push((start.elapsed(), v));
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    (seen, task)
}

async fn through_an_outage(outage: Outage) {
    let api = MockApi::new();
    let cancel = CancellationToken::new();
    let wall = WallClock::following_tokio();
    let lease_clock: Clock = {
        let w = wall.clone();
        Arc::new(move || w.now())
    };
    let batch = Snapshot {
        node: "n1".into(),
        labels: [(POOL_LABEL.to_string(), "batch".to_string())].into(),
        seq: 1,
        ..Default::default()
    };
    let state = LinkState::with_nodes(vec![batch], cancel.clone());
    // As the binary starts it: no agents until it leads.
    state.serving.send_replace(false);
    let (leadership, lease_task) = leader::spawn_with_clock(
        api.coordinator_client(),
        NS.into(),
        "coordinator-a".into(),
        LEASE_DURATION,
        lease_clock,
        cancel.clone(),
    );
    let mut is_leader = leadership.is_leader.clone();
    let mirror = tokio::spawn(super::follow_leadership(state.clone(), leadership.clone()));
    let opts = GateOptions {
        cfg: GateConfig {
            timeout: Duration::from_secs(20),
            ..GateConfig::default()
        },
        clock: wall.clone(),
        ..GateOptions::default()
    };
    let gate_task = tokio::spawn(gate::run(
        api.coordinator_client(),
        state.clone(),
        opts,
        leadership.is_leader.clone(),
        cancel.clone(),
    ));
    tokio::time::timeout(LEASE_DURATION, is_leader.wait_for(|v| *v))
        .await
        .expect("leads")
        .unwrap();
    let (serving, serving_task) = record(state.serving.subscribe());
    let (leading, leading_task) = record(leadership.is_leader.clone());
    assert!(*state.serving.borrow(), "serves agents once leading");
    assert_eq!(state.metrics.is_leader.get(), 1);

    // The pod's 20 s timeout runs out 15 s into the outage.
    api.put(PODS, gated_pod(wall.now()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(releases(&api.requests()).is_empty(), "released early");
    api.set_outage(outage);
    let began = tokio::time::Instant::now();
    tokio::time::timeout(LEASE_DURATION, is_leader.wait_for(|v| !*v))
        .await
        .expect("steps down while it cannot renew")
        .unwrap();
    let stepped = began.elapsed();
    assert!(
        stepped <= LEASE_DURATION,
        "{outage:?}: stepped down {stepped:?} in"
    );
    assert_eq!(
        state.metrics.is_leader.get(),
        0,
        "the leader metric says so"
    );
    tokio::time::sleep(OUTAGE - stepped).await;
    assert!(
        releases(&api.requests()).is_empty(),
        "no write landed during the outage"
    );
    assert!(
        !is_leader.borrow_and_update().to_owned(),
        "led without renewing"
    );
    api.set_outage(Outage::None);
    let back = tokio::time::Instant::now();

    tokio::time::timeout(LEASE_DURATION, is_leader.wait_for(|v| *v))
        .await
        .expect("leads again once the API server answers")
        .unwrap();
    let ok = api
        .wait_for(LEASE_DURATION, |r| {
            releases(r).iter().any(|r| r.code == 200)
        })
        .await;
    assert!(
        ok,
        "{outage:?}: the timeout that fell in the outage was never acted on: {:#?}",
        api.writes()
    );
    assert!(
        back.elapsed() <= LEASE_DURATION,
        "acted on {:?} after the outage",
        back.elapsed()
    );
    let pod = api.object(PODS, "erp", "app-1").unwrap();
    assert!(
        pod["spec"]
            .get("schedulingGates")
            .is_none_or(|g| g == &json!([])),
        "{pod:#}"
    );
    // Exactly once, and nothing more after.
    tokio::time::sleep(LEASE_DURATION).await;
    let done: Vec<Recorded> = releases(&api.requests())
        .into_iter()
        .filter(|r| r.code == 200)
        .collect();
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(
        state
            .metrics
            .gate_released
            .with_label_values(&[gate::OUTCOME_UNWARMED])
            .get(),
        1
    );
    assert_eq!(state.metrics.is_leader.get(), 1);

    // Agents were kept all along; leadership was given up and taken back.
    let serving = serving.lock().unwrap().clone();
    assert!(
        serving.iter().all(|(_, v)| *v),
        "{outage:?}: agents dropped: {serving:?}"
    );
    let leading: Vec<bool> = leading.lock().unwrap().iter().map(|(_, v)| *v).collect();
    assert_eq!(leading, vec![true, false, true], "{outage:?}");
    for t in [&lease_task, &mirror, &gate_task] {
        assert!(!t.is_finished(), "{outage:?}: a coordinator task ended");
    }
    cancel.cancel();
    lease_task.await.unwrap();
    gate_task.await.unwrap();
    drop(leadership);
    drop(is_leader);
    serving_task.abort();
    leading_task.abort();
    tokio::time::timeout(LEASE_DURATION, mirror)
        .await
        .expect("the mirror ends with the Lease loop")
        .unwrap();
    assert!(!*state.serving.borrow(), "shut down: no agents");
    let refused = api.forbidden();
    assert!(refused.is_empty(), "{refused:#?}");
}

#[tokio::test(start_paused = true)]
async fn refused_for_30s_keeps_agents_and_acts_on_the_gate_timeout_after() {
    through_an_outage(Outage::Refuse).await;
}

#[tokio::test(start_paused = true)]
async fn stalled_for_30s_keeps_agents_and_acts_on_the_gate_timeout_after() {
    through_an_outage(Outage::Stall).await;
}
