//! Warm gates end to end on loopback: the real coordinator and agent link,
//! the real agent warming through containerd, and the coordinator's gate
//! and deploy-group loops against the in-memory API server
//! ([`prewarm::testkit::apiserver::MockApi`]), which records every request
//! so the exact patches can be asserted.

use std::time::Duration;

use prewarm::coordinator::deploys::{self, DeployOptions};
use prewarm::coordinator::gate::{self, GateOptions};
use prewarm::node::runtime::ImageStore;
use prewarm::plan::deploy::HttpCheckPolicy;
use prewarm::testkit::apiserver::{Identity, MockApi, Policy, Recorded};
use prewarm::testkit::containerd::Version;
use prewarm::wire::v1::image_state::Phase;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::{fake_agent, wait_for, wait_present, Rig};

pub(crate) const PODS: &str = "api/v1/pods";
pub(crate) const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
pub(crate) const GROUPS: &str = "apis/prewarm.dev/v1alpha1/deploygroups";
const SCALED: &str = "apis/keda.sh/v1alpha1/scaledobjects";

pub(crate) fn gated_pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "integrations", "uid": format!("uid-{name}"),
                     "creationTimestamp": chrono::Utc::now().to_rfc3339(),
                     "labels": {"prewarm.dev/gate": "true", "app": "orders-sync"}},
        "spec": {
            "schedulingGates": [{"name": "prewarm.dev/warm"}],
            "nodeSelector": {"kubernetes.azure.com/agentpool": "integrations"},
            "containers": [{"name": "app", "image": image}]
        }
    })
}

fn patches_to(api: &MockApi, path_end: &str) -> Vec<Recorded> {
    api.writes()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(path_end))
        .collect()
}

/// A scaled-from-zero fail-closed pod (only ever released warm) is held
/// until the real agent on node-a has pulled its image (on an urgent
/// intent), then released onto node-a only; node-b, which never gets warm,
/// is left out of the affinity. A fail-open pod would have been released
/// cold at once: nothing was pulling its image (see `benches/gate_cold.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_is_released_onto_the_node_that_warmed_its_image() {
    let rig = Rig::start(Version::V2).await;
    let (coord, cancel) = (&rig.coord, &rig.cancel);
    let image = rig.up.image("shapes/docker");
    fake_agent(
        &rig.endpoint,
        rig.dir.path(),
        "tok-b",
        "node-b",
        &[],
        cancel,
    );
    let state = coord.state.clone();
    wait_for("both agents attached", 30, || state.view().connected() == 2).await;

    let api = MockApi::new();
    let mut pod = gated_pod("orders-sync-0", &image);
    pod["metadata"]["annotations"] = json!({"prewarm.dev/gate-policy": "fail-closed"});
    api.put(PODS, pod);
    let (_leader_tx, leader) = watch::channel(true);
    let opts = GateOptions {
        tick: Duration::from_millis(200),
        reevaluate: Duration::from_millis(100),
        ..Default::default()
    };
    tokio::spawn(gate::run(
        api.coordinator_client(),
        coord.state.clone(),
        opts,
        leader,
        cancel.clone(),
    ));

    // The urgent intent names both candidates; only node-a can warm.
    wait_for("an urgent intent", 30, || {
        state
            .intents
            .borrow()
            .iter()
            .any(|i| i.id.starts_with("Gate/"))
    })
    .await;
    let intent = state
        .intents
        .borrow()
        .iter()
        .find(|i| i.id.starts_with("Gate/"))
        .cloned()
        .unwrap();
    assert_eq!(intent.nodes, vec!["node-a", "node-b"]);
    assert_eq!(intent.priority, 1000);
    assert_eq!(intent.images, vec![image.clone()]);

    wait_present(
        &rig.store,
        &image,
        "node-a never warmed the gated pod's image",
    )
    .await;
    assert!(
        api.wait_for(Duration::from_secs(30), |r| r
            .iter()
            .any(|r| r.method == "PATCH"))
            .await,
        "the pod was never released"
    );
    let released = patches_to(&api, "/pods/orders-sync-0");
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(
        released[0].body.as_ref().unwrap(),
        &json!([
            {"op": "test", "path": "/spec/schedulingGates/0/name", "value": "prewarm.dev/warm"},
            {"op": "remove", "path": "/spec/schedulingGates/0"},
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}]}
                ]}}}}
        ])
    );
    let pod = api.object(PODS, "integrations", "orders-sync-0").unwrap();
    assert!(pod["spec"]["schedulingGates"]
        .as_array()
        .unwrap()
        .is_empty());
    // Released: the urgent intent is withdrawn.
    wait_for("the urgent intent withdrawn", 10, || {
        !state
            .intents
            .borrow()
            .iter()
            .any(|i| i.id.starts_with("Gate/"))
    })
    .await;
    assert!(state
        .view()
        .node("node-a")
        .unwrap()
        .images
        .values()
        .any(|i| i.phase == Phase::Warm as i32));

    // The released pod's container is about to start on node-a: its image
    // must stay pinned after the urgent intent ended, with no pin flap.
    // Once node-a reports another intent's image, it has acted on the end.
    let next = rig.up.image("shapes/zstd");
    state.publish(
        "test",
        vec![prewarm::wire::v1::Intent {
            id: "Deployment/integrations/other@1".into(),
            images: vec![next.clone()],
            deadline_unix: chrono::Utc::now().timestamp() + 3600,
            nodes: vec!["node-a".into()],
            ..Default::default()
        }],
    );
    wait_for("node-a reports the next intent", 60, || {
        state
            .view()
            .node("node-a")
            .is_some_and(|n| n.images.contains_key(&next))
    })
    .await;
    let st = rig.store.image_status(&image).await.unwrap().unwrap();
    assert!(
        st.pinned,
        "the released pod's image was unpinned when the urgent intent ended"
    );
    assert_eq!(
        crate::common::metric(
            rig.agent.addr,
            "prewarm_pin_changes_total{change=\"unpin\"}"
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "a pin flapped"
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    rig.stop().await;
}

pub(crate) fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "integrations", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"replicas": 1, "paused": true,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeSelector": {"kubernetes.azure.com/agentpool": "integrations"},
                                       "containers": [{"name": "app", "image": image}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    })
}

/// Plays the deployment controller: an unpaused Deployment whose spec
/// changed rolls out at once.
pub(crate) fn roll_unpaused(api: &MockApi, cancel: &CancellationToken) {
    let (api, cancel) = (api.clone(), cancel.clone());
    tokio::spawn(async move {
        while !cancel.is_cancelled() {
            for d in api.objects(DEPLOYMENTS) {
                let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
                let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
                let observed = d["status"]["observedGeneration"].as_i64().unwrap_or(0);
                if !paused && observed < generation {
                    let name = d["metadata"]["name"].as_str().unwrap().to_string();
                    api.update(DEPLOYMENTS, "integrations", &name, |d| {
                        d["status"]["observedGeneration"] = json!(generation);
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// A validation endpoint answering 200.
pub(crate) async fn healthy_endpoint() -> String {
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Reached by name: checks never go to IP literals (see the opt-in below).
    format!("http://localhost:{}/healthz", addr.port())
}

/// A changed template in a two-member group: the first member's new image
/// is warmed by the real agent, then it is unpaused with its ScaledObject
/// paused, validated over HTTP, quiesced and paused again; the second
/// member, unchanged, is never unpaused. `prewarm status deploys` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_group_warms_rolls_validates_and_pauses_one_member() {
    let rig = Rig::start(Version::V17).await;
    let (coord, cancel) = (&rig.coord, &rig.cancel);
    let image = rig.up.image("shapes/docker");
    let state = coord.state.clone();
    wait_for("the agent attached", 30, || state.view().connected() == 1).await;

    // The namespace grants the coordinator its deploy-group rights, as
    // config/integrations-deploygroup.yaml's RoleBinding does for `erp`.
    let policy = Policy::shipped().with_role_binding(
        "integrations",
        deploys::DEPLOYGROUP_ROLE,
        &Identity::coordinator(),
    );
    let api = MockApi::with_policy(policy);
    api.put(
        DEPLOYMENTS,
        deployment("orders-api", "reg.invalid/orders-api:1"),
    );
    api.put(
        DEPLOYMENTS,
        deployment("billing-api", "reg.invalid/billing-api:1"),
    );
    api.put(
        SCALED,
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
               "metadata": {"name": "orders-api-scaler", "namespace": "integrations"},
               "spec": {"scaleTargetRef": {"name": "orders-api"}, "minReplicaCount": 0}}),
    );
    let url = healthy_endpoint().await;
    api.put(
        GROUPS,
        json!({"apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
               "metadata": {"name": "integrations", "namespace": "integrations", "generation": 1},
               "spec": {"members": [{"deployment": "orders-api", "httpCheck": {"url": url, "interval": "1s"}},
                                    {"deployment": "billing-api"}],
                        "quiesce": "1s", "warmTimeout": "2m"}}),
    );
    roll_unpaused(&api, cancel);
    let (_leader_tx, leader) = watch::channel(true);
    // The local check endpoint is outside the cluster's Services: opted in
    // as with `--http-check-allow-host localhost`.
    let allow = vec!["localhost".parse().unwrap()];
    let opts = DeployOptions {
        resync: Duration::from_millis(200),
        http_checks: HttpCheckPolicy::new("cluster.local", allow).unwrap(),
        ..Default::default()
    };
    tokio::spawn(deploys::run(
        api.coordinator_client(),
        coord.state.clone(),
        opts,
        leader,
        cancel.clone(),
    ));

    // Adopted: the current templates are the baseline.
    let status = |api: &MockApi| {
        api.object(GROUPS, "integrations", "integrations")
            .map(|g| g["status"].clone())
            .unwrap_or(Value::Null)
    };
    assert!(
        api.wait_for(Duration::from_secs(20), |_| status(&api)["deployed"]
            .as_object()
            .is_some_and(|d| d.len() == 2))
            .await,
        "members not adopted: {}",
        status(&api)
    );
    assert_eq!(status(&api)["phase"], "Idle");

    // A new template for orders-api starts its step.
    api.update(DEPLOYMENTS, "integrations", "orders-api", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        d["metadata"]["generation"] = json!(2);
    });
    wait_present(
        &rig.store,
        &image,
        "the step's image was never warmed on node-a",
    )
    .await;
    assert!(
        api.wait_for(Duration::from_secs(60), |_| {
            status(&api)["results"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["member"] == "orders-api" && r["result"] == "Succeeded")
            })
        })
        .await,
        "the step never succeeded: {}",
        status(&api)
    );
    let st = status(&api);
    assert_eq!(st["phase"], "Idle", "{st}");
    assert!(st.get("step").is_none() || st["step"].is_null(), "{st}");

    // The exact writes to orders-api and its ScaledObject, in order.
    let writes: Vec<(String, Value)> = api
        .writes()
        .into_iter()
        .filter(|r| {
            r.method == "PATCH"
                && (r.path.contains("/deployments/") || r.path.contains("/scaledobjects/"))
        })
        .map(|r| {
            (
                r.path.rsplit('/').next().unwrap().to_string(),
                r.body.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        vec![
            (
                "orders-api-scaler".to_string(),
                json!({"metadata": {"annotations": {"autoscaling.keda.sh/paused": "true"}}})
            ),
            ("orders-api".to_string(), json!({"spec": {"paused": false}})),
            ("orders-api".to_string(), json!({"spec": {"paused": true}})),
            (
                "orders-api-scaler".to_string(),
                json!({"metadata": {"annotations": {"autoscaling.keda.sh/paused": null}}})
            ),
        ]
    );
    let billing = api
        .object(DEPLOYMENTS, "integrations", "billing-api")
        .unwrap();
    assert_eq!(billing["spec"]["paused"], true);

    // `prewarm status deploys` over the coordinator's HTTP API.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "status",
            "--coordinator",
            &format!("http://{}", coord.http_addr),
            "deploys",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("integrations/integrations (2 members: orders-api → billing-api)"),
        "{text}"
    );
    assert!(text.contains("orders-api: Succeeded"), "{text}");
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    rig.stop().await;
}

/// The admission webhook over HTTPS with the serving certificate from
/// files: a labelled pod's review comes back with the gate patch, and a
/// body that is not a review is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gates_labelled_pods_over_https() {
    use base64::Engine as _;
    let dir = crate::link::serving_certificate();
    let d = dir.path();
    let cancel = CancellationToken::new();
    let cert =
        prewarm::coordinator::tls::CertReloader::load(&d.join("tls.crt"), &d.join("tls.key"))
            .unwrap();
    let addr = prewarm::coordinator::https::serve(
        "127.0.0.1:0".parse().unwrap(),
        cert,
        None,
        cancel.clone(),
    )
    .await
    .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.crt")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/mutate-pods", addr.port());
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "7f0c", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                    "object": {"metadata": {"labels": {"prewarm.dev/gate": "true"}},
                               "spec": {"containers": [{"name": "c", "image": "r/a:1"}]}}}});
    let resp: Value = http
        .post(&url)
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["response"]["uid"], "7f0c");
    assert_eq!(resp["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["response"]["patch"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&patch).unwrap(),
        json!([{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "prewarm.dev/warm"}]}])
    );
    let bad = http
        .post(&url)
        .json(&json!({"kind": "Pod"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/mutate-pods", addr.port()))
            .await
            .is_err()
    );
    cancel.cancel();
}
