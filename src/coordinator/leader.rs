//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: one Lease (`prewarm-coordinator` in the coordinator's namespace)
//! names its holder (the pod name) and when it last renewed. A replica takes
//! the Lease when it is absent, released or expired (`renewTime +
//! leaseDurationSeconds < now`), the holder renews it every third of the
//! duration, and every write carries the `resourceVersion` it read, so of two
//! replicas racing for it the API server admits one and answers the other
//! 409 Conflict. A leader steps down at once when a renewal fails or gets no
//! answer within a renewal period, well before the others may take over; on
//! shutdown it releases the Lease so a successor does not wait for it to
//! expire.
//!
//! Only the leader serves agents and writes to the API; its pod carries
//! the leader label the agents' Service selects (see `leader_label`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Name of the Lease.
pub const LEASE_NAME: &str = "prewarm-coordinator";

/// Whether this replica leads, as it changes.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
}

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
    /// Someone else holds it until this instant.
    Wait(DateTime<Utc>),
}

/// The pure decision. A Lease without a holder counts as released, one
/// without a renew time or duration as expired.
pub fn decide(lease: Option<&Lease>, me: &str, now: DateTime<Utc>) -> Action {
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
    match expiry(lease) {
        Some(until) if until >= now => Action::Wait(until),
        _ => Action::Acquire,
    }
}

/// `renewTime + leaseDurationSeconds`, when both are set.
pub fn expiry(lease: &Lease) -> Option<DateTime<Utc>> {
    let spec = lease.spec.as_ref()?;
    let renewed = from_micro(spec.renew_time.as_ref()?)?;
    let secs = spec.lease_duration_seconds?;
    Some(renewed + chrono::Duration::seconds(secs.into()))
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    MicroTime(ts)
}

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
/// duration. A round that takes longer counts as a failed renewal (the
/// role of client-go's renew deadline).
pub fn renew_period(lease_duration: Duration) -> Duration {
    Duration::from_secs(duration_secs(lease_duration) as u64) / 3
}

/// The wall clock the Lease's times are written and compared in.
pub type Clock = std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Starts [`run`] on its own task.
pub fn spawn(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    cancel: CancellationToken,
) -> Leadership {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move { run(client, namespace, identity, lease_duration, tx, cancel).await });
    Leadership { is_leader: rx }
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

/// [`run`] with another clock (tests: one that follows tokio's paused time).
pub async fn run_with_clock(
    client: kube::Client,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    clock: Clock,
    is_leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let me = Campaign {
        api: Api::namespaced(client, &namespace),
        namespace,
        identity,
        lease_duration: Duration::from_secs(duration_secs(lease_duration) as u64),
        clock,
    };
    me.run(is_leader, cancel).await
}

struct Campaign {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    clock: Clock,
}

/// The outcome of one read-and-write of the Lease.
struct Round {
    /// The Lease as written, when we hold it.
    held: Option<Lease>,
    wait: Duration,
}

impl Campaign {
    async fn run(&self, is_leader: watch::Sender<bool>, cancel: CancellationToken) {
        let period = self.lease_duration / 3;
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
        // The Lease as we last wrote it while leading, for the release.
        let mut held: Option<Lease>;
        loop {
            // A round that does not finish within a period (an API server
            // that does not answer) counts as a failed renewal: the leader
            // steps down well before the Lease expires for the others.
            let wait = match tokio::time::timeout(period, self.round(period)).await {
                Ok(round) => {
                    held = round.held;
                    round.wait
                }
                Err(_) => {
                    tracing::warn!(
                        lease = LEASE_NAME,
                        "the API server did not answer within a renewal period"
                    );
                    held = None;
                    Duration::ZERO
                }
            };
            set(held.is_some());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        set(false);
        if let Some(l) = held {
            match self
                .api
                .replace(
                    LEASE_NAME,
                    &PostParams::default(),
                    &released(&l, (self.clock)()),
                )
                .await
            {
                Ok(_) => tracing::info!("leader Lease released"),
                Err(e) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
            }
        }
    }

    async fn round(&self, period: Duration) -> Round {
        let not_held = |wait| Round { held: None, wait };
        let current = match self.api.get_opt(LEASE_NAME).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                return not_held(period);
            }
        };
        let now = (self.clock)();
        let (me, duration) = (self.identity.as_str(), self.lease_duration);
        let action = decide(current.as_ref(), me, now);
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
                let left = (*until - now).to_std().unwrap_or_default();
                return not_held(left.clamp(Duration::from_millis(100), period));
            }
            _ => return not_held(period),
        };
        match written {
            Ok(l) => Round {
                held: Some(l),
                wait: period,
            },
            Err(e) => {
                if is_conflict(&e) {
                    tracing::info!(?action, "another replica won the leader Lease");
                } else {
                    tracing::warn!(?action, error = %e, "writing the leader Lease failed");
                }
                not_held(period)
            }
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
