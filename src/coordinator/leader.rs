//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: one Lease (`prewarm-coordinator` in the coordinator's namespace)
//! names its holder (the pod name) and when it last renewed. A replica takes
//! the Lease when it is absent, released or expired (`renewTime +
//! leaseDurationSeconds < now`), the holder renews it every third of the
//! duration, and every write carries the `resourceVersion` it read, so of two
//! replicas racing for it the API server admits one and answers the other
//! 409 Conflict. A leader steps down at once when a renewal fails, well
//! before the others may take over; on shutdown it releases the Lease so a
//! successor does not wait for it to expire.
//!
//! Only Events are leader-only; every replica serves agents and intents.

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

/// Label on the leader's own pod; the agents' Service selects it.
pub const LEADER_LABEL: &str = "prewarm.dev/leader";

/// The merge patch that sets (leader) or removes this replica's
/// [`LEADER_LABEL`].
pub fn leader_label_patch(is_leader: bool) -> serde_json::Value {
    let value = if is_leader {
        serde_json::json!("true")
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}})
}

/// Labels (or unlabels) this replica's pod so the Service routes agents
/// only to the leader.
pub async fn label_self(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    is_leader: bool,
) -> Result<(), kube::Error> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    pods.patch(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(leader_label_patch(is_leader)),
    )
    .await
    .map(|_| ())
}

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
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let lease_duration = Duration::from_secs(duration_secs(lease_duration) as u64);
    let period = lease_duration / 3;
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
        let now = Utc::now();
        let mut wait = period;
        match api.get_opt(LEASE_NAME).await {
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                held = None;
                set(false);
            }
            Ok(current) => {
                let action = decide(current.as_ref(), &identity, now);
                let written = match (&action, &current) {
                    (Action::Create, _) => Some(
                        api.create(
                            &PostParams::default(),
                            &created(&namespace, &identity, lease_duration, now),
                        )
                        .await,
                    ),
                    (Action::Acquire, Some(l)) => Some(
                        api.replace(
                            LEASE_NAME,
                            &PostParams::default(),
                            &taken_over(l, &identity, lease_duration, now),
                        )
                        .await,
                    ),
                    (Action::Renew, Some(l)) => Some(
                        api.replace(
                            LEASE_NAME,
                            &PostParams::default(),
                            &renewed(l, lease_duration, now),
                        )
                        .await,
                    ),
                    (Action::Wait(until), _) => {
                        let left = (*until - now).to_std().unwrap_or_default();
                        wait = left.clamp(Duration::from_millis(100), period);
                        None
                    }
                    _ => None,
                };
                match written {
                    None => {
                        held = None;
                        set(false);
                    }
                    Some(Ok(l)) => {
                        held = Some(l);
                        set(true);
                    }
                    Some(Err(e)) => {
                        if is_conflict(&e) {
                            tracing::info!(?action, "another replica won the leader Lease");
                        } else {
                            tracing::warn!(?action, error = %e, "writing the leader Lease failed");
                        }
                        held = None;
                        set(false);
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    set(false);
    if let Some(l) = held {
        match api
            .replace(
                LEASE_NAME,
                &PostParams::default(),
                &released(&l, Utc::now()),
            )
            .await
        {
            Ok(_) => tracing::info!("leader Lease released"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
