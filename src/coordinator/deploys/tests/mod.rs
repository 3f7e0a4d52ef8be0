//! The deploy-group effector end to end: the real [`run`] against the
//! in-memory API server of `testkit::apiserver`, with the cluster view
//! written directly (no agents). A task plays the deployment controller and
//! a local HTTP endpoint answers the checks. The exact patches, Jobs, Events
//! and status writes are asserted from the server's request log.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use chrono::DateTime;
use tokio::task::JoinHandle;

use super::*;
use crate::plan::rollout::images_hash;
use crate::plan::view::POOL_LABEL;
use crate::testkit::apiserver::{MockApi, Policy, Recorded};
use crate::wire::deploygroup::template_hash;
use crate::wire::v1::{image_state::Phase, ImageState, Snapshot};

/// The namespace of config/integrations-deploygroup.yaml, whose RoleBinding
/// grants the coordinator ClusterRole prewarm-deploygroup there.
const NS: &str = "erp";
const GROUP_NAME: &str = "g";
const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
const REPLICASETS: &str = "apis/apps/v1/replicasets";
const GROUPS: &str = "apis/prewarm.dev/v1alpha1/deploygroups";
const SCALED: &str = "apis/keda.sh/v1alpha1/scaledobjects";
const JOBS: &str = "apis/batch/v1/jobs";
const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const ORDERS_1: &str = "reg.io/shop/orders:1";
const ORDERS_2: &str = "reg.io/shop/orders:2";
const BILLING_1: &str = "reg.io/shop/billing:1";
const BILLING_2: &str = "reg.io/shop/billing:2";
const WEB_1: &str = "reg.io/shop/web:1";
/// Upper bound for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long "never" is watched: 15 resyncs.
const QUIET: Duration = Duration::from_millis(1500);

fn opts() -> DeployOptions {
    DeployOptions {
        resync: Duration::from_millis(100),
        http_timeout: Duration::from_secs(2),
        intent_ttl: Duration::from_secs(600),
        // The local check endpoints are reached as `localhost`, the
        // operator's opt-in (`--http-check-allow-host localhost`).
        http_checks: allow_localhost(),
    }
}

/// The shipped RBAC plus the example's RoleBinding of NS to ClusterRole
/// prewarm-deploygroup: what a namespace running DeployGroups installs.
fn deploygroup_policy() -> Policy {
    Policy::shipped().with_file("config/integrations-deploygroup.yaml")
}

/// An API server enforcing [`deploygroup_policy`].
fn api() -> MockApi {
    MockApi::with_policy(deploygroup_policy())
}

fn allow_localhost() -> deploy::HttpCheckPolicy {
    let allow = vec!["localhost".parse().unwrap()];
    deploy::HttpCheckPolicy::new("cluster.local", allow).unwrap()
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

// ---- objects ----

/// A Deployment's pod template: one container, scheduled to the `apps`
/// pool.
fn template(name: &str, image: &str) -> Value {
    json!({"metadata": {"labels": {"app": name}},
           "spec": {"nodeSelector": {POOL_LABEL: "apps"},
                    "containers": [{"name": "app", "image": image}]}})
}

fn hash_of(template: &Value) -> String {
    template_hash(&serde_json::from_value(template.clone()).unwrap())
}

/// `uid-<name>`, one replica, fully rolled out at generation 1.
fn deployment(name: &str, image: &str, paused: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"replicas": 1, "paused": paused,
                 "selector": {"matchLabels": {"app": name}},
                 "template": template(name, image)},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "availableReplicas": 1}
    })
}

/// A new image for `name`, as `kubectl set image` would do it.
fn set_image(api: &MockApi, name: &str, image: &str) {
    api.update(DEPLOYMENTS, NS, name, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        let generation = d["metadata"]["generation"].as_i64().unwrap();
        d["metadata"]["generation"] = json!(generation + 1);
    })
    .expect("deployment stored");
}

fn scaled_object(ns: &str, name: &str, target: &str) -> Value {
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": 0}})
}

/// A DeployGroup with short timings; `overrides` are merged into the spec.
fn group(name: &str, members: Value, overrides: Value) -> Value {
    let mut spec = json!({"members": members, "quiesce": "0s", "warmTimeout": "1m",
                          "rolloutTimeout": "1m", "validationTimeout": "1m"});
    for (k, v) in overrides.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
           "metadata": {"name": name, "namespace": NS, "generation": 1,
                        "uid": format!("uid-group-{name}")},
           "spec": spec})
}

/// Plays the deployment controller: an unpaused Deployment whose spec
/// changed rolls out at once.
fn roll_unpaused(api: &MockApi) {
    let api = api.clone();
    tokio::spawn(async move {
        loop {
            for d in api.objects(DEPLOYMENTS) {
                let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
                let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
                let observed = d["status"]["observedGeneration"].as_i64().unwrap_or(0);
                if !paused && observed < generation {
                    let name = d["metadata"]["name"].as_str().unwrap().to_string();
                    api.update(DEPLOYMENTS, NS, &name, |d| {
                        d["status"]["observedGeneration"] = json!(generation);
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A connected node in `pool` holding `warm`.
fn snap(node: &str, pool: &str, warm: &[&str]) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [(POOL_LABEL.to_string(), pool.to_string())]
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

/// A local validation endpoint whose status code can be changed; it counts
/// its requests and remembers when the first came.
struct Endpoint {
    url: String,
    code: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    first_hit: Arc<Mutex<Option<Instant>>>,
}

impl Endpoint {
    async fn start(code: u16) -> Endpoint {
        let code = Arc::new(AtomicU16::new(code));
        let hits = Arc::new(AtomicUsize::new(0));
        let first_hit = Arc::new(Mutex::new(None));
        let (c, h, f) = (code.clone(), hits.clone(), first_hit.clone());
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(move || {
                let (c, h, f) = (c.clone(), h.clone(), f.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    f.lock().unwrap().get_or_insert_with(Instant::now);
                    let code = axum::http::StatusCode::from_u16(c.load(Ordering::SeqCst));
                    (code.unwrap(), "health")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint {
            url: format!("http://localhost:{}/healthz", addr.port()),
            code,
            hits,
            first_hit,
        }
    }

    fn set(&self, code: u16) {
        self.code.store(code, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn first_hit(&self) -> Option<Instant> {
        *self.first_hit.lock().unwrap()
    }
}

// ---- the effector ----

struct Harness {
    api: MockApi,
    state: Arc<LinkState>,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    /// Starts the real effector on `api` with `nodes` in the view.
    fn start(api: &MockApi, leader: bool, nodes: Vec<Snapshot>) -> Harness {
        Harness::start_with(api, opts(), leader, nodes)
    }

    fn start_with(
        api: &MockApi,
        opts: DeployOptions,
        leader: bool,
        nodes: Vec<Snapshot>,
    ) -> Harness {
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
            api: api.clone(),
            state,
            leader,
            cancel,
            task,
        }
    }

    /// A node's new snapshot, as the link would apply it.
    fn report(&self, s: Snapshot) {
        self.state.update_view(|v| v.apply_snapshot(s, Utc::now()));
    }

    /// Waits for the published intents to satisfy `pred`.
    async fn wait_intents(&self, pred: impl Fn(&[Intent]) -> bool) -> Vec<Intent> {
        let mut rx = self.state.intents.subscribe();
        let got = tokio::time::timeout(WAIT, rx.wait_for(|i| pred(i))).await;
        let now = self.state.intents.borrow().to_vec();
        assert!(got.is_ok(), "intents never matched; now {now:#?}");
        now
    }

    /// Stops a scenario whose API server refuses some requests on purpose.
    async fn stop_refused(self) {
        let api = self.api.clone();
        let refused = api.forbidden().len();
        // `stop` checks refusals: clear them by checking them here.
        self.api.clear_requests();
        self.stop().await;
        assert!(refused > 0);
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the effector stops when cancelled")
            .expect("effector task");
        // Every scenario is an RBAC test of the shipped ClusterRole.
        let refused = self.api.forbidden();
        assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
    }
}

// ---- reading the result ----

fn status(api: &MockApi, group: &str) -> Value {
    api.object(GROUPS, NS, group)
        .map(|g| g["status"].clone())
        .unwrap_or(Value::Null)
}

async fn wait_status(
    api: &MockApi,
    group: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let ok = api.wait_for(WAIT, |_| pred(&status(api, group))).await;
    assert!(ok, "{what}: status is {:#}", status(api, group));
    status(api, group)
}

fn result_of(st: &Value, member: &str) -> Value {
    st["results"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["member"] == member)
        .cloned()
        .unwrap_or(Value::Null)
}

fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}

fn scaled_path(name: &str) -> String {
    format!("/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/{name}")
}

fn status_path(group: &str) -> String {
    format!("/apis/prewarm.dev/v1alpha1/namespaces/{NS}/deploygroups/{group}/status")
}

/// Every write to a Deployment or ScaledObject, in order, as
/// (path, content type, body).
fn member_writes(reqs: &[Recorded]) -> Vec<(String, String, Value)> {
    reqs.iter()
        .filter(|r| r.method != "GET")
        .filter(|r| r.path.contains("/deployments/") || r.path.contains("/scaledobjects"))
        .map(|r| {
            let body = r.body.clone().unwrap_or(Value::Null);
            (r.path.clone(), r.content_type.clone(), body)
        })
        .collect()
}

fn writes_to(reqs: &[Recorded], path: &str) -> Vec<Recorded> {
    reqs.iter()
        .filter(|r| r.method != "GET" && r.path == path)
        .cloned()
        .collect()
}

fn pause(name: &str) -> (String, String, Value) {
    let body = json!({"spec": {"paused": true}});
    (deployment_path(name), MERGE.to_string(), body)
}

fn unpause(name: &str) -> (String, String, Value) {
    let body = json!({"spec": {"paused": false}});
    (deployment_path(name), MERGE.to_string(), body)
}

fn keda(name: &str, paused: bool) -> (String, String, Value) {
    let value = if paused { json!("true") } else { Value::Null };
    let body = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: value}}});
    (scaled_path(name), MERGE.to_string(), body)
}

fn is_unpause_of(r: &Recorded, name: &str) -> bool {
    r.method == "PATCH"
        && r.path == deployment_path(name)
        && r.body.as_ref() == Some(&json!({"spec": {"paused": false}}))
}

/// Event creations with this reason.
fn events(reqs: &[Recorded], reason: &str) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{NS}/events"))
        .filter_map(|r| r.body.clone())
        .filter(|b| b["reason"] == reason)
        .collect()
}

/// The one Event with `reason`, about Deployment `name`.
fn assert_deployment_event(api: &MockApi, name: &str, warning: bool, reason: &str, message: &str) {
    let evs = events(&api.requests(), reason);
    assert_eq!(evs.len(), 1, "one {reason} Event: {evs:#?}");
    let e = &evs[0];
    assert_eq!(e["type"], if warning { "Warning" } else { "Normal" });
    assert_eq!(e["message"], message);
    assert_eq!(e["metadata"]["namespace"], NS);
    assert_eq!(
        e["involvedObject"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
               "namespace": NS, "uid": format!("uid-{name}")})
    );
}

/// The one Warning Event with `reason`, about DeployGroup `group`.
fn assert_group_event(api: &MockApi, group: &str, reason: &str, message: &str) {
    let evs: Vec<Value> = events(&api.requests(), reason)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == group)
        .collect();
    assert_eq!(evs.len(), 1, "one {reason} Event on {group}: {evs:#?}");
    let e = &evs[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["message"], message);
    assert_eq!(
        e["involvedObject"],
        json!({"apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup", "name": group,
               "namespace": NS, "uid": format!("uid-group-{group}")})
    );
}

fn seconds(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("not a number of seconds: {v}"))
}

fn timestamp(v: &Value) -> DateTime<Utc> {
    let text = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

// ---- pure helpers ----

#[test]
fn a_malformed_group_names_the_field() {
    let obj = dynamic(json!({
        "apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {"members": [{"deployment": "a", "httpCheck": {"url": "http://x", "interval": "soon"}}]}
    }));
    let err = parse_group(&obj).unwrap_err();
    assert!(
        err.starts_with("spec.members[0].httpCheck.interval: "),
        "{err}"
    );
    assert!(err.contains("invalid duration \"soon\""), "{err}");
}

mod checks;
mod inputs;
mod jobs;
mod rbac;
mod restart;
mod steps;
