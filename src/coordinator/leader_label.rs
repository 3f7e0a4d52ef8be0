//! The leader label. Agents dial the Service, which selects the coordinator
//! pod labelled [`LEADER_LABEL`]`=true`, so the label must follow the Lease:
//! the leader labels its own pod and removes the label from every other
//! replica's pod (one killed while leading cannot remove its own), and a
//! replica that is not the leader removes its own label. The state is
//! re-asserted every renewal period, not only on change, so a label lost
//! or left behind is put right within one period.
//!
//! [`plan`] is the pure decision; [`LeaderLabel`] observes (one label-
//! selected list) and patches; [`run`] follows leadership.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Label on the leader's own pod; the agents' Service selects it.
pub const LEADER_LABEL: &str = "prewarm.dev/leader";
/// The label the Deployment's pods carry (its selector, and the Service's
/// besides the leader label).
pub const COMPONENT_SELECTOR: &str = "app.kubernetes.io/component=coordinator";

/// One label change on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelAction {
    Set(String),
    Remove(String),
}

/// What to change, given the pods labelled now. The leader sets its own
/// label first (so the Service never goes without it) and then removes the
/// others'; a follower only ever touches its own pod.
pub fn plan(me: &str, is_leader: bool, labelled: &[String]) -> Vec<LabelAction> {
    let mine = labelled.iter().any(|p| p == me);
    if !is_leader {
        return if mine {
            vec![LabelAction::Remove(me.to_string())]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    if !mine {
        out.push(LabelAction::Set(me.to_string()));
    }
    out.extend(
        labelled
            .iter()
            .filter(|p| *p != me)
            .map(|p| LabelAction::Remove(p.clone())),
    );
    out
}

/// The merge patch that sets or removes [`LEADER_LABEL`].
pub fn patch(set: bool) -> serde_json::Value {
    let value = if set {
        serde_json::json!("true")
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}})
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("listing the coordinator pods labelled {LEADER_LABEL}: {0}")]
    List(kube::Error),
    #[error("{action} {LEADER_LABEL} on pod {pod}: {source}")]
    Patch {
        action: &'static str,
        pod: String,
        source: kube::Error,
    },
}

/// The label effector for one replica's pod.
pub struct LeaderLabel {
    pods: Api<Pod>,
    me: String,
}

impl LeaderLabel {
    pub fn new(client: kube::Client, namespace: &str, pod: &str) -> Self {
        Self {
            pods: Api::namespaced(client, namespace),
            me: pod.to_string(),
        }
    }

    /// Brings the labels in line with `is_leader`; returns what it changed.
    pub async fn reconcile(&self, is_leader: bool) -> Result<Vec<LabelAction>, LabelError> {
        let selector = format!("{COMPONENT_SELECTOR},{LEADER_LABEL}=true");
        let listed = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(LabelError::List)?;
        let labelled: Vec<String> = listed
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let actions = plan(&self.me, is_leader, &labelled);
        for a in &actions {
            let (pod, set) = match a {
                LabelAction::Set(p) => (p, true),
                LabelAction::Remove(p) => (p, false),
            };
            match self
                .pods
                .patch(pod, &PatchParams::default(), &Patch::Merge(patch(set)))
                .await
            {
                Ok(_) => {}
                // Another replica's pod deleted meanwhile: its label is gone.
                Err(kube::Error::Api(s)) if s.code == 404 && pod != &self.me => {}
                Err(source) => {
                    return Err(LabelError::Patch {
                        action: if set { "setting" } else { "removing" },
                        pod: pod.clone(),
                        source,
                    })
                }
            }
        }
        Ok(actions)
    }
}

/// Follows `is_leader`: reconciles at once on every change and every
/// `period` in between. On cancel (shutdown) it removes its own label.
/// Errors are logged when they first occur or change, not every period.
pub async fn run(
    label: LeaderLabel,
    mut is_leader: watch::Receiver<bool>,
    period: Duration,
    cancel: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let leader = *is_leader.borrow_and_update();
        report(&label.me, label.reconcile(leader).await, &mut last_error);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            r = is_leader.changed() => if r.is_err() { break },
            _ = cancel.cancelled() => break,
        }
    }
    let last = tokio::time::timeout(period, label.reconcile(false)).await;
    if let Ok(outcome) = last {
        report(&label.me, outcome, &mut last_error);
    }
}

fn report(
    me: &str,
    outcome: Result<Vec<LabelAction>, LabelError>,
    last_error: &mut Option<String>,
) {
    match outcome {
        Ok(actions) => {
            if last_error.take().is_some() {
                tracing::info!(pod = %me, "leader label reconciled again");
            }
            for a in actions {
                match a {
                    LabelAction::Set(p) => {
                        tracing::info!(pod = %p, "leader label set; the Service routes agents here")
                    }
                    LabelAction::Remove(p) if p == me => {
                        tracing::info!(pod = %p, "leader label removed from this replica")
                    }
                    LabelAction::Remove(p) => {
                        tracing::info!(pod = %p, "stale leader label removed from another replica")
                    }
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::warn!(pod = %me, error = %msg, "leader label not reconciled; retrying every renewal period");
            } else {
                tracing::debug!(pod = %me, error = %msg, "leader label still not reconciled");
            }
            *last_error = Some(msg);
        }
    }
}

#[cfg(test)]
#[path = "leader_label_tests.rs"]
mod tests;
