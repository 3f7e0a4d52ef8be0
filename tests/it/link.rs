//! The agent–coordinator link for real on loopback: one agent on a real
//! containerd, others simulated; auth and node binding, malformed input,
//! and a coordinator restart that loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prewarm::agent::link::{self, LinkConfig, NodeReport};
use prewarm::agent::Agent;
use prewarm::coordinator::auth::StaticAuth;
use prewarm::coordinator::{Coordinator, CoordinatorOptions};
use prewarm::node::containerd::Containerd;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::link_client::LinkClient;
use prewarm::wire::v1::{agent_message, AgentMessage, Delta, ImageState, Intent, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common::{Upstream, MIB};

pub(crate) fn tokens() -> Arc<StaticAuth> {
    let map: HashMap<String, String> = [
        ("tok-a", "node-a"),
        ("tok-b", "node-b"),
        ("tok-c", "node-c"),
    ]
    .iter()
    .map(|(t, n)| (t.to_string(), n.to_string()))
    .collect();
    Arc::new(StaticAuth(map))
}

pub(crate) async fn coordinator(grpc: &str, cancel: &CancellationToken) -> Coordinator {
    let opts = CoordinatorOptions {
        grpc_listen: grpc.parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure: true,
        view_auth: None,
        retention: Default::default(),
        watch_api: false,
    };
    Coordinator::start(opts, tokens(), cancel.clone())
        .await
        .expect("coordinator starts")
}

/// A coordinator serving the link and the view over TLS with the pair in
/// `certs` (see [`serving_certificate`]), with `view_auth` guarding the view.
pub(crate) async fn tls_coordinator(
    certs: &std::path::Path,
    view_auth: Option<std::sync::Arc<dyn prewarm::coordinator::view_auth::ViewAuth>>,
    cancel: &CancellationToken,
) -> Coordinator {
    let opts = CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some((certs.join("tls.crt"), certs.join("tls.key"))),
        insecure: false,
        view_auth,
        retention: Default::default(),
        watch_api: false,
    };
    Coordinator::start(opts, tokens(), cancel.clone())
        .await
        .expect("coordinator starts")
}

pub(crate) async fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A simulated agent: the real link client fed a fixed report.
pub(crate) fn fake_agent(
    endpoint: &str,
    dir: &std::path::Path,
    token: &str,
    node: &str,
    images: &[(&str, Phase)],
    cancel: &CancellationToken,
) {
    let token_file = dir.join(format!("{node}.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut report = NodeReport {
        pin_supported: true,
        ..Default::default()
    };
    report.labels.insert(
        "kubernetes.azure.com/agentpool".into(),
        "integrations".into(),
    );
    for (name, phase) in images {
        report.images.insert(
            name.to_string(),
            ImageState {
                name: name.to_string(),
                phase: *phase as i32,
                ..Default::default()
            },
        );
    }
    let (tx, rx) = watch::channel(Arc::new(report));
    let (itx, _irx) = watch::channel(Default::default());
    let cfg = LinkConfig {
        endpoint: endpoint.to_string(),
        token_file,
        ca_file: None,
        node: node.to_string(),
    };
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let _keep = tx;
        link::run(cfg, rx, itx, cancel).await;
    });
}

/// Starts the real agent as node-a (pool integrations), attached to `endpoint`.
pub(crate) async fn agent_on_node_a(
    ctd: &TestContainerd,
    dir: &std::path::Path,
    endpoint: &str,
    cancel: &CancellationToken,
) -> Agent {
    real_agent(ctd, dir, endpoint, "node-a", "tok-a", "", cancel).await
}

/// Starts the real agent as `node` (pool integrations) with `token`,
/// attached to `endpoint`; `extra` is appended to its config file.
pub(crate) async fn real_agent(
    ctd: &TestContainerd,
    dir: &std::path::Path,
    endpoint: &str,
    node: &str,
    token: &str,
    extra: &str,
    cancel: &CancellationToken,
) -> Agent {
    let token_file = dir.join(format!("{node}.agent-token"));
    std::fs::write(&token_file, token).unwrap();
    let cfg = dir.join(format!("{node}-agent.yaml"));
    // The loopback coordinators here are --insecure; the agent must opt in
    // to a plain http:// link too.
    let insecure = endpoint.starts_with("http://");
    std::fs::write(
        &cfg,
        format!(
            "runtime: {{ socket: {}, root: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\npacing: {{ diskFloor: 0 }}\nresync: 2s\ncoordinator: {{ endpoint: \"{endpoint}\", tokenFile: {}, insecure: {insecure} }}\n{extra}",
            ctd.socket.display(),
            ctd.root.display(),
            ctd.hosts_dir.display(),
            token_file.display()
        ),
    )
    .unwrap();
    let labels = prewarm::k8s::parse_labels("kubernetes.azure.com/agentpool=integrations").unwrap();
    crate::common::start_agent(cfg, node, Some(labels), cancel).await
}

/// Waits up to 60 s for `image` in the CRI store; fails with `why`.
pub(crate) async fn wait_present(store: &Containerd, image: &str, why: &str) {
    for _ in 0..600 {
        if store.image_status(image).await.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{why}");
}

/// The end-to-end rig on loopback: a registry with the test corpus, a
/// containerd, a coordinator, and the real agent on node-a attached to it.
pub(crate) struct Rig {
    pub up: Upstream,
    /// Kept so containerd lives as long as the rig.
    pub _ctd: TestContainerd,
    pub cancel: CancellationToken,
    pub coord: Coordinator,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub agent: Agent,
    /// node-a's CRI image store.
    pub store: Containerd,
}

impl Rig {
    pub(crate) async fn start(v: Version) -> Rig {
        let up = Upstream::start(None, 4 * MIB).await;
        let ctd = TestContainerd::start(v).await.unwrap();
        let cancel = CancellationToken::new();
        let coord = coordinator("127.0.0.1:0", &cancel).await;
        let endpoint = format!("http://{}", coord.grpc_addr);
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_on_node_a(&ctd, dir.path(), &endpoint, &cancel).await;
        let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
        Rig {
            up,
            _ctd: ctd,
            cancel,
            coord,
            endpoint,
            dir,
            agent,
            store,
        }
    }

    /// Stops everything and waits for the agent to finish.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.agent.join()).await;
    }
}

/// `prewarm status` against the coordinator's HTTP address; must succeed.
pub(crate) fn status(http: std::net::SocketAddr) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(["status", "--coordinator", &format!("http://{http}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_warms_on_the_eligible_node_and_status_shows_it() {
    // The real agent on node-a, attached to the coordinator.
    let rig = Rig::start(Version::V2).await;
    let (coord, endpoint, dir, cancel) = (&rig.coord, &rig.endpoint, &rig.dir, &rig.cancel);
    // Two simulated agents; node-b already has the image.
    let image = rig.up.image("shapes/zstd");
    fake_agent(
        endpoint,
        dir.path(),
        "tok-b",
        "node-b",
        &[(image.as_str(), Phase::Warm)],
        cancel,
    );
    fake_agent(endpoint, dir.path(), "tok-c", "node-c", &[], cancel);
    let state = coord.state.clone();
    wait_for("three agents", 30, || state.view().connected() == 3).await;

    // A rollout intent for node-a (the coordinator found it eligible).
    coord.set_intents(vec![Intent {
        id: "Deployment/erp/orders-sync@1".into(),
        images: vec![image.clone()],
        reason: "new_replica_set_incomplete".into(),
        priority: 10,
        deadline_unix: chrono::Utc::now().timestamp() + 3600,
        nodes: vec!["node-a".into()],
        ..Default::default()
    }]);
    wait_present(&rig.store, &image, "intent was not warmed on node-a").await;
    let img = image.clone();
    wait_for("node-a reported warm", 30, || {
        state.view().node("node-a").is_some_and(|n| n.is_warm(&img))
    })
    .await;
    assert!(
        state
            .view()
            .node("node-c")
            .is_some_and(|n| n.images.is_empty()),
        "node-c got an intent for node-a"
    );
    // A pull big enough to measure: node-a then reports its throughput.
    let big = rig.up.image("shapes/shared-a");
    let fetched: u64 = rig
        .up
        .corpus
        .iter()
        .find(|(r, _, _)| r == "shapes/shared-a")
        .map(|(_, _, b)| b.images()[0].compressed_size())
        .unwrap();
    assert!(fetched >= 4 << 20, "too small to be a sample: {fetched}");
    assert_eq!(
        state
            .view()
            .node("node-a")
            .unwrap()
            .throughput_bytes_per_second,
        None
    );
    coord.set_intents(vec![Intent {
        id: "Deployment/erp/orders-sync@2".into(),
        images: vec![image.clone(), big.clone()],
        deadline_unix: chrono::Utc::now().timestamp() + 3600,
        nodes: vec!["node-a".into()],
        ..Default::default()
    }]);
    wait_for("node-a reported its throughput", 60, || {
        state.view().node("node-a").is_some_and(|n| {
            n.is_warm(&big) && n.throughput_bytes_per_second.is_some_and(|t| t > 0.0)
        })
    })
    .await;

    // prewarm status shows the image warm on 2 of the pool's nodes.
    let text = status(coord.http_addr);
    assert!(text.contains("3 of 3 agents connected"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&image))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("integrations") && row.contains("2/2"), "{row}");
    rig.stop().await;
}

async fn client(addr: std::net::SocketAddr) -> LinkClient<tonic::transport::Channel> {
    LinkClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Sends `msgs` as one stream with `token`; returns the first error status.
async fn attach(addr: std::net::SocketAddr, token: &str, msgs: Vec<AgentMessage>) -> tonic::Status {
    let mut c = client(addr).await;
    let mut req =
        tonic::Request::new(futures::stream::iter(msgs).chain(futures::stream::pending()));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match c.attach(req).await {
        Err(s) => s,
        Ok(resp) => {
            let mut s = resp.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Err(status)) => return status,
                    Ok(Ok(None)) => return tonic::Status::ok("stream ended"),
                    Err(_) => return tonic::Status::ok("no error within 10s"),
                }
            }
        }
    }
}

fn snap(node: &str, seq: u64) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Snapshot(Snapshot {
            node: node.into(),
            seq,
            ..Default::default()
        })),
    }
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_reports_bad_tokens_and_malformed_messages_are_refused() {
    let cancel = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &cancel).await;
    let addr = coord.grpc_addr;

    let s = attach(addr, "tok-b", vec![snap("node-c", 1)]).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("bound to node node-b"), "{s:?}");

    let s = attach(addr, "forged", vec![snap("node-b", 1)]).await;
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = attach(addr, "", vec![snap("node-b", 1)]).await;
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");

    let delta_first = AgentMessage {
        body: Some(agent_message::Body::Delta(Delta {
            seq: 1,
            ..Default::default()
        })),
    };
    let s = attach(addr, "tok-b", vec![delta_first]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");

    let stale = AgentMessage {
        body: Some(agent_message::Body::Delta(Delta {
            seq: 1,
            ..Default::default()
        })),
    };
    let s = attach(addr, "tok-b", vec![snap("node-b", 5), stale]).await;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");

    let empty = AgentMessage { body: None };
    let s = attach(addr, "tok-b", vec![snap("node-b", 1), empty]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");

    // A throughput that is not a positive number is refused, naming the field.
    let mut nan = snap("node-b", 1);
    if let Some(agent_message::Body::Snapshot(s)) = nan.body.as_mut() {
        s.throughput_bytes_per_second = Some(f64::NAN);
    }
    let s = attach(addr, "tok-b", vec![nan]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert_eq!(
        s.message(),
        "snapshot.throughput_bytes_per_second must be a positive number, got NaN"
    );
    let negative = AgentMessage {
        body: Some(agent_message::Body::Delta(Delta {
            seq: 2,
            throughput_bytes_per_second: Some(-1.0),
            ..Default::default()
        })),
    };
    let s = attach(addr, "tok-b", vec![snap("node-b", 1), negative]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert_eq!(
        s.message(),
        "delta.throughput_bytes_per_second must be a positive number, got -1"
    );

    // Oversized: refused by the size limit, not buffered.
    let mut huge = Snapshot {
        node: "node-b".into(),
        seq: 1,
        ..Default::default()
    };
    huge.labels.insert("big".into(), "x".repeat(5 << 20));
    let s = attach(
        addr,
        "tok-b",
        vec![AgentMessage {
            body: Some(agent_message::Body::Snapshot(huge)),
        }],
    )
    .await;
    assert!(
        matches!(
            s.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{s:?}"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", coord.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [
        ("foreign_node", 1),
        ("auth", 2),
        ("protocol", 2),
        ("out_of_order", 1),
        ("invalid", 2),
    ] {
        let line = format!("prewarm_coordinator_rejected_reports_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing {line}:\n{metrics}");
    }
    // Still serving: a good agent attaches afterwards.
    let s = attach(addr, "tok-b", vec![snap("node-b", 1)]).await;
    assert_eq!(s.code(), tonic::Code::Ok, "{s:?}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_rebuilds_the_view_from_agents() {
    let cancel = CancellationToken::new();
    let first = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &first).await;
    let addr = coord.grpc_addr;
    let endpoint = format!("http://{addr}");
    let dir = tempfile::tempdir().unwrap();
    fake_agent(
        &endpoint,
        dir.path(),
        "tok-b",
        "node-b",
        &[("reg.io/app:1", Phase::Warm)],
        &cancel,
    );
    fake_agent(
        &endpoint,
        dir.path(),
        "tok-c",
        "node-c",
        &[("reg.io/app:1", Phase::Pulling)],
        &cancel,
    );
    let state = coord.state.clone();
    wait_for("two agents", 30, || state.view().connected() == 2).await;

    // Kill it mid-stream and start a fresh one on the same address.
    first.cancel();
    drop(coord);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let coord = coordinator(&addr.to_string(), &cancel).await;
    let state = coord.state.clone();
    wait_for("agents to resync", 45, || {
        let v = state.view();
        v.connected() == 2 && v.node("node-b").is_some_and(|n| n.is_warm("reg.io/app:1"))
    })
    .await;
    let v = state.view();
    let c = v.node("node-c").unwrap();
    assert_eq!(
        c.images.get("reg.io/app:1").map(|i| i.phase),
        Some(Phase::Pulling as i32)
    );
    let labels: BTreeMap<String, String> = c.labels.clone();
    assert_eq!(
        labels
            .get("kubernetes.azure.com/agentpool")
            .map(String::as_str),
        Some("integrations")
    );
    drop(v);
    cancel.cancel();
}

/// A Deployment mid-rollout to `new_image`: the old ReplicaSet runs an older
/// image, the new one has no available pods yet.
fn mid_rollout(new_image: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let template = |hash: Option<&str>, image: &str| {
        let mut labels = serde_json::json!({"app": "orders-sync"});
        if let Some(h) = hash {
            labels["pod-template-hash"] = serde_json::json!(h);
        }
        serde_json::json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}})
    };
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders-sync", "namespace": "integrations", "uid": "dep-1", "generation": 2,
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "orders-sync"}}, "template": template(None, new_image)},
        "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}
    });
    let rs = |name: &str, rev: &str, hash: &str, image: &str, available: i32| {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "integrations", "uid": format!("rs-{rev}"),
                         "annotations": {"deployment.kubernetes.io/revision": rev},
                         "labels": {"app": "orders-sync", "pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-sync",
                                              "uid": "dep-1", "controller": true}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "orders-sync", "pod-template-hash": hash}},
                     "template": template(Some(hash), image)},
            "status": {"replicas": 2, "availableReplicas": available}
        })
    };
    (
        deployment,
        vec![
            rs(
                "orders-sync-old",
                "1",
                "aaaa",
                "reg.io/erp/orders-sync:1.4.1",
                2,
            ),
            rs("orders-sync-new", "2", "bbbb", new_image, 0),
        ],
    )
}

fn node(name: &str, pool: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.azure.com/agentpool": pool}},
        "spec": if pool == "system" {
            serde_json::json!({"taints": [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}]})
        } else { serde_json::json!({}) },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_change_warms_the_new_image_on_eligible_nodes() {
    use prewarm::coordinator::rollouts::{self, RolloutConfig};
    use prewarm::testkit::apiserver::MockApi;

    // The real agent on node-a.
    let rig = Rig::start(Version::V17).await;
    let (coord, cancel) = (&rig.coord, &rig.cancel);
    let image = rig.up.image("shapes/docker");

    // The API server (kube's tower-test mock) holds a Deployment whose new
    // ReplicaSet runs `image`; node-s is a tainted system node.
    let (deployment, replica_sets) = mid_rollout(&image);
    let api = MockApi::new();
    api.put("api/v1/nodes", node("node-a", "integrations"));
    api.put("api/v1/nodes", node("node-s", "system"));
    api.put("apis/apps/v1/deployments", deployment);
    for rs in replica_sets {
        api.put("apis/apps/v1/replicasets", rs);
    }
    let client = api.coordinator_client();
    let intents = coord.state.intents.clone();
    let cfg = RolloutConfig {
        namespaces: vec!["integrations".into()],
        debounce: Duration::from_millis(100),
        ..Default::default()
    };
    tokio::spawn(rollouts::run(
        client,
        cfg,
        move |v| {
            intents.send_replace(Arc::new(v));
        },
        cancel.clone(),
    ));

    // The watch turns the rollout into an intent for node-a only.
    let state = coord.state.clone();
    wait_for("an intent from the rollout", 30, || {
        !state.intents.borrow().is_empty()
    })
    .await;
    let published = state.intents.borrow().clone();
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(
        published[0]
            .id
            .starts_with("Deployment/integrations/orders-sync@"),
        "{published:?}"
    );
    assert_eq!(
        published[0].nodes,
        vec!["node-a".to_string()],
        "the tainted system node is not eligible"
    );

    // The agent warms it on its real containerd; the view and status show it.
    wait_present(&rig.store, &image, "rollout image not warmed on node-a").await;
    let img = image.clone();
    wait_for("node-a reported warm", 30, || {
        state.view().node("node-a").is_some_and(|n| n.is_warm(&img))
    })
    .await;
    let text = status(coord.http_addr);
    let row = text
        .lines()
        .find(|l| l.contains(&image))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("integrations") && row.contains("1/1"), "{row}");
    rig.stop().await;
}

/// A CA (`ca.crt`) and a serving certificate for 127.0.0.1 (`tls.crt`,
/// `tls.key`), as cert-manager would put them into the coordinator's Secret.
pub(crate) fn serving_certificate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=prewarm-test-ca -keyout ca.key -out ca.crt 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=prewarm-coordinator -keyout tls.key -out tls.csr 2>/dev/null");
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    sh("openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out tls.crt 2>/dev/null");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_runs_over_tls_with_the_serving_certificate_from_files() {
    let dir = serving_certificate();
    let d = dir.path();

    let cancel = CancellationToken::new();
    let coord = tls_coordinator(d, None, &cancel).await;
    let state = coord.state.clone();

    // An agent that trusts the CA attaches over https.
    let token_file = d.join("b.token");
    std::fs::write(&token_file, "tok-b").unwrap();
    let (tx, rx) = watch::channel(Arc::new(NodeReport::default()));
    let (itx, _irx) = watch::channel(Default::default());
    let cfg = LinkConfig {
        endpoint: format!("https://127.0.0.1:{}", coord.grpc_addr.port()),
        token_file: token_file.clone(),
        ca_file: Some(d.join("ca.crt")),
        node: "node-b".into(),
    };
    let c = cancel.clone();
    tokio::spawn(async move {
        let _keep = tx;
        link::run(cfg, rx, itx, c).await;
    });
    wait_for("a TLS agent", 30, || state.view().connected() == 1).await;

    // Plain text to the TLS port does not get a stream.
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        coord.grpc_addr.port()
    ))
    .unwrap()
    .connect()
    .await;
    if let Ok(ch) = plain {
        let mut c = LinkClient::new(ch);
        let mut req = tonic::Request::new(futures::stream::iter(vec![snap("node-c", 1)]));
        req.metadata_mut()
            .insert("authorization", "Bearer tok-c".parse().unwrap());
        assert!(
            c.attach(req).await.is_err(),
            "plain-text attach succeeded on the TLS port"
        );
    }
    assert_eq!(state.view().connected(), 1);
    cancel.cancel();
}
