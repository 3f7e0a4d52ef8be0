//! Keeps the view's API-server node facts (labels, taints, cordon, Ready)
//! current from a watch on Nodes, so the gate and deploy steps place pods
//! by what the scheduler sees, not by what agents last reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio_util::sync::CancellationToken;

use super::link::LinkState;
use crate::plan::eligibility::NodeFacts;

/// Watches Nodes until cancelled. Nothing is set before the first full
/// list, so the view falls back to agents' reports until then.
pub async fn run(client: kube::Client, state: Arc<LinkState>, cancel: CancellationToken) {
    let stream =
        watcher::watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut relist: Option<BTreeMap<String, NodeFacts>> = None;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "node watch error; retrying"),
            Some(Ok(Event::Init)) => relist = Some(BTreeMap::new()),
            Some(Ok(Event::InitApply(n))) => {
                if let Some(f) = NodeFacts::from_node(&n) {
                    relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(f.name.clone(), f);
                }
            }
            Some(Ok(Event::InitDone)) => {
                let all = relist.take().unwrap_or_default();
                tracing::debug!(nodes = all.len(), "nodes listed");
                // Before the view change, which is what waiters watch.
                state.readiness.set(super::ready::NODES, true);
                state.update_view(|v| v.set_api_nodes(all.into_values()));
                state.forget_stale(None);
            }
            Some(Ok(Event::Apply(n))) => {
                if let Some(f) = NodeFacts::from_node(&n) {
                    state.update_view(|v| v.set_api_node(f));
                }
            }
            Some(Ok(Event::Delete(n))) => {
                if let Some(name) = n.metadata.name {
                    state.update_view(|v| v.remove_api_node(&name));
                    state.forget_stale(Some(&name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::gate::warm_eligible;
    use crate::testkit::apiserver::MockApi;
    use crate::wire::v1::{image_state::Phase, ImageState, Snapshot};
    use serde_json::json;
    use std::time::Duration;

    fn node(name: &str, taint: Option<&str>) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
               "spec": {"taints": taint.map(|k| vec![json!({"key": k, "effect": "NoSchedule"})]).unwrap_or_default()},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    /// A node tainted in the API (its agent reports no taint) stops being
    /// eligible as soon as the watch delivers the change.
    #[tokio::test]
    async fn api_taints_reach_the_view() {
        let api = MockApi::new();
        api.put("api/v1/nodes", node("n1", None));
        api.put("api/v1/nodes", node("n2", None));
        let warm = |n: &str| Snapshot {
            node: n.into(),
            seq: 1,
            images: vec![ImageState {
                name: "reg.io/app:1".into(),
                phase: Phase::Warm as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let state = LinkState::with_nodes(vec![warm("n1"), warm("n2")], CancellationToken::new());
        let cancel = CancellationToken::new();
        tokio::spawn(run(api.coordinator_client(), state.clone(), cancel.clone()));
        let spec: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(json!({"containers": [{"name": "c", "image": "reg.io/app:1"}]}))
                .unwrap();
        let images = vec!["reg.io/app:1".to_string()];
        let warm = |state: &LinkState| warm_eligible(&spec, &images, &state.view()).1;
        let changes = state.view_changes.subscribe();
        let until = |want: Vec<&'static str>| {
            let state = state.clone();
            let mut changes = changes.clone();
            let warm = &warm;
            async move {
                for _ in 0..50 {
                    if warm(&state) == want {
                        return;
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
                }
                panic!("warm nodes never became {want:?}: {:?}", warm(&state));
            }
        };
        until(vec!["n1", "n2"]).await;
        api.put(
            "api/v1/nodes",
            node("n2", Some("node.kubernetes.io/unschedulable")),
        );
        until(vec!["n1"]).await;
        // A node deleted from the API is no longer a place for pods.
        api.remove("api/v1/nodes", "", "n1");
        until(vec![]).await;
        cancel.cancel();
    }
}
