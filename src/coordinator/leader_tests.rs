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

/// A [`Leadership`] for a loop started with [`run`] (no agents to keep).
fn observer(is_leader: watch::Receiver<bool>) -> Leadership {
    Leadership {
        is_leader,
        takes_agents: watch::channel(false).1,
    }
}

// ---- decide ----

/// Local instants `secs` after a fixed start.
fn at(secs: u64) -> tokio::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    tokio::time::Instant::from_std(start) + Duration::from_secs(secs)
}

#[test]
fn no_lease_is_created() {
    assert_eq!(decide(None, "a", at(0), at(0)), Action::Create);
}

#[test]
fn our_own_lease_is_renewed() {
    let l = lease(Some("a"), t(0), 15, "1");
    assert_eq!(decide(Some(&l), "a", at(0), at(5)), Action::Renew);
    // Even past expiry: nobody took it yet.
    assert_eq!(decide(Some(&l), "a", at(0), at(60)), Action::Renew);
}

#[test]
fn anothers_lease_is_waited_for_a_duration_from_when_it_was_seen_to_change() {
    let l = lease(Some("b"), t(0), 15, "1");
    assert_eq!(decide(Some(&l), "a", at(10), at(15)), Action::Wait(at(25)));
    // At the expiry instant it is still held; a microsecond later it is not.
    assert_eq!(decide(Some(&l), "a", at(10), at(25)), Action::Wait(at(25)));
    let later = at(25) + Duration::from_micros(1);
    assert_eq!(decide(Some(&l), "a", at(10), later), Action::Acquire);
}

/// The holder's renewTime says nothing about expiry here: an hour-old
/// renewTime (a clock behind ours) seen changing just now is live, a
/// renewTime in the future (a clock ahead) seen unchanged for a duration
/// is expired.
#[test]
fn the_holders_clock_does_not_matter() {
    let behind = lease(Some("b"), t(-3600), 15, "1");
    assert_eq!(
        decide(Some(&behind), "a", at(100), at(101)),
        Action::Wait(at(115))
    );
    let ahead = lease(Some("b"), t(3600), 15, "1");
    assert_eq!(decide(Some(&ahead), "a", at(100), at(116)), Action::Acquire);
}

#[test]
fn a_record_change_restarts_the_wait_and_a_reread_does_not() {
    let l = lease(Some("b"), t(0), 15, "1");
    let first = observe(None, Some(&l), at(0));
    assert_eq!(first.changed, at(0));
    let same = observe(Some(first.clone()), Some(&l), at(7));
    assert_eq!(same.changed, at(0), "the same record read again");
    let renewed = renewed(&l, Duration::from_secs(15), t(5));
    let moved = observe(Some(same), Some(&renewed), at(9));
    assert_eq!(moved.changed, at(9));
    let gone = observe(Some(moved), None, at(11));
    assert_eq!((gone.spec, gone.changed), (None, at(11)));
}

#[test]
fn released_or_incomplete_leases_are_acquired() {
    let d = |l: &Lease| decide(Some(l), "a", at(0), at(1));
    assert_eq!(d(&lease(None, t(0), 15, "1")), Action::Acquire);
    assert_eq!(d(&lease(Some(""), t(0), 15, "1")), Action::Acquire);
    let mut l = lease(Some("b"), t(0), 15, "1");
    l.spec.as_mut().unwrap().renew_time = None;
    assert_eq!(d(&l), Action::Acquire);
    let mut l = lease(Some("b"), t(0), 15, "1");
    l.spec.as_mut().unwrap().lease_duration_seconds = None;
    assert_eq!(d(&l), Action::Acquire);
    assert_eq!(d(&Lease::default()), Action::Acquire);
}

#[test]
fn the_renew_deadline_falls_well_inside_the_lease() {
    assert_eq!(renew_period(LEASE_DURATION), Duration::from_secs(5));
    assert_eq!(renew_deadline(LEASE_DURATION), Duration::from_secs(10));
}

#[test]
fn writes_keep_the_resource_version_and_count_transitions() {
    let l = lease(Some("b"), t(0), 15, "42");
    let taken = taken_over(&l, "a", Duration::from_secs(15), t(20));
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));
    let spec = taken.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.renew_time, Some(micro(t(20))));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    let renewed = renewed(&taken, Duration::from_secs(15), t(25));
    let spec = renewed.spec.as_ref().unwrap();
    assert_eq!(spec.renew_time, Some(micro(t(25))));
    assert_eq!(spec.acquire_time, Some(micro(t(20))));
    assert_eq!(renewed.metadata.resource_version.as_deref(), Some("42"));
    let released = released(&renewed, t(26));
    assert_eq!(released.spec.as_ref().unwrap().holder_identity, None);
    assert_eq!(
        decide(Some(&released), "b", at(26), at(26)),
        Action::Acquire
    );
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
    (Server { handle }, observer(rx), cancel, task)
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

/// Another's Lease, however old its renewTime, is taken only after it has
/// stayed unchanged for a Lease duration since this replica first saw it;
/// losing the race for it (409) means follower.
#[tokio::test(start_paused = true)]
async fn losing_the_race_for_an_expired_lease_on_409_means_follower() {
    let (mut server, leadership, cancel, task) = start("coordinator-a");
    let first = tokio::time::Instant::now();
    let stale = lease(
        Some("coordinator-b"),
        Utc::now() - chrono::Duration::seconds(60),
        15,
        "7",
    );
    let body = loop {
        let (m, p, body, send) = server.next().await;
        match m {
            Method::GET => respond(send, 200, &serde_json::to_value(&stale).unwrap()),
            Method::PUT => {
                assert_eq!(p, PATH);
                respond(send, 409, &status(409, "Conflict"));
                break body;
            }
            m => panic!("unexpected {m} {p}"),
        }
    };
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited <= Duration::from_secs(20),
        "took over {waited:?} after first seeing the Lease"
    );
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert_eq!(body["spec"]["holderIdentity"], "coordinator-a");
    assert_eq!(body["spec"]["leaseTransitions"], 1);
    assert!(!leadership.is_leader());

    // The winner's fresh Lease: wait, no write.
    let (_, send) = server.expect(Method::GET, PATH).await;
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

/// Failed renewals are retried; the leader keeps leading until the renew
/// deadline (10 s after its last successful renewal began), then steps
/// down, before the Lease expires for anyone else.
#[tokio::test(start_paused = true)]
async fn a_leader_steps_down_at_the_renew_deadline_when_the_api_server_refuses() {
    let (mut server, mut leadership, cancel, task) = start("coordinator-a");
    let began = tokio::time::Instant::now();
    let (_, send) = server.expect(Method::GET, PATH).await;
    respond(send, 404, &status(404, "NotFound"));
    let (body, send) = server.expect(Method::POST, COLLECTION).await;
    respond(send, 201, &stored(body, "1"));
    becomes(&mut leadership, true).await;
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    let responder = tokio::spawn(async move {
        loop {
            let (_, send) = server.expect(Method::GET, PATH).await;
            respond(send, 503, &status(503, "ServiceUnavailable"));
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    becomes(&mut leadership, false).await;
    assert_eq!(began.elapsed(), Duration::from_secs(10));
    let refused = refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(refused >= 3, "retried {refused} times");
    responder.abort();
    cancel.cancel();
    // No release: the Lease as last seen is unknown.
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
    (observer(rx), cancel, task)
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

// ---- skewed clocks and a stalled API server ----

/// A wall clock that follows tokio's (paused) time, `skew` off the real one.
fn skewed(skew: chrono::Duration) -> Clock {
    let wall = Utc::now() + skew;
    let start = tokio::time::Instant::now();
    std::sync::Arc::new(move || {
        wall + chrono::Duration::from_std(start.elapsed()).unwrap_or_default()
    })
}

fn replica_with_clock(
    api: &crate::testkit::apiserver::MockApi,
    identity: &str,
    clock: Clock,
) -> (Leadership, CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run_with_clock(
        api.coordinator_client(),
        NS.into(),
        identity.into(),
        LEASE_DURATION,
        clock,
        tx,
        cancel.clone(),
    ));
    (observer(rx), cancel, task)
}

/// Whether leadership becomes `want` within `limit`.
async fn within(l: &mut Leadership, want: bool, limit: Duration) -> bool {
    tokio::time::timeout(limit, l.is_leader.wait_for(|v| *v == want))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// `b`, whose clock is `skew` off `a`'s, joins while `a` leads: it never
/// leads while `a` keeps renewing, and takes over once `a` is killed (no
/// release) after one Lease duration of its own observation, not earlier
/// and not `skew` later.
async fn skewed_candidate(skew: chrono::Duration) {
    let api = crate::testkit::apiserver::MockApi::new();
    let (mut a, _cancel_a, task_a) =
        replica_with_clock(&api, "coordinator-a", skewed(chrono::Duration::zero()));
    becomes(&mut a, true).await;
    let (mut b, cancel_b, task_b) = replica_with_clock(&api, "coordinator-b", skewed(skew));
    let split = within(&mut b, true, LEASE_DURATION * 4).await;
    assert!(!split, "skew {skew}: b took the Lease while a renewed it");
    assert!(a.is_leader(), "skew {skew}: a lost the Lease it renews");

    // kill -9 of the leader: no release, its last renewal stands.
    task_a.abort();
    let killed = tokio::time::Instant::now();
    let period = renew_period(LEASE_DURATION);
    let took = within(&mut b, true, LEASE_DURATION + period * 2).await;
    assert!(
        took,
        "skew {skew}: b did not take over within a Lease duration of a's last renewal"
    );
    let after = killed.elapsed();
    // a renewed at most a period before it was killed.
    assert!(
        after >= LEASE_DURATION - period && after <= LEASE_DURATION + period,
        "skew {skew}: took over {after:?} after the kill"
    );
    let lease = api
        .object("apis/coordination.k8s.io/v1/leases", NS, LEASE_NAME)
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "coordinator-b");
    cancel_b.cancel();
    task_b.await.unwrap();
    let refused = api.forbidden();
    assert!(refused.is_empty(), "{refused:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_candidate_an_hour_ahead_does_not_take_a_renewed_lease() {
    skewed_candidate(chrono::Duration::hours(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_candidate_an_hour_behind_takes_over_one_lease_duration_after_renewals_stop() {
    skewed_candidate(chrono::Duration::hours(-1)).await;
}

/// Records every leadership change of two replicas and fails on an instant
/// where both lead.
fn never_two_leaders(
    a: &Leadership,
    b: &Leadership,
) -> tokio::task::JoinHandle<Vec<(Duration, bool, bool)>> {
    let (mut a, mut b) = (a.is_leader.clone(), b.is_leader.clone());
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let (la, lb) = (*a.borrow_and_update(), *b.borrow_and_update());
            seen.push((start.elapsed(), la, lb));
            assert!(!(la && lb), "two leaders: {seen:?}");
            tokio::select! {
                r = a.changed() => if r.is_err() { return seen },
                r = b.changed() => if r.is_err() { return seen },
            }
        }
    })
}

/// A stalled API server (requests held unanswered for 30 s): the leader
/// stops leading before its Lease could expire at the other replica (no
/// renewal lands after the stall began), the other cannot take it during
/// the stall, and once the server answers again exactly one leads.
#[tokio::test(start_paused = true)]
async fn a_leader_facing_a_stalled_api_server_steps_down_before_its_lease_expires() {
    use crate::testkit::apiserver::Outage;
    let api = crate::testkit::apiserver::MockApi::new();
    let clock = skewed(chrono::Duration::zero());
    let (mut a, cancel_a, task_a) = replica_with_clock(&api, "coordinator-a", clock.clone());
    becomes(&mut a, true).await;
    let (mut b, cancel_b, task_b) = replica_with_clock(&api, "coordinator-b", clock);
    let monitor = never_two_leaders(&a, &b);
    // Let b see a few renewals, then stall the server right after one.
    tokio::time::sleep(LEASE_DURATION).await;
    api.clear_requests();
    let renewal = |r: &[crate::testkit::apiserver::Recorded]| {
        r.iter()
            .any(|r| r.method == "PUT" && r.code == 200 && r.path.ends_with(LEASE_NAME))
    };
    assert!(api.wait_for(LEASE_DURATION, renewal).await, "a renews");
    api.set_outage(Outage::Stall);
    let stalled = tokio::time::Instant::now();
    // The Lease expires for b no earlier than a Lease duration from now.
    let down = within(&mut a, false, LEASE_DURATION).await;
    assert!(down, "a still leads a Lease duration into the stall");
    let stepped = stalled.elapsed();
    assert!(
        stepped <= LEASE_DURATION * 2 / 3,
        "a stepped down {stepped:?} into the stall, too close to the Lease's expiry"
    );
    let rest = Duration::from_secs(30) - stepped;
    let early = within(&mut b, true, rest).await;
    assert!(!early, "b led during the stall");
    assert!(!a.is_leader(), "a led again during the stall");
    api.set_outage(Outage::None);
    tokio::time::timeout(renew_period(LEASE_DURATION) * 2, async {
        loop {
            if a.is_leader() || b.is_leader() {
                return;
            }
            tokio::select! {
                _ = a.is_leader.changed() => {}
                _ = b.is_leader.changed() => {}
            }
        }
    })
    .await
    .expect("a leader once the server answers");
    tokio::time::sleep(LEASE_DURATION).await;
    assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
    cancel_a.cancel();
    cancel_b.cancel();
    task_a.await.unwrap();
    task_b.await.unwrap();
    let seen = monitor.await.unwrap();
    assert!(seen.len() >= 3, "{seen:?}");
    let refused = api.forbidden();
    assert!(refused.is_empty(), "{refused:#?}");
}

/// Shutting down while the API server stalls: the release is given up
/// after a renewal period instead of holding the process forever.
#[tokio::test(start_paused = true)]
async fn shutting_down_during_a_stall_gives_up_the_release_in_time() {
    use crate::testkit::apiserver::Outage;
    let api = crate::testkit::apiserver::MockApi::new();
    let (mut a, cancel_a, task_a) =
        replica_with_clock(&api, "coordinator-a", skewed(chrono::Duration::zero()));
    becomes(&mut a, true).await;
    api.set_outage(Outage::Stall);
    cancel_a.cancel();
    let ended = tokio::time::timeout(renew_period(LEASE_DURATION) * 2, task_a).await;
    assert!(ended.is_ok(), "the replica hangs on its release");
    assert!(!a.is_leader());
    api.set_outage(Outage::None);
}
