//! Workload pull secrets end to end on loopback: an htpasswd registry the
//! node has no credentials for, the real coordinator over TLS with its
//! rollout and gate loops against the in-memory API server (RBAC as
//! installed plus the namespace's RoleBinding of prewarm-pull-secrets),
//! the real agent on containerd as node-a, and simulated agents as node-b
//! (eligible for the gated pod) and node-c (eligible for nothing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use prewarm::agent::link::{self, LinkConfig, NodeReport};
use prewarm::coordinator::gate::{self, GateOptions};
use prewarm::coordinator::pull_secrets::{Publisher, PullSecrets, RolloutPublisher, ROLE};
use prewarm::coordinator::rollouts::{self, RolloutConfig};
use prewarm::node::containerd::Containerd;
use prewarm::testkit::apiserver::{Identity, MockApi, Policy};
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::wire::v1::{Intent, IntentSet};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common::{Upstream, MIB};
use crate::link::{serving_certificate, tls_coordinator, wait_for, wait_present};

const NS: &str = "integrations";
const USER: &str = "robot";
const PASSWORD: &str = "only-the-workload-knows";
const POOL: &str = "kubernetes.azure.com/agentpool";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn node(name: &str, pool: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, POOL: pool}},
           "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A paused Deployment with a new template for node-a, whose pods get the
/// pull secret from their ServiceAccount.
fn deployment(image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "orders", "namespace": NS, "generation": 2,
                        "labels": {"prewarm.dev/rollout": "true"}},
           "spec": {"replicas": 1, "paused": true,
                    "selector": {"matchLabels": {"app": "orders"}},
                    "template": {"metadata": {"labels": {"app": "orders"}},
                                 "spec": {"serviceAccountName": "orders",
                                          "nodeSelector": {"kubernetes.io/hostname": "node-a"},
                                          "containers": [{"name": "app", "image": image}]}}},
           "status": {"observedGeneration": 1}})
}

/// A fail-closed gated pod (released only onto a warm node) naming the
/// pull secret itself, for the integrations pool.
fn gated_pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "invoices-0", "namespace": NS, "uid": "uid-invoices-0",
                        "creationTimestamp": chrono::Utc::now().to_rfc3339(),
                        "labels": {"prewarm.dev/gate": "true"},
                        "annotations": {"prewarm.dev/gate-policy": "fail-closed"}},
           "spec": {"schedulingGates": [{"name": "prewarm.dev/warm"}],
                    "imagePullSecrets": [{"name": "pull"}],
                    "nodeSelector": {POOL: "integrations"},
                    "containers": [{"name": "app", "image": image}]}})
}

fn objects(api: &MockApi, registry: &str) {
    api.put("api/v1/nodes", node("node-a", "integrations"));
    api.put("api/v1/nodes", node("node-b", "integrations"));
    api.put("api/v1/nodes", node("node-c", "batch"));
    api.put(
        "api/v1/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "orders", "namespace": NS},
               "imagePullSecrets": [{"name": "pull"}]}),
    );
    let config = json!({"auths": {registry: {"auth": b64(&format!("{USER}:{PASSWORD}"))}}});
    api.put(
        "api/v1/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
               "metadata": {"name": "pull", "namespace": NS},
               "data": {".dockerconfigjson": b64(&config.to_string())}}),
    );
}

/// A simulated agent over TLS in `pool`; returns every intent set it got.
fn recording_agent(
    endpoint: &str,
    dir: &std::path::Path,
    token: &str,
    node: &str,
    pool: &str,
    cancel: &CancellationToken,
) -> Arc<Mutex<Vec<Vec<Intent>>>> {
    let token_file = dir.join(format!("{node}.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut report = NodeReport {
        pin_supported: true,
        ..Default::default()
    };
    report.labels.insert(POOL.into(), pool.into());
    let (tx, rx) = watch::channel(Arc::new(report));
    let (itx, mut irx) = watch::channel(IntentSet::default());
    let cfg = LinkConfig {
        endpoint: endpoint.to_string(),
        token_file,
        ca_file: Some(dir.join("ca.crt")),
        node: node.to_string(),
    };
    let c = cancel.clone();
    tokio::spawn(async move {
        let _keep = tx;
        link::run(cfg, rx, itx, c).await;
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while irx.changed().await.is_ok() {
            let set = irx.borrow_and_update().intents.clone();
            record.lock().unwrap().push(set);
        }
    });
    seen
}

fn with_credentials(seen: &Mutex<Vec<Vec<Intent>>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|i| !i.credentials.is_empty())
        .map(|i| i.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_the_workloads_secret_pulls_is_warmed_by_a_rollout_and_a_gate() {
    let up = Upstream::start(Some((USER, PASSWORD)), 2 * MIB).await;
    let registry = up.proxy.host();
    let rollout_image = up.image("shapes/zstd");
    let gate_image = up.image("shapes/docker");
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let certs = serving_certificate();
    let dir = certs.path();
    let cancel = CancellationToken::new();
    let coord = tls_coordinator(dir, None, &cancel).await;
    let endpoint = format!("https://127.0.0.1:{}", coord.grpc_addr.port());

    // The real agent on node-a: no registry credentials of its own.
    std::fs::write(dir.join("a.token"), "tok-a").unwrap();
    let cfg = dir.join("node-a.yaml");
    std::fs::write(
        &cfg,
        format!(
            "runtime: {{ socket: {}, root: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\npacing: {{ diskFloor: 0 }}\nresync: 2s\ncoordinator: {{ endpoint: \"{endpoint}\", tokenFile: {}, caFile: {} }}\n",
            ctd.socket.display(),
            ctd.root.display(),
            ctd.hosts_dir.display(),
            dir.join("a.token").display(),
            dir.join("ca.crt").display(),
        ),
    )
    .unwrap();
    let labels = prewarm::k8s::parse_labels(&format!("{POOL}=integrations")).unwrap();
    let agent = crate::common::start_agent(cfg, "node-a", Some(labels), &cancel).await;
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    let node_b = recording_agent(&endpoint, dir, "tok-b", "node-b", "integrations", &cancel);
    let node_c = recording_agent(&endpoint, dir, "tok-c", "node-c", "batch", &cancel);
    let state = coord.state.clone();
    wait_for("three agents over TLS", 30, || {
        state.view().connected() == 3
    })
    .await;

    let api = MockApi::with_policy(Policy::shipped().with_role_binding(
        NS,
        ROLE,
        &Identity::coordinator(),
    ));
    objects(&api, &registry);
    let secrets = PullSecrets::new(api.coordinator_client(), state.clone(), Default::default());
    tokio::spawn(secrets.clone().run(cancel.clone()));

    // 1. A rollout: the template's ServiceAccount holds the secret.
    api.put("apis/apps/v1/deployments", deployment(&rollout_image));
    let publisher = Publisher {
        state: state.clone(),
        secrets: Some(secrets.clone()),
    };
    let cfg = RolloutConfig {
        debounce: Duration::from_millis(100),
        ..Default::default()
    };
    tokio::spawn(rollouts::run(
        api.coordinator_client(),
        cfg,
        RolloutPublisher(publisher),
        cancel.clone(),
    ));
    wait_present(
        &store,
        &rollout_image,
        "node-a never warmed the rollout's private image",
    )
    .await;
    let rollout = state.intents.borrow()[0].clone();
    assert!(
        rollout.id.starts_with("Deployment/integrations/orders@"),
        "{rollout:?}"
    );
    assert_eq!(rollout.nodes, vec!["node-a"]);
    assert_eq!(rollout.credentials.len(), 1);
    assert_eq!(rollout.credentials[0].source, "integrations/pull");

    // 2. A gated pod naming the secret itself: held, warmed on node-a
    // through its urgent intent, released there.
    api.put("api/v1/pods", gated_pod(&gate_image));
    let (_leader_tx, leader) = watch::channel(true);
    let opts = GateOptions {
        tick: Duration::from_millis(200),
        reevaluate: Duration::from_millis(100),
        pull_secrets: Some(secrets.clone()),
        ..Default::default()
    };
    tokio::spawn(gate::run(
        api.coordinator_client(),
        state.clone(),
        opts,
        leader,
        cancel.clone(),
    ));
    wait_present(
        &store,
        &gate_image,
        "node-a never warmed the gated pod's private image",
    )
    .await;
    assert!(
        api.wait_for(Duration::from_secs(30), |r| r
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/pods/invoices-0")))
            .await,
        "the gated pod was never released"
    );

    // Never a pull without the secret: nothing was refused by the registry.
    let refused = crate::common::metric(
        agent.addr,
        "prewarm_pull_failures_total{reason=\"unauthorized\"}",
    )
    .await
    .unwrap_or(0.0);
    assert_eq!(refused, 0.0);
    // node-b was a candidate for the gated pod (about to run it), never
    // for the rollout; node-c, eligible for neither, got no credentials.
    let b = with_credentials(&node_b);
    assert!(b.iter().all(|id| id.starts_with("Gate/")), "{b:?}");
    assert!(
        !b.is_empty(),
        "node-b, a candidate of the gated pod, got no credentials"
    );
    assert_eq!(with_credentials(&node_c), Vec::<String>::new());
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
}
