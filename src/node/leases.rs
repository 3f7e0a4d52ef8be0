//! prewarm's own containerd leases across agent restarts. Every pull holds
//! a lease labelled `prewarm.dev/owner=agent` (`=cli` for `prewarm pull`)
//! and this process's instance.
//! A process killed mid-pull leaves its lease behind until its gc.expire (an
//! hour or more), keeping its partial downloads alive that long. A starting
//! agent hands such leftovers over to one short-lived lease of its own (so
//! the pulls it resumes still find their ingests), deletes them, and lets
//! that lease go as soon as its pulls settle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::node::runtime::{ContentStore, LeaseId, RuntimeError};
use crate::node::setup::NodeStack;

pub const OWNER_LABEL: &str = "prewarm.dev/owner";
pub const OWNER_AGENT: &str = "agent";
/// `prewarm pull` run by hand: an agent never takes its leases over.
pub const OWNER_CLI: &str = "cli";
/// Which prewarm process holds the lease.
pub const INSTANCE_LABEL: &str = "prewarm.dev/instance";
/// The handover lease expires on its own after this long, even when this
/// process never pulls (then nothing resumes and the leftovers may go).
pub const HANDOVER_TTL: Duration = Duration::from_secs(600);

/// This process's instance id, random per process start.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// A lease as containerd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// One thing a lease protects: `kind` is containerd's resource type
/// (`content`, `ingests`, `snapshots/<snapshotter>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseResource {
    pub id: String,
    pub kind: String,
}

/// prewarm's lease, held by another (dead or replaced) process than `ours`.
pub fn left_by_predecessor(lease: &LeaseInfo, ours: &str) -> bool {
    lease.labels.get(OWNER_LABEL).map(String::as_str) == Some(OWNER_AGENT)
        && lease.labels.get(INSTANCE_LABEL).map(String::as_str) != Some(ours)
}

/// The engine's handover lease and its count of running pulls: the pull
/// that ends last releases the lease.
#[derive(Default)]
pub struct Leftovers {
    handover: Mutex<Option<LeaseId>>,
    busy: AtomicUsize,
}

/// One running pull; dropping it (also when the pull is dropped) ends it.
pub struct Busy<'a>(&'a Leftovers);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Leftovers {
    pub fn enter(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Ends a pull; when none is left running, releases the handover lease.
    pub async fn leave(&self, busy: Busy<'_>, content: &dyn ContentStore) {
        drop(busy);
        if self.busy.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Some(lease) = self.lock().take() else {
            return;
        };
        match content.delete_lease(&lease).await {
            Ok(()) => tracing::info!(lease = %lease.0, "released what a previous agent left"),
            Err(e) => {
                tracing::warn!(lease = %lease.0, error = %e, "could not delete the handover lease; it expires on its own")
            }
        }
    }

    /// The handover lease, if one is held.
    pub fn handover(&self) -> Option<LeaseId> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LeaseId>> {
        self.handover.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Moves everything the leases of other prewarm processes protect into one
/// new lease held by `leftovers`, then deletes those leases. Returns how
/// many it took over. This process's leases (the runtime labels them with
/// [`instance`]) and anyone else's are not touched.
pub async fn adopt_leftovers(
    content: &dyn ContentStore,
    leftovers: &Leftovers,
    now: SystemTime,
) -> Result<usize, RuntimeError> {
    let ours = instance();
    let stale: Vec<LeaseInfo> = content
        .leases()
        .await?
        .into_iter()
        .filter(|l| left_by_predecessor(l, ours))
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    let handover = match leftovers.handover() {
        Some(lease) => lease,
        None => {
            let id = format!("prewarm-handover-{ours}");
            let lease = content.create_lease(&id, now + HANDOVER_TTL).await?;
            // Held before anything moves: released even if this fails midway.
            *leftovers.lock() = Some(lease.clone());
            lease
        }
    };
    for lease in &stale {
        let old = LeaseId(lease.id.clone());
        for resource in content.lease_resources(&old).await? {
            content.add_lease_resource(&handover, &resource).await?;
        }
        content.delete_lease(&old).await?;
    }
    Ok(stale.len())
}

/// At agent start: takes over what earlier agent processes left; a failure
/// is logged (their leases then expire on their own).
pub async fn release_predecessors(stack: &NodeStack) {
    let leftovers = stack.engine.leftovers();
    match adopt_leftovers(&stack.containerd, leftovers, SystemTime::now()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            leases = n,
            "took over the leases a previous agent left; released once the pulls settle"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not take over the leases a previous agent left; they expire on their own"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fake::FakeRuntime;
    use bytes::Bytes;

    fn labels(instance: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER_AGENT.to_string()),
            (INSTANCE_LABEL.to_string(), instance.to_string()),
        ])
    }

    #[test]
    fn only_prewarm_leases_of_other_processes_are_leftovers() {
        let lease = |labels| LeaseInfo {
            id: "l".into(),
            labels,
        };
        assert!(left_by_predecessor(&lease(labels("dead")), "me"));
        assert!(!left_by_predecessor(&lease(labels("me")), "me"));
        assert!(!left_by_predecessor(&lease(BTreeMap::new()), "me"));
        let mut no_instance = labels("x");
        no_instance.remove(INSTANCE_LABEL);
        assert!(left_by_predecessor(&lease(no_instance), "me"));
        let mut cli = labels("dead");
        cli.insert(OWNER_LABEL.into(), "someone-else".into());
        assert!(!left_by_predecessor(&lease(cli), "me"));
    }

    /// A dead agent's lease (one committed blob, one ingest) is moved into
    /// the handover lease and deleted; ours and foreign leases stay; the
    /// last pull to end releases the handover.
    #[tokio::test]
    async fn leftovers_are_handed_over_then_released_when_pulls_settle() {
        let rt = FakeRuntime::new("2.1.9");
        {
            let mut st = rt.lock();
            st.content
                .insert("sha256:done".into(), Bytes::from_static(b"x"));
            st.ingests.insert("sha256:half".into(), b"ha".to_vec());
            for (id, l) in [
                ("prewarm-dead", labels("dead")),
                ("prewarm-mine", labels(instance())),
            ] {
                st.leases
                    .insert(id.into(), vec!["sha256:done".into(), "sha256:half".into()]);
                st.lease_labels.insert(id.into(), l);
            }
            st.leases.insert("k8s-other".into(), vec![]);
        }
        let leftovers = Leftovers::default();
        let n = adopt_leftovers(&rt, &leftovers, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(n, 1);
        let handover = leftovers.handover().expect("a handover lease");
        {
            let st = rt.lock();
            assert!(!st.leases.contains_key("prewarm-dead"));
            assert!(st.leases.contains_key("prewarm-mine"));
            assert!(st.leases.contains_key("k8s-other"));
            let held = &st.leases[&handover.0];
            assert!(held.contains(&"sha256:done".to_string()), "{held:?}");
            assert!(held.contains(&"sha256:half".to_string()), "{held:?}");
            assert_eq!(st.lease_labels[&handover.0], labels(instance()));
        }
        // Nothing left to take over the second time.
        assert_eq!(
            adopt_leftovers(&rt, &leftovers, SystemTime::now())
                .await
                .unwrap(),
            0
        );

        let (a, b) = (leftovers.enter(), leftovers.enter());
        leftovers.leave(a, &rt).await;
        assert!(
            rt.lock().leases.contains_key(&handover.0),
            "one pull still runs"
        );
        leftovers.leave(b, &rt).await;
        assert!(!rt.lock().leases.contains_key(&handover.0));
        assert!(leftovers.handover().is_none());
    }
}
