//! Leader election: the pure decision at fixed times, and the loop against
//! kube's tower-test mock API server, asserting each request it makes.

use chrono::TimeZone;
use http::{Method, Request, Response};
use kube::client::Body;

use super::*;

const NS: &str = "prewarm-system";
const PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/prewarm-system/leases/prewarm-coordinator";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/prewarm-system/leases";

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, 8, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn lease(holder: Option<&str>, renewed: DateTime<Utc>, duration: i32, rv: &str) -> Lease {
    let mut l = created(
        NS,
        holder.unwrap_or(""),
        Duration::from_secs(duration as u64),
        renewed,
    );
    l.spec.as_mut().unwrap().holder_identity = holder.map(str::to_string);
    l.metadata.resource_version = Some(rv.to_string());
    l
}

// ---- decide ----

#[test]
fn no_lease_is_created() {
    assert_eq!(decide(None, "a", t(0)), Action::Create);
}

#[test]
fn our_own_lease_is_renewed() {
    let l = lease(Some("a"), t(0), 15, "1");
    assert_eq!(decide(Some(&l), "a", t(5)), Action::Renew);
    // Even past expiry: nobody took it yet.
    assert_eq!(decide(Some(&l), "a", t(60)), Action::Renew);
}

#[test]
fn anothers_live_lease_is_waited_for_until_it_expires() {
    let l = lease(Some("b"), t(0), 15, "1");
    assert_eq!(decide(Some(&l), "a", t(5)), Action::Wait(t(15)));
    // At the expiry instant it is still held; a microsecond later it is not.
    assert_eq!(decide(Some(&l), "a", t(15)), Action::Wait(t(15)));
    let later = t(15) + chrono::Duration::microseconds(1);
    assert_eq!(decide(Some(&l), "a", later), Action::Acquire);
}

#[test]
fn released_or_incomplete_leases_are_acquired() {
    assert_eq!(
        decide(Some(&lease(None, t(0), 15, "1")), "a", t(1)),
        Action::Acquire
    );
    assert_eq!(
        decide(Some(&lease(Some(""), t(0), 15, "1")), "a", t(1)),
        Action::Acquire
    );
    let mut l = lease(Some("b"), t(0), 15, "1");
    l.spec.as_mut().unwrap().renew_time = None;
    assert_eq!(decide(Some(&l), "a", t(1)), Action::Acquire);
    let mut l = lease(Some("b"), t(0), 15, "1");
    l.spec.as_mut().unwrap().lease_duration_seconds = None;
    assert_eq!(decide(Some(&l), "a", t(1)), Action::Acquire);
    let l = Lease::default();
    assert_eq!(decide(Some(&l), "a", t(1)), Action::Acquire);
}

#[test]
fn writes_keep_the_resource_version_and_count_transitions() {
    let l = lease(Some("b"), t(0), 15, "42");
    let taken = taken_over(&l, "a", Duration::from_secs(15), t(20));
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));
    let spec = taken.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(expiry(&taken), Some(t(35)));
    let renewed = renewed(&taken, Duration::from_secs(15), t(25));
    assert_eq!(expiry(&renewed), Some(t(40)));
    assert_eq!(renewed.metadata.resource_version.as_deref(), Some("42"));
    let released = released(&renewed, t(26));
    assert_eq!(released.spec.as_ref().unwrap().holder_identity, None);
    assert_eq!(decide(Some(&released), "b", t(26)), Action::Acquire);
    // Taking over a released Lease is not a transition from another holder.
    let again = taken_over(&released, "b", Duration::from_secs(15), t(27));
    assert_eq!(again.spec.as_ref().unwrap().lease_transitions, Some(1));
}

#[test]
fn times_round_trip_through_micro_time() {
    let at = t(0) + chrono::Duration::microseconds(123_456);
    assert_eq!(from_micro(&micro(at)), Some(at));
}

// ---- the loop against the mock API server ----

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct Server {
    handle: Handle,
}

impl Server {
    /// The next request: method, path and JSON body (Null when empty).
    async fn next(
        &mut self,
    ) -> (
        Method,
        String,
        serde_json::Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(60), self.handle.next_request())
            .await
            .expect("a request in time")
            .expect("a request");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (method, path, body, send)
    }

    async fn expect(
        &mut self,
        method: Method,
        path: &str,
    ) -> (
        serde_json::Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (m, p, body, send) = self.next().await;
        assert_eq!((m, p.as_str()), (method, path));
        (body, send)
    }
}

fn respond(
    send: tower_test::mock::SendResponse<Response<Body>>,
    status: u16,
    body: &serde_json::Value,
) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("leases \"prewarm-coordinator\": {reason}"), "reason": reason, "code": code})
}

/// The request body as the server would store it, with a new resourceVersion.
fn stored(mut body: serde_json::Value, rv: &str) -> serde_json::Value {
    body["metadata"]["resourceVersion"] = rv.into();
    body
}

fn start(
    identity: &str,
) -> (
    Server,
    Leadership,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let cancel = CancellationToken::new();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(
        client,
        NS.into(),
        identity.into(),
        Duration::from_secs(15),
        tx,
        cancel.clone(),
    ));
    (
        Server { handle },
        Leadership { is_leader: rx },
        cancel,
        task,
    )
}

async fn becomes(l: &mut Leadership, want: bool) {
    tokio::time::timeout(
        Duration::from_secs(60),
        l.is_leader.wait_for(|v| *v == want),
    )
    .await
    .expect("leadership in time")
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn acquires_by_creating_renews_with_the_resource_version_and_releases() {
    let (mut server, mut leadership, cancel, task) = start("coordinator-a");
    assert!(!leadership.is_leader());

    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 404, &status(404, "NotFound"));
    let (body, send) = server.expect(Method::POST, COLLECTION).await;
    assert_eq!(body["kind"], "Lease");
    assert_eq!(body["metadata"]["name"], LEASE_NAME);
    assert_eq!(body["metadata"]["namespace"], NS);
    assert_eq!(body["spec"]["holderIdentity"], "coordinator-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert!(body["spec"]["renewTime"].is_string());
    assert!(body["metadata"].get("resourceVersion").is_none());
    respond(send, 201, &stored(body, "100"));
    becomes(&mut leadership, true).await;

    // A third of the duration later: read, then renew with that version.
    let before = tokio::time::Instant::now();
    let (_, send) = server.expect(Method::GET, PATH).await;
    assert_eq!(before.elapsed(), Duration::from_secs(5));
    let current = lease(Some("coordinator-a"), Utc::now(), 15, "100");
    respond(send, 200, &serde_json::to_value(&current).unwrap());
    let (body, send) = server.expect(Method::PUT, PATH).await;
    assert_eq!(body["metadata"]["resourceVersion"], "100");
    assert_eq!(body["spec"]["holderIdentity"], "coordinator-a");
    respond(send, 200, &stored(body, "101"));
    assert!(leadership.is_leader());

    // Shutting down hands the Lease back, on the version last written.
    cancel.cancel();
    let (body, send) = server.expect(Method::PUT, PATH).await;
    assert_eq!(body["metadata"]["resourceVersion"], "101");
    assert!(body["spec"]
        .get("holderIdentity")
        .is_none_or(|h| h.is_null()));
    assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    respond(send, 200, &stored(body, "102"));
    task.await.unwrap();
    assert!(!leadership.is_leader());
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_for_an_expired_lease_on_409_means_follower() {
    let (mut server, leadership, cancel, task) = start("coordinator-a");
    let (_, send) = server.expect(Method::GET, PATH).await;
    let expired = lease(
        Some("coordinator-b"),
        Utc::now() - chrono::Duration::seconds(60),
        15,
        "7",
    );
    respond(send, 200, &serde_json::to_value(&expired).unwrap());
    let (body, send) = server.expect(Method::PUT, PATH).await;
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert_eq!(body["spec"]["holderIdentity"], "coordinator-a");
    assert_eq!(body["spec"]["leaseTransitions"], 1);
    respond(send, 409, &status(409, "Conflict"));

    // The winner's fresh Lease: wait, no write.
    let (_, send) = server.expect(Method::GET, PATH).await;
    assert!(!leadership.is_leader());
    let won = lease(Some("coordinator-b"), Utc::now(), 15, "8");
    respond(send, 200, &serde_json::to_value(&won).unwrap());
    let (m, p, _, send) = server.next().await;
    assert_eq!(
        (m, p.as_str()),
        (Method::GET, PATH),
        "only reads while another leads"
    );
    respond(send, 200, &serde_json::to_value(&won).unwrap());
    assert!(!leadership.is_leader());
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_steps_down_when_a_renewal_fails() {
    let (mut server, mut leadership, cancel, task) = start("coordinator-a");
    let (_, send) = server.expect(Method::GET, PATH).await;
    let released = lease(None, Utc::now(), 15, "3");
    respond(send, 200, &serde_json::to_value(&released).unwrap());
    let (body, send) = server.expect(Method::PUT, PATH).await;
    assert_eq!(body["metadata"]["resourceVersion"], "3");
    respond(send, 200, &stored(body.clone(), "4"));
    becomes(&mut leadership, true).await;

    // Someone else wrote the Lease meanwhile: our renewal conflicts.
    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 200, &stored(body, "4"));
    let (_, send) = server.expect(Method::PUT, PATH).await;
    respond(send, 409, &status(409, "Conflict"));
    becomes(&mut leadership, false).await;

    // Not the leader any more: nothing to release on shutdown.
    let (_, send) = server.expect(Method::GET, PATH).await;
    cancel.cancel();
    let other = lease(Some("coordinator-b"), Utc::now(), 15, "5");
    respond(send, 200, &serde_json::to_value(&other).unwrap());
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_steps_down_when_the_api_server_is_unreachable() {
    let (mut server, mut leadership, cancel, task) = start("coordinator-a");
    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 404, &status(404, "NotFound"));
    let (body, send) = server.expect(Method::POST, COLLECTION).await;
    respond(send, 201, &stored(body, "1"));
    becomes(&mut leadership, true).await;
    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 503, &status(503, "ServiceUnavailable"));
    becomes(&mut leadership, false).await;
    cancel.cancel();
    // No release: the Lease as last seen is unknown.
    drop(server);
    task.await.unwrap();
}

// ---- two replicas against the in-memory API server ----

/// Starts a replica on the in-memory server, as the coordinator's
/// ServiceAccount (so the Lease Role of daemonset/ is what allows it).
fn replica(
    api: &crate::testkit::apiserver::MockApi,
    identity: &str,
) -> (Leadership, CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(
        api.coordinator_client(),
        NS.into(),
        identity.into(),
        Duration::from_secs(15),
        tx,
        cancel.clone(),
    ));
    (Leadership { is_leader: rx }, cancel, task)
}

/// Two replicas racing for an absent Lease: the server's conflicts leave
/// exactly one leader; when it shuts down it hands the Lease back and the
/// other takes it within one retry period, without waiting for expiry.
#[tokio::test(start_paused = true)]
async fn two_replicas_elect_one_leader_and_hand_over_on_shutdown() {
    let api = crate::testkit::apiserver::MockApi::new();
    let (mut a, cancel_a, task_a) = replica(&api, "coordinator-a");
    let (mut b, cancel_b, task_b) = replica(&api, "coordinator-b");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (la, lb) = (a.is_leader(), b.is_leader());
            if la || lb {
                return;
            }
            tokio::select! {
                _ = a.is_leader.changed() => {}
                _ = b.is_leader.changed() => {}
            }
        }
    })
    .await
    .expect("a leader in time");
    // Several renewal periods later there is still one leader.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
    let (mut leader, mut follower, cancel_leader, task_leader, cancel_follower, task_follower) =
        if a.is_leader() {
            (a, b, cancel_a, task_a, cancel_b, task_b)
        } else {
            (b, a, cancel_b, task_b, cancel_a, task_a)
        };
    let lease = api
        .object("apis/coordination.k8s.io/v1/leases", NS, LEASE_NAME)
        .unwrap();
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    cancel_leader.cancel();
    task_leader.await.unwrap();
    becomes(&mut leader, false).await;
    let before = tokio::time::Instant::now();
    becomes(&mut follower, true).await;
    assert!(
        before.elapsed() <= Duration::from_secs(5),
        "{:?}",
        before.elapsed()
    );
    let lease = api
        .object("apis/coordination.k8s.io/v1/leases", NS, LEASE_NAME)
        .unwrap();
    assert_ne!(lease["spec"]["holderIdentity"], holder);
    assert_eq!(lease["spec"]["leaseTransitions"], 0, "{lease:#}");
    cancel_follower.cancel();
    task_follower.await.unwrap();
    let refused = api.forbidden();
    assert!(refused.is_empty(), "{refused:#?}");
    // Losers learned of the race from the server: a 409 on create or update.
    assert!(api.requests().iter().any(|r| r.code == 409));
}

#[tokio::test(start_paused = true)]
async fn a_leader_steps_down_when_a_renewal_gets_no_answer_within_a_period() {
    let (mut server, mut leadership, cancel, task) = start("coordinator-a");
    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 404, &status(404, "NotFound"));
    let (body, send) = server.expect(Method::POST, COLLECTION).await;
    respond(send, 201, &stored(body, "1"));
    becomes(&mut leadership, true).await;

    // The renewal's read hangs: after one period (10 s before the Lease
    // expires for the others) this replica is no longer the leader.
    let (_, hung) = server.expect(Method::GET, PATH).await;
    let asked = tokio::time::Instant::now();
    becomes(&mut leadership, false).await;
    assert_eq!(asked.elapsed(), Duration::from_secs(5));
    drop(hung);
    let (_, send) = server.expect(Method::GET, PATH).await;
    cancel.cancel();
    let other = lease(Some("coordinator-b"), Utc::now(), 15, "2");
    respond(send, 200, &serde_json::to_value(&other).unwrap());
    task.await.unwrap();
}
