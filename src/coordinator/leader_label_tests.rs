//! The leader label: the pure plan, and two replicas campaigning for the
//! real Lease loop against the in-memory API server, in tokio's paused time
//! with a wall clock that follows it.

use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::*;
use crate::coordinator::leader::{self, Clock, LEASE_DURATION, LEASE_NAME};
use crate::testkit::apiserver::MockApi;

const NS: &str = "prewarm-system";
const PODS: &str = "api/v1/pods";
const LEASES: &str = "apis/coordination.k8s.io/v1/leases";

fn period() -> Duration {
    leader::renew_period(LEASE_DURATION)
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_leader_labels_itself_first_then_unlabels_the_others() {
    use LabelAction::*;
    assert_eq!(
        plan("b", true, &names(&["a"])),
        vec![Set("b".into()), Remove("a".into())]
    );
    assert_eq!(
        plan("b", true, &names(&["a", "b", "c"])),
        vec![Remove("a".into()), Remove("c".into())]
    );
    assert_eq!(plan("b", true, &names(&["b"])), vec![]);
    assert_eq!(plan("b", true, &[]), vec![Set("b".into())]);
}

#[test]
fn a_follower_only_ever_unlabels_itself() {
    use LabelAction::*;
    assert_eq!(plan("b", false, &names(&["a"])), vec![]);
    assert_eq!(
        plan("b", false, &names(&["a", "b"])),
        vec![Remove("b".into())]
    );
    assert_eq!(plan("b", false, &[]), vec![]);
}

#[test]
fn the_patch_sets_or_deletes_the_label() {
    assert_eq!(
        patch(true),
        json!({"metadata": {"labels": {"prewarm.dev/leader": "true"}}})
    );
    assert_eq!(
        patch(false),
        json!({"metadata": {"labels": {"prewarm.dev/leader": null}}})
    );
}

/// A wall clock that advances with tokio's (paused) time.
fn clock() -> Clock {
    let wall = Utc::now();
    let start = tokio::time::Instant::now();
    Arc::new(move || wall + chrono::Duration::from_std(start.elapsed()).unwrap_or_default())
}

fn coordinator_pod(api: &MockApi, name: &str) {
    api.put(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS,
                            "labels": {"app.kubernetes.io/component": "coordinator"}},
               "spec": {"containers": [{"name": "coordinator", "image": "prewarm"}]}}),
    );
}

/// One coordinator replica: the Lease loop and the label loop, as the
/// binary runs them.
struct Replica {
    is_leader: watch::Receiver<bool>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    fn start(api: &MockApi, name: &str, clock: &Clock) -> Replica {
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let lease = tokio::spawn(leader::run_with_clock(
            api.coordinator_client(),
            NS.into(),
            name.into(),
            LEASE_DURATION,
            clock.clone(),
            tx,
            cancel.clone(),
        ));
        let label = tokio::spawn(run(
            LeaderLabel::new(api.coordinator_client(), NS, name),
            rx.clone(),
            period(),
            cancel.clone(),
        ));
        Replica {
            is_leader: rx,
            cancel,
            tasks: vec![lease, label],
        }
    }

    async fn becomes(&mut self, leader: bool) {
        tokio::time::timeout(
            LEASE_DURATION * 4,
            self.is_leader.wait_for(|v| *v == leader),
        )
        .await
        .expect("leadership in time")
        .unwrap();
    }

    /// `kill -9`: no Lease release, no label removal.
    fn kill(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Pods carrying the leader label, sorted.
fn labelled(api: &MockApi) -> Vec<String> {
    let mut out: Vec<String> = api
        .objects(PODS)
        .iter()
        .filter(|p| p["metadata"]["labels"][LEADER_LABEL] == "true")
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

async fn until_labelled(api: &MockApi, want: &[&str], within: Duration) {
    let want = names(want);
    let ok = api.wait_for(within, |_| labelled(api) == want).await;
    assert!(ok, "labelled {:?}, want {want:?}", labelled(api));
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_removes_the_label_a_killed_leader_left_behind() {
    let api = MockApi::new();
    let clock = clock();
    coordinator_pod(&api, "coordinator-a");
    coordinator_pod(&api, "coordinator-b");
    let mut a = Replica::start(&api, "coordinator-a", &clock);
    a.becomes(true).await;
    until_labelled(&api, &["coordinator-a"], period()).await;

    let mut b = Replica::start(&api, "coordinator-b", &clock);
    // Several periods as a follower: it leaves the leader's label alone.
    tokio::time::sleep(period() * 3).await;
    assert!(!*b.is_leader.borrow());
    assert_eq!(labelled(&api), names(&["coordinator-a"]));

    let killed = tokio::time::Instant::now();
    a.kill();
    b.becomes(true).await;
    let took_over = tokio::time::Instant::now();
    assert!(
        took_over - killed <= LEASE_DURATION + period(),
        "took over {:?} after the kill",
        took_over - killed
    );
    // At once, not at some later period: the Service selects only B.
    until_labelled(&api, &["coordinator-b"], Duration::from_millis(100)).await;
    assert!(
        api.object(PODS, NS, "coordinator-a").unwrap()["metadata"]["labels"]
            .get(LEADER_LABEL)
            .is_none()
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    b.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_loses_the_lease_unlabels_itself_within_a_period() {
    let api = MockApi::new();
    let clock = clock();
    coordinator_pod(&api, "coordinator-a");
    let mut a = Replica::start(&api, "coordinator-a", &clock);
    a.becomes(true).await;
    until_labelled(&api, &["coordinator-a"], period()).await;

    // Another holder renewed the Lease (as after a partition healed).
    let now = leader::created(NS, "", LEASE_DURATION, clock());
    let renew = serde_json::to_value(&now.spec.unwrap().renew_time).unwrap();
    api.update(LEASES, NS, LEASE_NAME, |l: &mut Value| {
        l["spec"]["holderIdentity"] = json!("coordinator-x");
        l["spec"]["renewTime"] = renew;
    })
    .expect("the Lease exists");
    a.becomes(false).await;
    until_labelled(&api, &[], Duration::from_millis(100)).await;
    a.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_leader_reasserts_the_labels_every_period() {
    let api = MockApi::new();
    let clock = clock();
    coordinator_pod(&api, "coordinator-a");
    coordinator_pod(&api, "coordinator-b");
    let mut a = Replica::start(&api, "coordinator-a", &clock);
    a.becomes(true).await;
    until_labelled(&api, &["coordinator-a"], period()).await;

    // Someone removes the leader's label and labels a pod that does not lead.
    api.update(PODS, NS, "coordinator-a", |p: &mut Value| {
        p["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(LEADER_LABEL);
    });
    api.update(PODS, NS, "coordinator-b", |p: &mut Value| {
        p["metadata"]["labels"][LEADER_LABEL] = json!("true");
    });
    until_labelled(
        &api,
        &["coordinator-a"],
        period() + Duration::from_millis(100),
    )
    .await;
    assert!(*a.is_leader.borrow());

    // Shutting down releases the Lease and removes the label.
    a.cancel.cancel();
    until_labelled(&api, &[], period()).await;
    for t in a.tasks {
        t.await.unwrap();
    }
    let lease = api.object(LEASES, NS, LEASE_NAME).unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null());
}
