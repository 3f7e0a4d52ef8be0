//! The link server on loopback: streams of one node replacing each other.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::*;
use crate::coordinator::auth::StaticAuth;
use crate::wire::v1::link_client::LinkClient;
use crate::wire::v1::{image_state::Phase, Delta, ImageState};

/// A link server with tokens `tok-<node>` for nodes n0..n99.
pub(crate) async fn serve(
    cancel: &tokio_util::sync::CancellationToken,
) -> (Arc<LinkState>, SocketAddr) {
    let tokens: HashMap<String, String> = (0..100)
        .map(|i| (format!("tok-n{i}"), format!("n{i}")))
        .collect();
    serve_with(Arc::new(StaticAuth(tokens)), cancel).await
}

/// A link server authenticating with `auth`.
pub(crate) async fn serve_with(
    auth: Arc<dyn Authenticator>,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Arc<LinkState>, SocketAddr) {
    let state = LinkState::new(auth, Arc::new(CoordinatorMetrics::new()), cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = LinkService::new(state.clone()).into_server();
    let stop = cancel.clone();
    tokio::spawn(async move {
        super::server()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            )
            .await
            .unwrap();
    });
    (state, addr)
}

pub(crate) fn snapshot(node: &str, seq: u64, images: &[&str]) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Snapshot(Snapshot {
            node: node.into(),
            seq,
            images: images
                .iter()
                .map(|i| ImageState {
                    name: i.to_string(),
                    phase: Phase::Warm as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// An attached stream: the agent's sender and the coordinator's replies,
/// after the first intent set arrived (the coordinator holds the stream).
pub(crate) struct Open {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: Streaming<CoordinatorMessage>,
}

pub(crate) async fn open(
    addr: SocketAddr,
    node: &str,
    first: AgentMessage,
) -> Result<Open, Status> {
    open_as(addr, &format!("tok-{node}"), first).await
}

pub(crate) async fn open_as(
    addr: SocketAddr,
    token: &str,
    first: AgentMessage,
) -> Result<Open, Status> {
    let mut client = LinkClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut rx = client.attach(req).await?.into_inner();
    let m = rx.message().await?.expect("the first intent set");
    assert!(matches!(
        m.body,
        Some(coordinator_message::Body::Intents(_))
    ));
    Ok(Open { tx, rx })
}

/// Waits until the coordinator has finished with the stream: its replies
/// end (the server's task is done, including its clean-up).
pub(crate) async fn ended(mut s: Streaming<CoordinatorMessage>) -> Option<Status> {
    loop {
        match s.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

/// A reconnecting agent's old stream ends after its new one attached: the
/// node stays connected, and the new stream's reports still count.
#[tokio::test]
async fn the_end_of_a_replaced_stream_leaves_the_new_one_connected() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let (state, addr) = serve(&cancel).await;
    let a = open(addr, "n1", snapshot("n1", 1, &["r/a:1"]))
        .await
        .unwrap();
    let b = open(addr, "n1", snapshot("n1", 1, &["r/b:1"]))
        .await
        .unwrap();
    drop(a.tx);
    ended(a.rx).await;
    let connected = |s: &LinkState| s.view().node("n1").map(|n| n.connected);
    assert_eq!(
        connected(&state),
        Some(true),
        "the live stream's node was marked disconnected"
    );
    assert_eq!(state.view().connected(), 1);
    assert_eq!(state.metrics.connected.get(), 1, "connected_agents");
    // B's deltas still apply; its snapshot is the record.
    let delta = AgentMessage {
        body: Some(agent_message::Body::Delta(Delta {
            seq: 2,
            upserted: vec![ImageState {
                name: "r/c:1".into(),
                phase: Phase::Warm as i32,
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let mut changes = state.view_changes.subscribe();
    b.tx.send(delta).await.unwrap();
    while !state.view().node("n1").unwrap().is_warm("r/c:1") {
        changes.changed().await.unwrap();
    }
    assert!(state.view().node("n1").unwrap().is_warm("r/b:1"));
    assert!(!state.view().node("n1").unwrap().is_warm("r/a:1"));
    drop(b.tx);
    ended(b.rx).await;
    assert_eq!(connected(&state), Some(false));
    assert_eq!(state.metrics.connected.get(), 0, "connected_agents");
    cancel.cancel();
}

/// The real TokenReview path, behind its cache, end to end: a token binds
/// the stream to its pod's node, a report for another node is refused, an
/// unknown token is unauthenticated, and an attach over the review rate is
/// told to back off.
#[tokio::test]
async fn streams_are_bound_by_token_review() {
    use crate::coordinator::auth::{TokenReviewAuth, AUDIENCE};
    use crate::coordinator::auth_cache::{CacheConfig, CachedAuth};
    use crate::testkit::apiserver::{BoundToken, MockApi};
    let api = MockApi::new();
    for n in ["n1", "n2"] {
        api.issue_token(
            &format!("sa-{n}"),
            BoundToken {
                namespace: "prewarm-node".into(),
                service_account: "prewarm-agent".into(),
                pod: Some(format!("prewarm-agent-{n}")),
                node: Some(n.into()),
                audiences: vec![AUDIENCE.into()],
            },
        );
    }
    let reviews = TokenReviewAuth::new(
        api.coordinator_client(),
        AUDIENCE,
        "prewarm-node",
        "prewarm-agent",
    );
    let cfg = CacheConfig {
        reviews_per_second: 0.001,
        burst: 3,
        ..CacheConfig::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let (state, addr) = serve_with(Arc::new(CachedAuth::new(reviews, cfg)), &cancel).await;
    let code = |r: Result<Open, Status>| r.err().map(|s| (s.code(), s.message().to_string()));
    let ok = open_as(addr, "sa-n1", snapshot("n1", 1, &[]))
        .await
        .unwrap();
    assert_eq!(
        code(open_as(addr, "sa-n1", snapshot("n2", 1, &[])).await),
        Some((
            tonic::Code::PermissionDenied,
            "this stream is bound to node n1; a report for n2 is not accepted".into()
        ))
    );
    let (c, m) = code(open_as(addr, "forged", snapshot("n1", 1, &[])).await).unwrap();
    assert_eq!(c, tonic::Code::Unauthenticated, "{m}");
    // Three reviews made (sa-n1 once, forged once... and sa-n2 now); the
    // next new token is over the rate.
    let _n2 = open_as(addr, "sa-n2", snapshot("n2", 1, &[]))
        .await
        .unwrap();
    let (c, m) = code(open_as(addr, "other", snapshot("n1", 1, &[])).await).unwrap();
    assert_eq!(c, tonic::Code::ResourceExhausted, "{m}");
    assert!(m.contains("too many token reviews"), "{m}");
    assert_eq!(state.view().connected(), 2);
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    drop(ok);
    cancel.cancel();
}

/// The link's receive windows are bounded ([`STREAM_WINDOW`]): a snapshot
/// several times larger still arrives whole (flow control paces it, it
/// does not stall), and the stream's deltas after it still apply.
#[tokio::test]
async fn a_snapshot_larger_than_the_receive_windows_arrives_and_the_stream_goes_on() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let (state, addr) = serve(&cancel).await;
    let names: Vec<String> = (0..5000)
        .map(|k| format!("r.example/team/{}/service-{k}:1", "x".repeat(200)))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = snapshot("n1", 1, &refs);
    let size = prost::Message::encoded_len(&first);
    assert!(
        size > 4 * CONNECTION_WINDOW as usize,
        "the snapshot ({size} bytes) must exceed the windows"
    );
    let s = open(addr, "n1", first).await.unwrap();
    assert_eq!(state.view().node("n1").unwrap().images.len(), 5000);
    let delta = AgentMessage {
        body: Some(agent_message::Body::Delta(Delta {
            seq: 2,
            removed: vec![names[0].clone()],
            ..Default::default()
        })),
    };
    s.tx.send(delta).await.unwrap();
    let mut changes = state.view_changes.subscribe();
    while state.view().node("n1").unwrap().images.len() != 4999 {
        changes.changed().await.unwrap();
    }
    assert!(!state
        .view()
        .node("n1")
        .unwrap()
        .images
        .contains_key(&names[0]));
    drop(s.tx);
    ended(s.rx).await;
    cancel.cancel();
}
