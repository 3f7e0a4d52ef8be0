//! What the agent should do to make its node match the desired images.
//!
//! Pins outlive intents: an image pinned for a coordinator intent carries
//! a hold (a hold-until time, kept by the agent in a containerd label and
//! renewed while the intent lasts), and prewarm never removes its own pin
//! from an image a container on this node uses. So a gated or rolling-out
//! workload's image stays pinned from the intent's end until its containers
//! start, and an intent that is withdrawn and republished does not flap the
//! pin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// An image the node should hold, by the name CRI and the kubelet use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub pin: bool,
    /// False while only the pin is held (a window's grace period): a
    /// missing image is then not pulled again.
    pub pull: bool,
    /// Higher first when pull slots are scarce.
    pub priority: i64,
    /// An intent asks for it: its pin carries a hold, renewed while the
    /// intent lasts, so the pin outlives the intent.
    pub hold: bool,
}

/// What CRI reports for a present image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Present {
    /// Every record name of the image: tags, digests and the id.
    pub names: Vec<String>,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// CRI status per desired name; absent when CRI does not have it.
    pub present: BTreeMap<String, Present>,
    /// Record names carrying prewarm's pin marker.
    pub pinned_by_us: BTreeSet<String>,
    /// Names whose pull is already running.
    pub in_flight: BTreeSet<String>,
    /// Whether the runtime honours pins (containerd >= 1.7).
    pub pin_supported: bool,
    /// Hold-until time of records pinned by us that carry a hold.
    pub holds: BTreeMap<String, DateTime<Utc>>,
    /// Records pinned by us whose image a container on this node uses.
    pub in_use: BTreeSet<String>,
}

/// How long a pin outlives the intent that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// The pin is held at least this long after the intent ends.
    pub period: Duration,
}

impl HoldPolicy {
    /// A new hold runs to now + 1.5 × period and is renewed once less than
    /// `period` is left: at most one label write per half period while the
    /// intent lasts, and a pin held between 1 and 1.5 periods after it.
    fn until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.span(self.period.saturating_add(self.period / 2))
    }

    fn renew_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.span(self.period)
    }

    fn span(&self, d: Duration) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Pull (and pin if asked) an image that is missing.
    Warm {
        name: String,
        pin: bool,
        priority: i64,
    },
    /// The image is present but our pin is missing; set it, with a hold
    /// until `hold_until` when an intent asks for the image.
    Pin {
        name: String,
        hold_until: Option<DateTime<Utc>>,
    },
    /// Renew the hold on our pin of a present image.
    Hold { name: String, until: DateTime<Utc> },
    /// Remove our pin from a record nothing needs any more.
    Unpin { record: String },
}

/// The actions, and what the pins this plan keeps rest on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Records pinned by us that no desired image keeps, kept pinned by a
    /// running hold or a container using them.
    pub held: BTreeSet<String>,
    /// When the first of those holds runs out (the agent wakes then).
    pub next_expiry: Option<DateTime<Utc>>,
}

pub fn plan(
    desired: &[Desired],
    observed: &Observed,
    holds: &HoldPolicy,
    now: DateTime<Utc>,
) -> Plan {
    let mut actions = Vec::new();
    let mut keep_pinned = BTreeSet::new();
    for d in desired {
        match observed.present.get(&d.name) {
            None if observed.in_flight.contains(&d.name) || !d.pull => {}
            None => actions.push(Action::Warm {
                name: d.name.clone(),
                pin: d.pin,
                priority: d.priority,
            }),
            Some(p) if d.pin => {
                keep_pinned.extend(p.names.iter().cloned());
                actions.extend(pin_action(d, p, observed, holds, now));
            }
            Some(_) => {}
        }
        if d.pin && observed.in_flight.contains(&d.name) {
            keep_pinned.insert(d.name.clone());
        }
    }
    let mut out = Plan::default();
    for record in &observed.pinned_by_us {
        if keep_pinned.contains(record) {
            continue;
        }
        let hold = observed.holds.get(record).filter(|t| **t > now);
        if observed.in_use.contains(record) {
            out.held.insert(record.clone());
        } else if let Some(t) = hold {
            out.held.insert(record.clone());
            out.next_expiry = Some(out.next_expiry.map_or(*t, |e| e.min(*t)));
        } else {
            actions.push(Action::Unpin {
                record: record.clone(),
            });
        }
    }
    actions.sort();
    out.actions = actions;
    out
}

/// For a present image that should be pinned: pin it (with a hold if an
/// intent asks for it) unless pinned already, and renew a hold running low.
fn pin_action(
    d: &Desired,
    p: &Present,
    observed: &Observed,
    holds: &HoldPolicy,
    now: DateTime<Utc>,
) -> Option<Action> {
    let ours: Vec<&String> = p
        .names
        .iter()
        .filter(|n| observed.pinned_by_us.contains(*n))
        .collect();
    if ours.is_empty() {
        // Pinned by someone else, or a runtime that ignores pins: nothing.
        return (!p.pinned && observed.pin_supported).then(|| Action::Pin {
            name: d.name.clone(),
            hold_until: d.hold.then(|| holds.until(now)),
        });
    }
    if !d.hold {
        return None;
    }
    // The hold in force is the earliest of our records' (none: missing).
    let current = ours
        .iter()
        .map(|n| observed.holds.get(*n).copied())
        .min()
        .flatten();
    current
        .is_none_or(|t| t < holds.renew_before(now))
        .then(|| Action::Hold {
            name: d.name.clone(),
            until: holds.until(now),
        })
}

/// Records whose image a container uses: `records` are (name, target
/// digest) pairs, `refs` what containers name their image by (tag, digest
/// or id). Every record of an image shares its target, so one match marks
/// all of them.
pub fn records_in_use(records: &[(String, String)], refs: &BTreeSet<String>) -> BTreeSet<String> {
    let targets: BTreeSet<&String> = records
        .iter()
        .filter(|(name, _)| refs.contains(name))
        .map(|(_, target)| target)
        .collect();
    records
        .iter()
        .filter(|(_, target)| targets.contains(target))
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
#[path = "warm_tests.rs"]
mod tests;
