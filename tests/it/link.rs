//! The agent–coordinator link for real on loopback: one agent on a real
//! containerd, others simulated; auth and node binding, malformed input,
//! and a coordinator restart that loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prewarm::agent::link::{self, LinkConfig, NodeReport};
use prewarm::agent::{Agent, AgentOptions};
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

fn tokens() -> Arc<StaticAuth> {
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

async fn coordinator(grpc: &str, cancel: &CancellationToken) -> Coordinator {
    let opts = CoordinatorOptions {
        grpc_listen: grpc.parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    };
    Coordinator::start(opts, tokens(), cancel.clone())
        .await
        .expect("coordinator starts")
}

async fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A simulated agent: the real link client fed a fixed report.
fn fake_agent(
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
    let (itx, _irx) = watch::channel(Vec::new());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_warms_on_the_eligible_node_and_status_shows_it() {
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let cancel = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &cancel).await;
    let endpoint = format!("http://{}", coord.grpc_addr);
    let dir = tempfile::tempdir().unwrap();

    // The real agent on node-a, attached to the coordinator.
    std::fs::write(dir.path().join("a.token"), "tok-a").unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "runtime: {{ socket: {}, root: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\npacing: {{ diskFloor: 0 }}\nresync: 2s\ncoordinator: {{ endpoint: \"{endpoint}\", tokenFile: {} }}\n",
            ctd.socket.display(),
            ctd.root.display(),
            ctd.hosts_dir.display(),
            dir.path().join("a.token").display()
        ),
    )
    .unwrap();
    let labels = prewarm::k8s::parse_labels("kubernetes.azure.com/agentpool=integrations").unwrap();
    let agent = Agent::start(
        AgentOptions {
            config_path: cfg,
            listen: "127.0.0.1:0".parse().unwrap(),
            node_name: "node-a".into(),
            node_labels: Some(labels),
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    // Two simulated agents; node-b already has the image.
    let image = up.image("shapes/zstd");
    fake_agent(
        &endpoint,
        dir.path(),
        "tok-b",
        "node-b",
        &[(image.as_str(), Phase::Warm)],
        &cancel,
    );
    fake_agent(&endpoint, dir.path(), "tok-c", "node-c", &[], &cancel);
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
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    for _ in 0..600 {
        if store.image_status(&image).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.image_status(&image).await.unwrap().is_some(),
        "intent was not warmed on node-a"
    );
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

    // prewarm status shows the image warm on 2 of the pool's nodes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "status",
            "--coordinator",
            &format!("http://{}", coord.http_addr),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 of 3 agents connected"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&image))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("integrations") && row.contains("2/2"), "{row}");
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
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
