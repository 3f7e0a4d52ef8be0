//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: one Lease (`prewarm-coordinator` in the coordinator's namespace)
//! names its holder (the pod name) and when it last renewed. Every write
//! carries the `resourceVersion` it read, so of two replicas racing for it
//! the API server admits one and answers the other 409 Conflict.
//!
//! Expiry is never judged from the holder's `renewTime` against the local
//! clock (clocks of two nodes differ): like client-go's `observedTime`, a
//! replica notes on its own monotonic clock when it last saw the Lease
//! record change, and takes the Lease over only once it has stayed
//! unchanged for `leaseDurationSeconds` (or is absent or released).
//!
//! The holder renews every [`renew_period`]; every Lease call is cut off at
//! the renewal period, and a leader whose last successful renewal started
//! more than [`renew_deadline`] ago (two thirds of the Lease) stops leading,
//! explicitly (a warning, the leader watch, hence the metric and the label),
//! well before the Lease can have expired at any other replica. On shutdown
//! it releases the Lease (within a renewal period) so a successor need not
//! wait for it to expire.
//!
//! Only the leader serves agents and writes to the API; its pod carries
//! the leader label the agents' Service selects (see `leader_label`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Name of the Lease.
pub const LEASE_NAME: &str = "prewarm-coordinator";

/// Whether this replica leads, as it changes.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    /// Whether this replica keeps the agents attached to it: while it
    /// leads, and after it stepped down only because the API server did
    /// not answer, until it sees another holder (or [`AGENT_GRACE`] has
    /// passed). The API server being away, the Service still routes agents
    /// here and no other replica can have taken over; dropping them would
    /// only cut every node off. It writes nothing to the API meanwhile.
    pub takes_agents: watch::Receiver<bool>,
}

/// How long a replica that stepped down for want of an API server keeps
/// its agents without seeing who leads now: four Lease durations.
pub const AGENT_GRACE: Duration = Duration::from_secs(60);

impl Leadership {
    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow()
    }
}

/// What to do with the Lease as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// There is no Lease: create it, held by us.
    Create,
    /// The Lease is released or expired: take it over.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until this local instant, unless its record
    /// changes again meanwhile.
    Wait(Instant),
}

/// What this replica last saw of the Lease record, and when (its own
/// monotonic clock) that record last changed: client-go's `observedRecord`
/// and `observedTime`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub spec: Option<LeaseSpec>,
    pub changed: Instant,
}

/// `previous` after reading `lease` at `now`: the change time moves only
/// when the record differs from the one seen before.
pub fn observe(previous: Option<Observed>, lease: Option<&Lease>, now: Instant) -> Observed {
    let spec = lease.and_then(|l| l.spec.clone());
    match previous {
        Some(p) if p.spec == spec => p,
        _ => Observed { spec, changed: now },
    }
}

/// The pure decision, from the Lease as read, when this replica saw its
/// record last change (`observed`) and the local time `now`, both on this
/// replica's monotonic clock. A Lease without a holder counts as released,
/// one without a renew time or duration as expired.
pub fn decide(lease: Option<&Lease>, me: &str, observed: Instant, now: Instant) -> Action {
    let Some(lease) = lease else {
        return Action::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() {
        return Action::Acquire;
    }
    if holder == me {
        return Action::Renew;
    }
    match spec.and_then(valid_for) {
        Some(d) if observed + d >= now => Action::Wait(observed + d),
        _ => Action::Acquire,
    }
}

/// How long a holder's record is valid after it was seen to change; `None`
/// for an incomplete record.
fn valid_for(spec: &LeaseSpec) -> Option<Duration> {
    spec.renew_time.as_ref()?;
    let secs = spec.lease_duration_seconds?;
    Some(Duration::from_secs(secs.max(0) as u64))
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    MicroTime(ts)
}

#[cfg(test)]
fn from_micro(t: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.0.as_microsecond())
}

fn duration_secs(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}

/// A new Lease held by `me`.
pub fn created(namespace: &str, me: &str, duration: Duration, now: DateTime<Utc>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(duration_secs(duration)),
            acquire_time: Some(micro(now)),
            renew_time: Some(micro(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `lease` taken over by `me` (its resourceVersion kept).
pub fn taken_over(lease: &Lease, me: &str, duration: Duration, now: DateTime<Utc>) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    let had_holder = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty());
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(duration_secs(duration));
    spec.acquire_time = Some(micro(now));
    spec.renew_time = Some(micro(now));
    let transitions = spec.lease_transitions.unwrap_or(0);
    spec.lease_transitions = Some(if had_holder {
        transitions.saturating_add(1)
    } else {
        transitions
    });
    l
}

/// `lease` renewed at `now` (its resourceVersion kept).
pub fn renewed(lease: &Lease, duration: Duration, now: DateTime<Utc>) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    spec.renew_time = Some(micro(now));
    spec.lease_duration_seconds = Some(duration_secs(duration));
    l
}

/// `lease` released: no holder, and a one-second duration, so the next
/// replica takes it at once (client-go's ReleaseOnCancel).
pub fn released(lease: &Lease, now: DateTime<Utc>) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(now));
    l
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

pub use super::leader_label::LEADER_LABEL;

/// The Lease duration the coordinator runs with.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often the holder renews and followers look: a third of the
/// duration. It also bounds every Lease call.
pub fn renew_period(lease_duration: Duration) -> Duration {
    Duration::from_secs(duration_secs(lease_duration) as u64) / 3
}

/// How long after the start of its last successful renewal a leader keeps
/// leading without another (client-go's renew deadline): two thirds of the
/// duration, so it has stopped a third of a Lease before any other replica
/// (which counts from when it saw that renewal, later) may take over.
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    Duration::from_secs(duration_secs(lease_duration) as u64) * 2 / 3
}

/// The wall clock the Lease's times are written in.
pub type Clock = std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Starts [`run`] on its own task.
pub fn spawn(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    cancel: CancellationToken,
) -> Leadership {
    let clock: Clock = std::sync::Arc::new(Utc::now);
    spawn_with_clock(client, namespace, identity, lease_duration, clock, cancel).0
}

/// [`spawn`] with another wall clock; also returns the task.
pub fn spawn_with_clock(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    clock: Clock,
    cancel: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, is_leader) = watch::channel(false);
    let (keep, takes_agents) = watch::channel(false);
    let me = Campaign::new(client, namespace, identity, lease_duration, clock);
    let task = tokio::spawn(async move { me.run(tx, Some(keep), cancel).await });
    (
        Leadership {
            is_leader,
            takes_agents,
        },
        task,
    )
}

/// Campaigns for and holds the Lease until cancelled, reporting leadership
/// on `is_leader`; releases the Lease on the way out if it holds it.
pub async fn run(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    is_leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let clock: Clock = std::sync::Arc::new(Utc::now);
    run_with_clock(
        client,
        namespace,
        identity,
        lease_duration,
        clock,
        is_leader,
        cancel,
    )
    .await
}

/// [`run`] with another wall clock (tests: a skewed one, or one that
/// follows tokio's paused time). Expiry is timed on tokio's clock.
pub async fn run_with_clock(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    clock: Clock,
    is_leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let me = Campaign::new(client, namespace, identity, lease_duration, clock);
    me.run(is_leader, None, cancel).await
}

struct Campaign {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    clock: Clock,
}

/// The outcome of one read-and-write of the Lease.
enum Round {
    /// We hold it: the Lease as written.
    Held(Box<Lease>),
    /// Another replica holds it (or won the race for it): wait this long.
    Lost(Duration),
    /// The API server failed or did not answer in time.
    Failed,
}

/// While leading: the Lease as last written, and until when we may lead
/// without another successful renewal.
struct Lead {
    lease: Lease,
    until: Instant,
}

impl Campaign {
    fn new(
        client: kube::Client,
        namespace: String,
        identity: String,
        lease_duration: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            identity,
            lease_duration: Duration::from_secs(duration_secs(lease_duration) as u64),
            clock,
        }
    }

    async fn run(
        &self,
        is_leader: watch::Sender<bool>,
        takes_agents: Option<watch::Sender<bool>>,
        cancel: CancellationToken,
    ) {
        let period = self.lease_duration / 3;
        let deadline = renew_deadline(self.lease_duration);
        let identity = &self.identity;
        let set = |leader: bool| {
            is_leader.send_if_modified(|v| {
                let changed = *v != leader;
                *v = leader;
                if changed {
                    tracing::info!(%identity, lease = LEASE_NAME, leader, "leadership changed");
                }
                changed
            });
        };
        let keep = |v: bool| {
            if let Some(k) = &takes_agents {
                k.send_if_modified(|old| std::mem::replace(old, v) != v);
            }
        };
        let mut observed: Option<Observed> = None;
        let mut lead: Option<Lead> = None;
        // When we stepped down for want of an answer, keeping the agents.
        let mut stranded: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // Every call is bounded: by the period, and while leading by
            // the renew deadline, whichever comes first.
            let limit = match &lead {
                Some(l) => period.min(l.until.saturating_duration_since(started)),
                None => period,
            };
            let round = tokio::time::timeout(limit, self.round(&mut observed))
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(lease = LEASE_NAME, timeout = ?limit, "the API server did not answer the Lease call in time");
                    Round::Failed
                });
            let wait = match round {
                Round::Held(lease) => {
                    lead = Some(Lead {
                        lease: *lease,
                        until: started + deadline,
                    });
                    stranded = None;
                    keep(true);
                    period
                }
                Round::Lost(wait) => {
                    lead = None;
                    if stranded.take().is_some() {
                        tracing::info!(%identity, "another replica holds the leader Lease: handing the agents over");
                    }
                    keep(false);
                    wait
                }
                Round::Failed => match &lead {
                    Some(l) if Instant::now() < l.until => {
                        // Retry soon; keep leading until the deadline.
                        (period / 5).min(l.until.saturating_duration_since(Instant::now()))
                    }
                    Some(_) => {
                        tracing::warn!(%identity, lease = LEASE_NAME, deadline = ?deadline,
                            "the leader Lease was not renewed within the renew deadline; stepping down before it can expire for the other replicas");
                        lead = None;
                        stranded = Some(Instant::now());
                        period / 5
                    }
                    None => period,
                },
            };
            if stranded.is_some_and(|at| at.elapsed() >= AGENT_GRACE) {
                tracing::warn!(%identity, grace = ?AGENT_GRACE, "still no answer about the leader Lease: letting the agents go");
                stranded = None;
                keep(false);
            }
            set(lead.is_some());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        set(false);
        keep(false);
        if let Some(l) = lead {
            self.release(&l.lease, period).await;
        }
    }

    /// Hands the Lease back, giving up after `limit`.
    async fn release(&self, lease: &Lease, limit: Duration) {
        let (pp, lease) = (PostParams::default(), released(lease, (self.clock)()));
        let put = self.api.replace(LEASE_NAME, &pp, &lease);
        match tokio::time::timeout(limit, put).await {
            Ok(Ok(_)) => tracing::info!("leader Lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
            Err(_) => {
                tracing::warn!(timeout = ?limit, "releasing the leader Lease got no answer in time; it expires instead")
            }
        }
    }

    async fn round(&self, observed: &mut Option<Observed>) -> Round {
        let period = self.lease_duration / 3;
        let current = match self.api.get_opt(LEASE_NAME).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                return Round::Failed;
            }
        };
        let at = Instant::now();
        let seen = observe(observed.take(), current.as_ref(), at);
        let action = decide(current.as_ref(), &self.identity, seen.changed, at);
        *observed = Some(seen);
        let now = (self.clock)();
        let (me, duration) = (self.identity.as_str(), self.lease_duration);
        let written = match (&action, &current) {
            (Action::Create, _) => {
                let lease = created(&self.namespace, me, duration, now);
                self.api.create(&PostParams::default(), &lease).await
            }
            (Action::Acquire, Some(l)) => {
                let lease = taken_over(l, me, duration, now);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
            (Action::Renew, Some(l)) => {
                let lease = renewed(l, duration, now);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
            (Action::Wait(until), _) => {
                let left = until.saturating_duration_since(at);
                return Round::Lost(left.clamp(Duration::from_millis(100), period));
            }
            _ => return Round::Failed,
        };
        match written {
            Ok(l) => {
                *observed = Some(observe(None, Some(&l), Instant::now()));
                Round::Held(Box::new(l))
            }
            Err(e) if is_conflict(&e) => {
                tracing::info!(?action, "another replica won the leader Lease");
                Round::Lost(period)
            }
            Err(e) => {
                tracing::warn!(?action, error = %e, "writing the leader Lease failed");
                Round::Failed
            }
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
