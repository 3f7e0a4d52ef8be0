//! The coordinator killed in the middle of a gate release: three pods are
//! released at once, the API server applies the first patch and holds the
//! others, the process dies, and a fresh coordinator (new in-memory state,
//! same API server) releases the rest. Every pod ends ungated onto the
//! warm nodes, each by exactly one applied patch.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::*;
use crate::coordinator::process_tests::Process;
use crate::plan::gate::{GATE, GATE_LABEL, HOSTNAME_LABEL};
use crate::plan::view::POOL_LABEL;
use crate::testkit::apiserver::{MockApi, Recorded};
use crate::wire::v1::{image_state::Phase, ImageState, Snapshot};

const APP: &str = "reg.io/erp/app:1.0";
const PODS: &str = "api/v1/pods";
const WAIT: Duration = Duration::from_secs(10);
const NAMES: [&str; 3] = ["app-0", "app-1", "app-2"];

fn warm(node: &str) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [
            (POOL_LABEL.to_string(), "apps".to_string()),
            (HOSTNAME_LABEL.to_string(), format!("host-{node}")),
        ]
        .into(),
        images: vec![ImageState {
            name: APP.into(),
            phase: Phase::Warm as i32,
            ..Default::default()
        }],
        seq: 1,
        ..Default::default()
    }
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "erp", "uid": format!("uid-{name}"),
                     "creationTimestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                     "labels": {GATE_LABEL: "true"}},
        "spec": {"nodeSelector": {POOL_LABEL: "apps"},
                 "containers": [{"name": "app", "image": APP}],
                 "schedulingGates": [{"name": GATE}]},
    })
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/erp/pods/{name}")
}

/// Patches of `name` the server applied.
fn applied(reqs: &[Recorded], name: &str) -> usize {
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.path == pod_path(name) && r.code == 200)
        .count()
}

fn gated(api: &MockApi, name: &str) -> bool {
    let p = api.object(PODS, "erp", name).expect("pod stored");
    p["spec"]["schedulingGates"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g["name"] == GATE))
}

/// A coordinator process running the gate as leader, with n1 and n2 warm.
fn coordinator(api: &MockApi) -> (Process, std::sync::Arc<LinkState>) {
    let cancel = CancellationToken::new();
    let state = LinkState::with_nodes(vec![warm("n1"), warm("n2")], cancel.clone());
    let (api, st) = (api.clone(), state.clone());
    let process = Process::start(move || async move {
        let (_leader, rx) = watch::channel(true);
        run(
            api.coordinator_client(),
            st,
            GateOptions::default(),
            rx,
            cancel,
        )
        .await;
    });
    (process, state)
}

#[tokio::test]
async fn a_coordinator_killed_mid_release_leaves_no_pod_gated_or_released_twice() {
    let api = MockApi::new();
    for n in NAMES {
        api.put(PODS, pod(n));
    }
    // The first release patch is applied; the others wait at the server.
    let hold = api.hold(1, |m, p| {
        m == "PATCH" && p.starts_with("/api/v1/namespaces/erp/pods/")
    });
    let (first, _) = coordinator(&api);
    tokio::time::timeout(WAIT, hold.arrived(3))
        .await
        .expect("three releases sent at once");
    let landed = api
        .wait_for(WAIT, |r| {
            NAMES.iter().map(|n| applied(r, n)).sum::<usize>() == 1
        })
        .await;
    assert!(landed, "the first release applied");
    let released: Vec<&str> = NAMES.into_iter().filter(|n| !gated(&api, n)).collect();
    assert_eq!(released.len(), 1, "killed after exactly one release landed");
    first.kill().await;
    // What the killed process had in flight never reaches the server.
    hold.release();
    assert_eq!(NAMES.iter().filter(|n| !gated(&api, n)).count(), 1);

    let (second, state) = coordinator(&api);
    let ok = api
        .wait_for(WAIT, |_| NAMES.iter().all(|n| !gated(&api, n)))
        .await;
    assert!(ok, "pods left gated: {:#?}", api.writes());
    // Settle: nothing more is released.
    let more = api
        .wait_for(Duration::from_secs(2), |r| {
            NAMES.iter().any(|n| applied(r, n) > 1)
        })
        .await;
    let reqs = api.requests();
    assert!(!more, "released twice: {:#?}", api.writes());
    for n in NAMES {
        assert_eq!(applied(&reqs, n), 1, "{n}: {:#?}", api.writes());
        let p = api.object(PODS, "erp", n).unwrap();
        let terms = &p["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
        assert_eq!(
            terms,
            &json!([{"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In",
                                           "values": ["host-n1", "host-n2"]}]}]),
            "{n} narrowed to the warm nodes"
        );
    }
    let m = &state.metrics;
    assert_eq!(m.gate_released.with_label_values(&[OUTCOME_WARM]).get(), 2);
    second.kill().await;
    let refused = api.forbidden();
    assert!(refused.is_empty(), "{refused:#?}");
}
