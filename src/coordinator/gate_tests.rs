//! The gate effector end to end: the real [`run`] against the in-memory API
//! server of `testkit::apiserver`, with the cluster view written directly.
//! Every request the gate sends is asserted exactly: the JSON Patch of each
//! release, the pod as stored afterwards, and the Events.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::*;
use crate::plan::gate::{
    EstimateConfig, GATE, GATE_LABEL, HOSTNAME_LABEL, INTENT_REASON, POLICY_ANNOTATION,
    TIMEOUT_ANNOTATION,
};
use crate::plan::rollout::images_hash;
use crate::plan::view::POOL_LABEL;
use crate::testkit::apiserver::{MockApi, Recorded};
use crate::wire::v1::{image_state::Phase, ImageState, Snapshot, Taint as WireTaint};

const APP: &str = "myregistry.azurecr.io/erp/app:1.0";
const SIDECAR: &str = "myregistry.azurecr.io/erp/sidecar:2.1";
const PODS: &str = "api/v1/pods";
const JSON_PATCH: &str = "application/json-patch+json";
const REQUIRED: &str = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
/// Upper bound for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long "never" is watched: 15 ticks, 30 re-evaluation periods.
const QUIET: Duration = Duration::from_millis(1500);

/// Pulls never stall here unless a test says so: its clock is real.
fn opts(timeout: Duration) -> GateOptions {
    GateOptions {
        cfg: GateConfig {
            timeout,
            estimate: EstimateConfig {
                stall_after: Duration::from_secs(3600),
                ..EstimateConfig::default()
            },
            ..GateConfig::default()
        },
        concurrency: 4,
        tick: Duration::from_millis(100),
        reevaluate: Duration::from_millis(50),
        clock: crate::coordinator::WallClock::default(),
        pull_secrets: None,
    }
}

/// A connected node in `pool` whose `kubernetes.io/hostname` label is
/// `host-<node>` (so patches visibly use the label, not the node name).
fn snap(node: &str, pool: &str, warm: &[&str]) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [
            (POOL_LABEL.to_string(), pool.to_string()),
            (HOSTNAME_LABEL.to_string(), format!("host-{node}")),
        ]
        .into_iter()
        .collect(),
        images: warm
            .iter()
            .map(|i| ImageState {
                name: i.to_string(),
                phase: Phase::Warm as i32,
                ..Default::default()
            })
            .collect(),
        seq: 1,
        ..Default::default()
    }
}

fn tainted(mut s: Snapshot, key: &str) -> Snapshot {
    s.taints.push(WireTaint {
        key: key.into(),
        value: "true".into(),
        effect: "NoSchedule".into(),
    });
    s
}

struct Harness {
    api: MockApi,
    state: Arc<LinkState>,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    /// Starts the real gate with `nodes` in the view.
    fn start(opts: GateOptions, leader: bool, nodes: Vec<Snapshot>) -> Harness {
        let api = MockApi::new();
        let cancel = CancellationToken::new();
        let state = LinkState::with_nodes(nodes, cancel.clone());
        let (leader, rx) = watch::channel(leader);
        let task = tokio::spawn(run(
            api.coordinator_client(),
            state.clone(),
            opts,
            rx,
            cancel.clone(),
        ));
        Harness {
            api,
            state,
            leader,
            cancel,
            task,
        }
    }

    /// Changes the view as the link would, and tells the gate.
    fn view(&self, f: impl FnOnce(&mut crate::plan::view::ClusterView)) {
        self.state.update_view(f);
    }

    fn pod(&self, ns: &str, name: &str) -> Value {
        self.api.object(PODS, ns, name).expect("pod stored")
    }

    async fn wait_patches(&self, n: usize) -> Vec<Recorded> {
        let ok = self.api.wait_for(WAIT, |r| patches(r).len() >= n).await;
        assert!(ok, "expected {n} patches, got {:#?}", self.api.writes());
        patches(&self.api.requests())
    }

    async fn wait_event(&self, reason: &str) -> Recorded {
        let ok = self
            .api
            .wait_for(WAIT, |r| !events(r, reason).is_empty())
            .await;
        assert!(ok, "no {reason} Event: {:#?}", self.api.writes());
        events(&self.api.requests(), reason).remove(0)
    }

    /// Waits for the gate's published intents to satisfy `pred`.
    async fn wait_intents(&self, pred: impl Fn(&[Intent]) -> bool) -> Vec<Intent> {
        let mut rx = self.state.intents.subscribe();
        let got = tokio::time::timeout(WAIT, rx.wait_for(|i| pred(&gate_intents(i)))).await;
        let now = gate_intents(&self.state.intents.borrow());
        assert!(got.is_ok(), "intents never matched; now {now:#?}");
        now
    }

    /// Asserts that no write (PATCH, POST, ...) happens within [`QUIET`].
    async fn assert_no_writes(&self) {
        let wrote = self
            .api
            .wait_for(QUIET, |r| r.iter().any(|r| r.method != "GET"))
            .await;
        assert!(!wrote, "unexpected writes: {:#?}", self.api.writes());
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("gate stops when cancelled")
            .expect("gate task");
        // Every scenario is an RBAC test of the shipped ClusterRole.
        let refused = self.api.forbidden();
        assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
    }
}

fn gate_intents(all: &[Intent]) -> Vec<Intent> {
    all.iter()
        .filter(|i| i.id.starts_with("Gate/"))
        .cloned()
        .collect()
}

fn patches(reqs: &[Recorded]) -> Vec<Recorded> {
    reqs.iter()
        .filter(|r| r.method == "PATCH")
        .cloned()
        .collect()
}

/// Event creations with this reason.
fn events(reqs: &[Recorded], reason: &str) -> Vec<Recorded> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .filter(|r| r.body.as_ref().is_some_and(|b| b["reason"] == reason))
        .cloned()
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A gated pod as a ReplicaSet would create it: labelled, gated by
/// [`GATE`] only, one container per image, controlled by `owner`;
/// `spec` and `metadata` entries are merged over those defaults.
fn gated_pod(
    ns: &str,
    name: &str,
    owner: &str,
    images: &[&str],
    created: DateTime<Utc>,
    spec: Value,
    metadata: Value,
) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, img)| json!({"name": format!("c{i}"), "image": img}))
        .collect();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("uid-{ns}-{name}"),
            "creationTimestamp": rfc3339(created),
            "labels": {GATE_LABEL: "true", "app": owner},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": owner, "uid": format!("uid-{owner}"), "controller": true}],
        },
        "spec": {"containers": containers, "schedulingGates": [{"name": GATE}]},
    });
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        pod["spec"][k] = v;
    }
    for (k, v) in metadata.as_object().cloned().unwrap_or_default() {
        pod["metadata"][k] = v;
    }
    pod
}

/// The usual gated pod: `erp/app-7d9-a` of ReplicaSet `app-7d9`, running
/// APP, created now, with `spec` merged into its pod spec.
fn app_pod(spec: Value) -> Value {
    gated_pod(
        "erp",
        "app-7d9-a",
        "app-7d9",
        &[APP],
        Utc::now(),
        spec,
        json!({}),
    )
}

fn hostname_in(values: &[&str]) -> Value {
    json!({"key": HOSTNAME_LABEL, "operator": "In", "values": values})
}

/// `test` + `remove` of our gate at index `i`.
fn ungate_ops(i: usize) -> Vec<Value> {
    vec![
        json!({"op": "test", "path": format!("/spec/schedulingGates/{i}/name"), "value": GATE}),
        json!({"op": "remove", "path": format!("/spec/schedulingGates/{i}")}),
    ]
}

/// The whole required node affinity narrowed to `hosts`.
fn narrowed_affinity(hosts: &[&str]) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [hostname_in(hosts)]}]}}})
}

/// Ungate at `i`, then add the whole affinity narrowed to `hosts`.
fn release_ops(i: usize, hosts: &[&str]) -> Value {
    let mut ops = ungate_ops(i);
    ops.push(json!({"op": "add", "path": "/spec/affinity", "value": narrowed_affinity(hosts)}));
    Value::Array(ops)
}

fn assert_patch(r: &Recorded, ns: &str, name: &str, body: &Value) {
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.path, format!("/api/v1/namespaces/{ns}/pods/{name}"));
    assert_eq!(r.content_type, JSON_PATCH);
    assert_eq!(r.body.as_ref(), Some(body), "patch of {ns}/{name}");
}

fn patch_for<'a>(ps: &'a [Recorded], ns: &str, name: &str) -> &'a Recorded {
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let mine: Vec<&Recorded> = ps.iter().filter(|r| r.path == path).collect();
    assert_eq!(mine.len(), 1, "exactly one patch of {ns}/{name}: {ps:#?}");
    mine[0]
}

/// A Warning Event about the pod, with exactly this reason and message.
fn assert_event(r: &Recorded, ns: &str, name: &str, reason: &str, message: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/api/v1/namespaces/{ns}/events"));
    let b = r.body.as_ref().expect("event body");
    assert_eq!(b["type"], "Warning");
    assert_eq!(b["reason"], reason);
    assert_eq!(b["message"], message);
    assert_eq!(b["metadata"]["namespace"], ns);
    assert_eq!(
        b["involvedObject"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
            "uid": format!("uid-{ns}-{name}")})
    );
}

fn not_a_duration(raw: &str) -> String {
    format!("annotation {TIMEOUT_ANNOTATION}: {raw:?} is not a duration (use 90s, 10m or 1h)")
}

// ---- warm releases ----

#[tokio::test]
async fn warm_pods_are_released_onto_exactly_the_warm_eligible_nodes() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![
            snap("n1", "apps", &[APP, SIDECAR]),
            snap("n2", "apps", &[SIDECAR, APP]),
            // Only one of the two images.
            snap("n3", "apps", &[APP]),
            // Another pool: not eligible for the nodeSelector.
            snap("n4", "batch", &[APP, SIDECAR]),
            // Disconnected below.
            snap("n5", "apps", &[APP, SIDECAR]),
            // Tainted without toleration.
            tainted(snap("n6", "apps", &[APP, SIDECAR]), "dedicated"),
        ],
    );
    h.view(|v| v.disconnect("n5"));
    let now = Utc::now();
    // Our gate between two others: removed at index 1, the others stay.
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "app-7d9-a",
            "app-7d9",
            &[APP, SIDECAR],
            now,
            json!({
                "nodeSelector": {POOL_LABEL: "apps"},
                "schedulingGates": [{"name": "example.com/quota"}, {"name": GATE},
                    {"name": "example.com/other"}],
            }),
            json!({}),
        ),
    );
    // Own required affinity instead of a nodeSelector: narrowed by
    // appending to its term; n3 counts here (one image only).
    let own_term = json!({"key": POOL_LABEL, "operator": "In", "values": ["apps"]});
    h.api.put(
        PODS,
        gated_pod(
            "billing",
            "api-5c4-x",
            "api-5c4",
            &[APP],
            now,
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [own_term]}]}}}}),
            json!({}),
        ),
    );

    let ps = h.wait_patches(2).await;
    assert_patch(
        patch_for(&ps, "erp", "app-7d9-a"),
        "erp",
        "app-7d9-a",
        &release_ops(1, &["host-n1", "host-n2"]),
    );
    let mut b_ops = ungate_ops(0);
    b_ops.push(json!({"op": "add",
        "path": format!("{REQUIRED}/nodeSelectorTerms/0/matchExpressions/-"),
        "value": hostname_in(&["host-n1", "host-n2", "host-n3"])}));
    assert_patch(
        patch_for(&ps, "billing", "api-5c4-x"),
        "billing",
        "api-5c4-x",
        &Value::Array(b_ops),
    );

    let a = h.pod("erp", "app-7d9-a");
    assert_eq!(
        a["spec"]["schedulingGates"],
        json!([{"name": "example.com/quota"}, {"name": "example.com/other"}])
    );
    assert_eq!(
        a["spec"]["affinity"],
        narrowed_affinity(&["host-n1", "host-n2"])
    );
    assert_eq!(a["spec"]["nodeSelector"], json!({POOL_LABEL: "apps"}));
    let b = h.pod("billing", "api-5c4-x");
    assert_eq!(b["spec"]["schedulingGates"], json!([]));
    assert_eq!(
        b["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchExpressions": [own_term,
            hostname_in(&["host-n1", "host-n2", "host-n3"])]}]})
    );

    // Nothing else: no second patch once the watch shows the gate gone,
    // no Event for a warm release, no intents.
    h.assert_quiet_after(2).await;
    assert!(gate_intents(&h.state.intents.borrow()).is_empty());
    let released = &h.state.metrics.gate_released;
    assert_eq!(released.with_label_values(&["warm"]).get(), 2);
    assert_eq!(released.with_label_values(&["unwarmed"]).get(), 0);
    h.stop().await;
}

impl Harness {
    /// Asserts that after `n` writes nothing more is written within [`QUIET`].
    async fn assert_quiet_after(&self, n: usize) {
        let more = self
            .api
            .wait_for(QUIET, |r| {
                r.iter().filter(|r| r.method != "GET").count() > n
            })
            .await;
        assert!(!more, "more than {n} writes: {:#?}", self.api.writes());
    }
}

// ---- timeouts (holding for a pull: gate_hold_tests.rs) ----

#[tokio::test]
async fn fail_open_timeout_releases_with_the_gate_only_patch_and_a_warning_event() {
    // Held for n1's pull, which does not finish within the timeout.
    let h = Harness::start(
        opts(Duration::from_secs(2)),
        true,
        vec![
            pulling(snap("n1", "apps", &[]), APP),
            snap("n2", "apps", &[SIDECAR]),
        ],
    );
    let put = std::time::Instant::now();
    h.api.put(
        PODS,
        app_pod(json!({"schedulingGates": [{"name": GATE}, {"name": "example.com/quota"}]})),
    );
    // Creation is stored to the second, so the 2 s run out 1–2 s from now.
    let early = h
        .api
        .wait_for(Duration::from_millis(500), |r| !patches(r).is_empty())
        .await;
    assert!(!early, "released before the timeout");
    let ps = h.wait_patches(1).await;
    assert!(ps[0].at.duration_since(put) >= Duration::from_millis(900));
    assert_patch(&ps[0], "erp", "app-7d9-a", &Value::Array(ungate_ops(0)));
    let pod = h.pod("erp", "app-7d9-a");
    assert_eq!(
        pod["spec"]["schedulingGates"],
        json!([{"name": "example.com/quota"}])
    );
    assert!(pod["spec"].get("affinity").is_none(), "{pod:#}");

    let ev = h.wait_event("WarmGateReleasedCold").await;
    assert_event(
        &ev,
        "erp",
        "app-7d9-a",
        "WarmGateReleasedCold",
        &format!("no eligible node warm for images {APP} after 2s; released unwarmed (fail-open)"),
    );
    assert!(ev.at >= ps[0].at, "the Event follows the release");
    h.assert_quiet_after(2).await;
    let m = &h.state.metrics;
    assert_eq!(m.gate_released.with_label_values(&["unwarmed"]).get(), 1);
    assert_eq!(m.gate_timeouts.with_label_values(&["fail-open"]).get(), 1);
    h.wait_intents(|i| i.is_empty()).await;
    h.stop().await;
}

#[tokio::test]
async fn a_pod_created_longer_ago_than_the_timeout_is_released_cold_at_once() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![snap("n1", "apps", &[])],
    );
    let created = Utc::now() - chrono::Duration::hours(1);
    h.api.put(
        PODS,
        gated_pod("erp", "old-0", "old", &[APP], created, json!({}), json!({})),
    );
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "old-0", &Value::Array(ungate_ops(0)));
    assert_eq!(h.pod("erp", "old-0")["spec"]["schedulingGates"], json!([]));
    let ev = h.wait_event("WarmGateReleasedCold").await;
    assert_event(
        &ev,
        "erp",
        "old-0",
        "WarmGateReleasedCold",
        &format!(
            "no eligible node warm for images {APP} after 10m0s; released unwarmed (fail-open)"
        ),
    );
    h.assert_quiet_after(2).await;
    h.stop().await;
}

#[tokio::test]
async fn fail_closed_holds_with_one_holding_event_until_a_node_warms() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![snap("n1", "apps", &[]), snap("n2", "apps", &[])],
    );
    let created = Utc::now() - chrono::Duration::hours(1);
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "held-0",
            "held",
            &[APP],
            created,
            json!({}),
            json!({"annotations": {POLICY_ANNOTATION: "fail-closed"}}),
        ),
    );
    let ev = h.wait_event("WarmGateHolding").await;
    assert_event(
        &ev,
        "erp",
        "held-0",
        "WarmGateHolding",
        &format!("no eligible node warm for images {APP} after 10m0s; holding (fail-closed)"),
    );
    // Many ticks and several full re-evaluations later: still one Event
    // and never a patch.
    for _ in 0..3 {
        h.view(|_| {});
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.assert_quiet_after(1).await;
    let w = h.api.writes();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(patches(&w).is_empty());
    assert_eq!(
        h.pod("erp", "held-0")["spec"]["schedulingGates"],
        json!([{"name": GATE}])
    );
    let m = &h.state.metrics;
    assert_eq!(m.gate_timeouts.with_label_values(&["fail-closed"]).get(), 1);

    // A warm node still releases a held pod, warm.
    h.view(|v| v.apply_snapshot(snap("n1", "apps", &[APP]), Utc::now()));
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "held-0", &release_ops(0, &["host-n1"]));
    assert_eq!(
        h.pod("erp", "held-0")["spec"]["affinity"],
        narrowed_affinity(&["host-n1"])
    );
    h.assert_quiet_after(2).await;
    assert_eq!(events(&h.api.requests(), "WarmGateHolding").len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_malformed_timeout_annotation_warns_once_and_the_default_timeout_applies() {
    let h = Harness::start(
        opts(Duration::from_secs(2)),
        true,
        vec![pulling(snap("n1", "apps", &[]), APP)],
    );
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "app-7d9-a",
            "app-7d9",
            &[APP],
            Utc::now(),
            json!({}),
            json!({"annotations": {TIMEOUT_ANNOTATION: "soon"}}),
        ),
    );
    let ev = h.wait_event("InvalidGateAnnotation").await;
    assert_event(
        &ev,
        "erp",
        "app-7d9-a",
        "InvalidGateAnnotation",
        &not_a_duration("soon"),
    );
    // Re-decided on view changes while waiting: not warned again, and not
    // released before the default timeout (2 s here).
    for _ in 0..3 {
        h.view(|_| {});
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(patches(&h.api.requests()).is_empty(), "released early");
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "app-7d9-a", &Value::Array(ungate_ops(0)));
    let cold = h.wait_event("WarmGateReleasedCold").await;
    assert_eq!(
        cold.body.as_ref().unwrap()["message"],
        format!("no eligible node warm for images {APP} after 2s; released unwarmed (fail-open)")
    );
    h.assert_quiet_after(3).await;
    assert_eq!(events(&h.api.requests(), "InvalidGateAnnotation").len(), 1);
    h.stop().await;
}

// ---- leadership ----

#[tokio::test]
async fn only_the_leader_writes_and_publishes() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        false,
        vec![
            snap("n1", "apps", &[APP]),
            pulling(snap("n2", "apps", &[]), SIDECAR),
        ],
    );
    let now = Utc::now();
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "app-7d9-a",
            "app-7d9",
            &[APP],
            now,
            json!({}),
            json!({}),
        ),
    );
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "side-1",
            "side",
            &[SIDECAR],
            now,
            json!({}),
            json!({}),
        ),
    );
    // An expired fail-open pod and a malformed annotation: a leader would
    // write for both.
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "old-0",
            "old",
            &[SIDECAR],
            now - chrono::Duration::hours(1),
            json!({}),
            json!({"annotations": {TIMEOUT_ANNOTATION: "soon"}}),
        ),
    );
    // The gate has seen the pods (its watch request is answered) ...
    assert!(
        h.api
            .wait_for(WAIT, |r| r.iter().filter(|r| r.method == "GET").count()
                >= 2)
            .await
    );
    h.view(|_| {});
    h.assert_no_writes().await;
    assert!(gate_intents(&h.state.intents.borrow()).is_empty());

    h.leader.send(true).unwrap();
    let ps = h.wait_patches(2).await;
    assert_patch(
        patch_for(&ps, "erp", "app-7d9-a"),
        "erp",
        "app-7d9-a",
        &release_ops(0, &["host-n1"]),
    );
    assert_patch(
        patch_for(&ps, "erp", "old-0"),
        "erp",
        "old-0",
        &Value::Array(ungate_ops(0)),
    );
    let intents = h.wait_intents(|i| !i.is_empty()).await;
    assert_eq!(
        intents.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![format!(
            "Gate/erp/ReplicaSet/side@{}",
            images_hash(&[SIDECAR.to_string()])
        )]
    );
    assert_eq!(intents[0].nodes, vec!["n1", "n2"]);
    h.wait_event("InvalidGateAnnotation").await;
    h.wait_event("WarmGateReleasedCold").await;
    h.assert_quiet_after(4).await;
    h.stop().await;
}

#[tokio::test]
async fn leadership_lost_and_regained_withdraws_and_republishes_urgent_intents() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![pulling(snap("n1", "apps", &[]), APP)],
    );
    h.api.put(PODS, app_pod(json!({})));
    let first = h.wait_intents(|i| !i.is_empty()).await;
    assert_eq!(first.len(), 1);
    h.leader.send(false).unwrap();
    h.wait_intents(|i| i.is_empty()).await;
    h.leader.send(true).unwrap();
    let again = h.wait_intents(|i| !i.is_empty()).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].nodes, vec!["n1"]);
    // A new leader keeps a deadline it published less than half a TTL ago.
    assert_eq!(again[0].deadline_unix, first[0].deadline_unix);
    h.assert_no_writes().await;
    // Cancelling withdraws them too.
    let state = h.state.clone();
    h.stop().await;
    assert!(gate_intents(&state.intents.borrow()).is_empty());
}

// ---- the watch ----

#[tokio::test]
async fn the_watch_selects_only_labelled_unbound_pods() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![snap("n1", "apps", &[APP])],
    );
    let now = Utc::now();
    let mut unlabelled = gated_pod("erp", "plain-0", "plain", &[APP], now, json!({}), json!({}));
    unlabelled["metadata"]["labels"] = json!({"app": "plain"});
    h.api.put(PODS, unlabelled);
    let mut bound = gated_pod("erp", "bound-0", "bound", &[APP], now, json!({}), json!({}));
    bound["spec"]["nodeName"] = json!("n1");
    h.api.put(PODS, bound);
    h.api.put(
        PODS,
        gated_pod(
            "erp",
            "app-7d9-a",
            "app-7d9",
            &[APP],
            now,
            json!({}),
            json!({}),
        ),
    );
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "app-7d9-a", &release_ops(0, &["host-n1"]));
    h.assert_quiet_after(1).await;

    let gets: Vec<Recorded> = h
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    let watch_requests = gets
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .count();
    assert!(watch_requests >= 1, "no watch request: {gets:#?}");
    for r in &gets {
        assert_eq!(r.path, "/api/v1/pods", "{r:#?}");
        assert!(
            r.query.contains("labelSelector=prewarm.dev%2Fgate%3Dtrue"),
            "{}",
            r.query
        );
        assert!(
            r.query.contains("fieldSelector=spec.nodeName%3D"),
            "{}",
            r.query
        );
        let q: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(q["labelSelector"], "prewarm.dev/gate=true");
        assert_eq!(q["fieldSelector"], "spec.nodeName=");
    }
    h.stop().await;
}

#[path = "gate_hold_tests.rs"]
mod hold;
use hold::pulling;
