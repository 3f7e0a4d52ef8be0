//! `/readyz` of the coordinator, over HTTP: ready once the link serves,
//! the first lists are in and the election runs; not undone by an API
//! outage; undone by the election stopping.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::auth::StaticAuth;
use super::link::LinkState;
use super::{ready, Coordinator, CoordinatorOptions};
use crate::testkit::apiserver::{MockApi, Outage};

async fn readyz(http: std::net::SocketAddr) -> (u16, String) {
    let r = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits (on view or intent changes) until `name` is met.
async fn until_met(state: &LinkState, name: &str) {
    let mut views = state.view_changes.subscribe();
    let mut intents = state.intents.subscribe();
    let mut serving = state.serving.subscribe();
    let wait = async {
        while state.readiness.missing().iter().any(|(n, _)| *n == name) {
            tokio::select! {
                _ = views.changed() => {}
                _ = intents.changed() => {}
                _ = serving.changed() => {}
            }
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(20), wait).await;
    assert!(
        done.is_ok(),
        "{name} never met: {:?}",
        state.readiness.missing()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_what_is_missing_until_the_replica_can_serve() {
    let api = MockApi::new();
    api.put(
        "api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
    );
    let cancel = CancellationToken::new();
    let opts = CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure: true,
        retention: Default::default(),
        watch_api: true,
    };
    let auth = std::sync::Arc::new(StaticAuth(Default::default()));
    let coord = Coordinator::start(opts, auth, cancel.clone())
        .await
        .unwrap();
    let state = coord.state.clone();
    let (code, body) = readyz(coord.http_addr).await;
    assert_eq!(code, 503, "{body}");
    for line in [
        "nodes: the first list of Nodes is not complete",
        "workloads: the first lists of opted-in workloads are not complete",
        "election: leader election is not running",
    ] {
        assert!(body.contains(line), "{body}");
    }

    tokio::spawn(super::nodes::run(
        api.coordinator_client(),
        state.clone(),
        cancel.clone(),
    ));
    until_met(&state, ready::NODES).await;
    let cfg = super::rollouts::RolloutConfig {
        debounce: Duration::from_millis(20),
        ..Default::default()
    };
    tokio::spawn(super::rollouts::run(
        api.coordinator_client(),
        cfg,
        super::publish_rollouts(state.clone()),
        cancel.clone(),
    ));
    until_met(&state, ready::WORKLOADS).await;
    assert_eq!(
        readyz(coord.http_addr).await.0,
        503,
        "the election is not running"
    );
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let leadership = super::leader::Leadership {
        takes_agents: leader_rx.clone(),
        is_leader: leader_rx,
    };
    tokio::spawn(super::follow_leadership(state.clone(), leadership));
    until_met(&state, ready::ELECTION).await;
    // A follower is ready: it serves nothing until it leads, but must be
    // able to take over, and rolling updates wait for it.
    assert_eq!(readyz(coord.http_addr).await, (200, "ready\n".into()));

    // An API server outage does not make it unready: agents keep being
    // served from what it has.
    api.set_outage(Outage::Refuse);
    assert_eq!(readyz(coord.http_addr).await.0, 200);
    api.set_outage(Outage::None);

    // The election stopping does.
    let mut serving = state.serving.subscribe();
    drop(leader_tx);
    let stopped = async {
        while state.readiness.missing().is_empty() {
            serving.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("the election's end noticed");
    let (code, body) = readyz(coord.http_addr).await;
    assert_eq!(code, 503);
    assert!(
        body.contains("election: leader election is not running"),
        "{body}"
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    cancel.cancel();
}
