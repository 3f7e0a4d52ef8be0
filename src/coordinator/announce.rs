//! Tells workloads when their pending rollout's images are warm on every
//! eligible node: a Kubernetes Event, written by the leader only, once per
//! intent. Which intents are ready is decided purely from the view.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events;
use super::link::LinkState;
use crate::plan::rollout::{WorkloadKind, WorkloadRef};
use crate::plan::view::ClusterView;
use crate::wire::v1::Intent;

/// How often readiness is checked.
const EVERY: Duration = Duration::from_secs(5);

/// The workload an intent id names (`Kind/namespace/name@hash`).
pub fn workload_of(id: &str) -> Option<WorkloadRef> {
    let (path, _) = id.split_once('@')?;
    let mut parts = path.splitn(3, '/');
    let kind = match parts.next()? {
        "Deployment" => WorkloadKind::Deployment,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        _ => return None,
    };
    Some(WorkloadRef {
        kind,
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

/// Intents whose images are warm on every node they name.
pub fn ready<'a>(intents: &'a [Intent], view: &ClusterView) -> Vec<&'a Intent> {
    intents
        .iter()
        .filter(|i| !i.nodes.is_empty())
        .filter(|i| {
            i.nodes.iter().all(|n| {
                view.node(n).is_some_and(|rec| {
                    i.images.iter().all(|img| {
                        // Agents report CRI names (`nginx` is
                        // `docker.io/library/nginx:latest`).
                        let cri = img
                            .parse::<crate::config::reference::ImageRef>()
                            .map(|r| r.cri_name());
                        rec.is_warm(cri.as_deref().unwrap_or(img))
                    })
                })
            })
        })
        .collect()
}

pub async fn run(
    state: Arc<LinkState>,
    client: kube::Client,
    leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut announced: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        let intents = state.intents.borrow().clone();
        let due: Vec<(WorkloadRef, String, String)> = {
            let view = state.view();
            ready(&intents, &view)
                .into_iter()
                .filter(|i| !announced.contains(&i.id))
                .filter_map(|i| {
                    let w = workload_of(&i.id)?;
                    let msg = format!(
                        "images {} warm on all {} eligible nodes",
                        i.images.join(", "),
                        i.nodes.len()
                    );
                    Some((w, i.id.clone(), msg))
                })
                .collect()
        };
        for (w, id, msg) in due {
            match events::warm_event(&client, &w, &msg).await {
                Ok(_) => {
                    tracing::info!(workload = %w, "rollout images warm; event recorded");
                    announced.insert(id);
                }
                Err(e) => tracing::warn!(workload = %w, error = %e, "cannot record event"),
            }
        }
        // Forget intents that are gone so the set stays bounded.
        announced.retain(|id| intents.iter().any(|i| &i.id == id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::v1::image_state::Phase;
    use crate::wire::v1::{ImageState, Snapshot};

    #[test]
    fn parses_workload_ids() {
        let w = workload_of("Deployment/erp/orders-sync@0a1b2c3d4e").unwrap();
        assert_eq!(
            (w.kind, w.namespace.as_str(), w.name.as_str()),
            (WorkloadKind::Deployment, "erp", "orders-sync")
        );
        assert!(workload_of("ReplicaSet/erp/x/pods@1").is_none());
        assert!(workload_of("garbage").is_none());
    }

    #[test]
    fn ready_when_warm_on_every_named_node() {
        let mut view = ClusterView::default();
        let warm = |node: &str, warm: bool| Snapshot {
            node: node.into(),
            seq: 1,
            images: vec![ImageState {
                // Agents report CRI names; the intent says `nginx:1.27`.
                name: "docker.io/library/nginx:1.27".into(),
                phase: if warm { Phase::Warm } else { Phase::Pulling } as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let now = chrono::Utc::now();
        view.apply_snapshot(warm("n1", true), now);
        view.apply_snapshot(warm("n2", false), now);
        let intent = |nodes: &[&str]| Intent {
            id: "Deployment/ns/app@1".into(),
            images: vec!["nginx:1.27".into()],
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let all = vec![
            intent(&["n1"]),
            intent(&["n1", "n2"]),
            intent(&[]),
            intent(&["n9"]),
        ];
        let r = ready(&all, &view);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].nodes, vec!["n1".to_string()]);
    }
}
