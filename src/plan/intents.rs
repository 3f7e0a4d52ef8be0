//! Which of the coordinator's intents this node carries out, and how much
//! of them: every intent ends (its deadline capped at `intents.maxDeadline`
//! after the agent received it; a deadline of 0 ends then too), and the
//! images pinned for intents are capped in number and bytes, and never
//! pulled while the disk is at its floor.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::reference::ImageRef;
use crate::config::IntentLimits;
use crate::wire::v1::Intent;

/// When the agent received each intent's current deadline, by (id,
/// deadline). A renewed deadline is a new receipt.
pub type Receipts = BTreeMap<(String, i64), DateTime<Utc>>;

/// The receipts for `intents`: earlier ones kept, new ones `now`, those of
/// intents no longer sent dropped.
pub fn receipts(prev: &Receipts, intents: &[Intent], now: DateTime<Utc>) -> Receipts {
    intents
        .iter()
        .map(|i| {
            let key = (i.id.clone(), i.deadline_unix);
            let at = prev.get(&key).copied().unwrap_or(now);
            (key, at)
        })
        .collect()
}

/// When an intent ends on this node: its deadline, at most `max` after it
/// was received; no deadline (0) ends `max` after receipt.
pub fn effective_end(deadline_unix: i64, received: DateTime<Utc>, max: Duration) -> DateTime<Utc> {
    let cap = received + TimeDelta::from_std(max).unwrap_or(TimeDelta::MAX);
    match DateTime::from_timestamp(deadline_unix, 0) {
        Some(d) if deadline_unix != 0 => d.min(cap),
        _ => cap,
    }
}

/// An image one or more intents ask this node for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentImage {
    pub image: ImageRef,
    /// The highest priority among the intents naming it.
    pub priority: i64,
    /// The id of one intent with that priority.
    pub intent: String,
}

/// The images of the intents that apply to this node now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applicable {
    /// By CRI name.
    pub images: BTreeMap<String, IntentImage>,
    /// Images that do not parse: (intent id, message).
    pub bad: Vec<(String, String)>,
    /// When the first applicable intent ends (the agent wakes then).
    pub next_end: Option<DateTime<Utc>>,
    /// The ids of the intents that apply.
    pub ids: std::collections::BTreeSet<String>,
}

/// Intents that apply now: not ended, selector matching, naming this node
/// (or no node).
pub fn applicable(
    intents: &[Intent],
    receipts: &Receipts,
    node: &str,
    labels: &BTreeMap<String, String>,
    max_deadline: Duration,
    now: DateTime<Utc>,
) -> Applicable {
    let mut out = Applicable::default();
    for i in intents {
        let received = receipts
            .get(&(i.id.clone(), i.deadline_unix))
            .copied()
            .unwrap_or(now);
        let end = effective_end(i.deadline_unix, received, max_deadline);
        let selected = i
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        let named = i.nodes.is_empty() || i.nodes.iter().any(|n| n == node);
        if end <= now || !selected || !named {
            continue;
        }
        out.next_end = Some(out.next_end.map_or(end, |t| t.min(end)));
        out.ids.insert(i.id.clone());
        for raw in &i.images {
            match raw.parse::<ImageRef>() {
                Ok(image) => merge(&mut out.images, image, i),
                Err(e) => out.bad.push((i.id.clone(), e.to_string())),
            }
        }
    }
    out
}

fn merge(images: &mut BTreeMap<String, IntentImage>, image: ImageRef, i: &Intent) {
    let e = images.entry(image.cri_name()).or_insert(IntentImage {
        image,
        priority: i.priority,
        intent: i.id.clone(),
    });
    if i.priority > e.priority {
        e.priority = i.priority;
        e.intent = i.id.clone();
    }
}

/// Why an intent's image is not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `intents.maxImages` images of higher priority are taken.
    MaxImages,
    /// Pinning it would exceed `intents.maxBytes`.
    MaxBytes,
    /// It is missing and the disk is at its floor.
    DiskFloor,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxImages => "intents.maxImages reached",
            Refusal::MaxBytes => "intents.maxBytes reached",
            Refusal::DiskFloor => "disk at pacing.diskFloor",
        }
    }
}

/// What the node has room for.
#[derive(Debug, Clone, Default)]
pub struct Room {
    /// CRI-reported size of the images present, by CRI name.
    pub present: BTreeMap<String, u64>,
    /// Whether free space is above the disk floor (unknown counts as above:
    /// each pull checks the floor itself).
    pub above_floor: bool,
}

/// The intent images carried out and those refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    pub images: BTreeMap<String, IntentImage>,
    pub refused: BTreeMap<String, Refusal>,
    /// Bytes of the admitted images that are present.
    pub bytes: u64,
}

/// Takes images by priority (present ones first at equal priority, so a
/// pin is not traded for a new pull) until a limit is reached. A missing
/// image counts its bytes once it is present.
pub fn admit(
    images: &BTreeMap<String, IntentImage>,
    limits: &IntentLimits,
    room: &Room,
) -> Admission {
    let mut order: Vec<(&String, &IntentImage)> = images.iter().collect();
    order.sort_by_key(|(name, i)| (-i.priority, !room.present.contains_key(*name), *name));
    let max_bytes = (!limits.max_bytes.is_zero()).then_some(limits.max_bytes.as_u64());
    let mut out = Admission::default();
    for (name, img) in order {
        let size = room.present.get(name).copied();
        let refusal = if out.images.len() >= limits.max_images {
            Some(Refusal::MaxImages)
        } else if size.is_none() && !room.above_floor {
            Some(Refusal::DiskFloor)
        } else if max_bytes.is_some_and(|m| match size {
            Some(s) => out.bytes.saturating_add(s) > m,
            None => out.bytes >= m,
        }) {
            Some(Refusal::MaxBytes)
        } else {
            None
        };
        match refusal {
            Some(r) => {
                out.refused.insert(name.clone(), r);
            }
            None => {
                out.bytes = out.bytes.saturating_add(size.unwrap_or(0));
                out.images.insert(name.clone(), img.clone());
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "intents_tests.rs"]
mod tests;
