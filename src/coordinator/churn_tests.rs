//! Node churn against the in-memory API server: nodes come and go with
//! their agents, and the coordinator's view, metrics and intents follow
//! them instead of growing with every node ever seen.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::link::tests::{ended, open, serve, Open};
use super::link::LinkState;
use crate::testkit::apiserver::MockApi;
use crate::wire::v1::{agent_message, AgentMessage, ImageState, Snapshot};

fn node(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A DaemonSet mid-update (generation not observed yet): one rollout
/// intent naming every Ready node.
fn daemonset() -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
           "metadata": {"name": "otel", "namespace": "monitoring", "generation": 2,
                        "labels": {"prewarm.dev/rollout": "true"}},
           "spec": {"selector": {"matchLabels": {"app": "otel"}},
                    "template": {"metadata": {"labels": {"app": "otel"}},
                                 "spec": {"containers": [{"name": "c", "image": "reg.io/otel:2"}]}}},
           "status": {"observedGeneration": 1, "desiredNumberScheduled": 0,
                      "currentNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0}})
}

/// The agent's snapshot: its own pool, so each round brings new series.
fn report(name: &str, pool: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Snapshot(Snapshot {
            node: name.into(),
            seq: 1,
            labels: [(crate::plan::view::POOL_LABEL.to_string(), pool.to_string())]
                .into_iter()
                .collect(),
            images: vec![ImageState {
                name: "reg.io/app:1".into(),
                phase: crate::wire::v1::image_state::Phase::Warm as i32,
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// What the coordinator holds about nodes: view records, the nodes the
/// published intents name, and the pools of the warm_fraction series.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    records: BTreeSet<String>,
    targeted: BTreeSet<String>,
    pools: BTreeSet<String>,
}

async fn held(state: &LinkState, metrics: &str) -> Held {
    let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    let pools = text
        .lines()
        .filter(|l| l.starts_with("prewarm_coordinator_warm_fraction{"))
        .filter_map(|l| l.split("pool=\"").nth(1)?.split('"').next())
        .map(str::to_string)
        .collect();
    Held {
        records: state.view().nodes().map(|n| n.node.clone()).collect(),
        targeted: state
            .intents
            .borrow()
            .iter()
            .flat_map(|i| i.nodes.clone())
            .collect(),
        pools,
    }
}

/// Waits for the view or the intents to change until `want` holds.
async fn until(state: &LinkState, metrics: &str, want: &Held) {
    let mut views = state.view_changes.subscribe();
    let mut intents = state.intents.subscribe();
    let wait = async {
        while held(state, metrics).await != *want {
            tokio::select! {
                _ = views.changed() => {}
                _ = intents.changed() => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!(
            "the coordinator holds {:#?}, want {want:#?}",
            held(state, metrics).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_leave_leave_the_view_the_metrics_and_the_intents() {
    let api = MockApi::new();
    api.put("apis/apps/v1/daemonsets", daemonset());
    let cancel = CancellationToken::new();
    let (state, addr) = serve(&cancel).await;
    let http = super::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        false,
        cancel.clone(),
    )
    .await
    .unwrap();
    let metrics = format!("http://{http}/metrics");
    tokio::spawn(super::nodes::run(
        api.coordinator_client(),
        state.clone(),
        cancel.clone(),
    ));
    let publish = state.clone();
    let cfg = super::rollouts::RolloutConfig {
        debounce: Duration::from_millis(20),
        ..Default::default()
    };
    tokio::spawn(super::rollouts::run(
        api.coordinator_client(),
        cfg,
        move |v| publish.publish("rollouts", v),
        cancel.clone(),
    ));
    let mut live: Vec<(String, Open)> = Vec::new();
    for round in 0..5 {
        let pool = format!("pool-{round}");
        let names: Vec<String> = (0..4).map(|i| format!("n{}", round * 4 + i)).collect();
        let mut fresh = Vec::new();
        for n in &names {
            api.put("api/v1/nodes", node(n));
            fresh.push((n.clone(), open(addr, n, report(n, &pool)).await.unwrap()));
        }
        // The previous round's nodes are deleted and their agents go.
        for (n, s) in live.drain(..) {
            api.remove("api/v1/nodes", "", &n);
            drop(s.tx);
            ended(s.rx).await;
        }
        live = fresh;
        let set: BTreeSet<String> = names.into_iter().collect();
        until(
            &state,
            &metrics,
            &Held {
                records: set.clone(),
                targeted: set,
                pools: [pool].into_iter().collect(),
            },
        )
        .await;
    }
    // The last agents disconnect; their nodes stay in the API: kept (until
    // the TTL), but out of the counts and so out of the metrics.
    let last: BTreeSet<String> = live.iter().map(|(n, _)| n.clone()).collect();
    for (_, s) in live.drain(..) {
        drop(s.tx);
        ended(s.rx).await;
    }
    until(
        &state,
        &metrics,
        &Held {
            records: last.clone(),
            targeted: last,
            pools: BTreeSet::new(),
        },
    )
    .await;
    assert_eq!(state.metrics.connected.get(), 0);
    assert_eq!(
        state
            .metrics
            .forgotten_nodes
            .with_label_values(&["deleted"])
            .get(),
        16
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    cancel.cancel();
}
