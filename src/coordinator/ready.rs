//! What `/readyz` answers: whether this replica can do its job, as the
//! sum of named conditions, each with what is missing while it is not met.
//!
//! Readiness means "this replica can serve": its agent link is accepting
//! connections and, when it watches the API, its first lists of Nodes and
//! opted-in workloads are complete and its leader election is running.
//! Leadership itself is not a condition. The Service already routes agents
//! to the leader only (by its label), so a follower's readiness routes
//! nothing to it; a follower that was never ready would instead block the
//! Deployment's rolling update (`maxUnavailable: 0` waits for the new pod
//! to be ready), count as down for the PodDisruptionBudget, and take over
//! from a failed leader with its lists still loading. Conditions are met
//! once and stay met, except the link: an API server outage after start
//! does not make a replica unready (agents keep being served from what it
//! has), while a link that stopped does, and so does shutting down.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One condition: met or not, and what to say while it is not.
#[derive(Debug, Clone)]
struct Condition {
    met: bool,
    missing: &'static str,
}

#[derive(Debug, Default)]
pub struct Readiness {
    conditions: Mutex<BTreeMap<&'static str, Condition>>,
}

/// Conditions by name.
pub const LINK: &str = "link";
pub const NODES: &str = "nodes";
pub const WORKLOADS: &str = "workloads";
pub const ELECTION: &str = "election";

impl Readiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Condition>> {
        self.conditions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an unmet condition (kept as it is if already there).
    pub fn require(&self, name: &'static str, missing: &'static str) {
        self.lock().entry(name).or_insert(Condition {
            met: false,
            missing,
        });
    }

    /// Marks a required condition met or not; unknown names are ignored
    /// (the coordinator then does not depend on them).
    pub fn set(&self, name: &str, met: bool) {
        if let Some(c) = self.lock().get_mut(name) {
            c.met = met;
        }
    }

    /// What is missing, by condition, in name order; empty when ready.
    pub fn missing(&self) -> Vec<(&'static str, &'static str)> {
        self.lock()
            .iter()
            .filter(|(_, c)| !c.met)
            .map(|(n, c)| (*n, c.missing))
            .collect()
    }
}

/// The `/readyz` answer: 200 `ready`, or 503 with one line per missing
/// condition.
pub fn answer(r: &Readiness, shutting_down: bool) -> (u16, String) {
    let mut missing: Vec<String> = r
        .missing()
        .into_iter()
        .map(|(n, m)| format!("{n}: {m}"))
        .collect();
    if shutting_down {
        missing.insert(0, "shutdown: the coordinator is shutting down".into());
    }
    if missing.is_empty() {
        (200, "ready\n".into())
    } else {
        (503, format!("not ready\n{}\n", missing.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_required_condition_is_met() {
        let r = Readiness::default();
        assert_eq!(answer(&r, false), (200, "ready\n".into()));
        r.require(LINK, "the agent link is not serving");
        r.require(NODES, "the first list of Nodes is not complete");
        r.set("unknown", true);
        assert_eq!(
            answer(&r, false),
            (
                503,
                "not ready\nlink: the agent link is not serving\nnodes: the first list of Nodes is not complete\n"
                    .into()
            )
        );
        r.set(LINK, true);
        r.require(LINK, "again");
        assert_eq!(
            r.missing(),
            vec![(NODES, "the first list of Nodes is not complete")]
        );
        r.set(NODES, true);
        assert_eq!(answer(&r, false).0, 200);
        assert_eq!(
            answer(&r, true),
            (
                503,
                "not ready\nshutdown: the coordinator is shutting down\n".into()
            )
        );
        r.set(LINK, false);
        assert_eq!(answer(&r, false).0, 503);
    }
}
