//! Hold or release cold: with no eligible node warm, is holding a gated pod
//! for a node that is already pulling its images sooner than letting it
//! start cold right away, and where may a cold start go?
//!
//! Per eligible node, from what its agent reports:
//! - **warm in**: the bytes its running pulls still miss over its learned
//!   throughput. Only a node whose every image is warm or pulling (with a
//!   known size, and moving) can be waited for: a fresh pull by the agent is
//!   no faster than the kubelet pulling the same bytes at the same node's
//!   speed, so it never beats a cold start.
//! - **cold in**, for a node that is not pulling any of the images: the
//!   kubelet pulling every byte the node misses (the smallest size any node
//!   reports for each image; 0 when none does) at its throughput. A node
//!   whose agent is pulling them is no place for a cold start: its kubelet
//!   would download the same bytes again over the same link (prewarm and
//!   containerd's CRI use different ingests), while the agent needs only
//!   the rest. Such nodes are [`Estimate::competing`].
//!
//! The cold start is taken at its best: the fastest non-competing eligible
//! node, no scheduling cost. Holding wins if the soonest warm node plus
//! [`EstimateConfig::release_overhead`] beats that cold start by
//! [`EstimateConfig::hold_margin`], or if every eligible node competes (a
//! cold start anywhere would share a link with a pull). A pull whose bytes
//! have not moved for [`EstimateConfig::stall_after`] (agents report
//! progress every second) is stalled: it can neither be waited for nor
//! compete. Once all bytes are in, the pull is unpacking, which reports no
//! progress: it is stalled only after the longer of `stall_after` and the
//! time the whole pull should take.
//!
//! No I/O and no clock: `now` is passed in.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::plan::view::{ClusterView, NodeRecord};
use crate::wire::v1::image_state::Phase;

/// Knobs of the hold-or-release-cold estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateConfig {
    /// Bytes/s assumed for a node whose agent has not measured a pull yet
    /// (the agent's own `scheduling.defaultThroughput` default).
    pub default_throughput: f64,
    /// From a node becoming warm to the held pod bound there: the agent's
    /// report, the gate's re-evaluation, the patch and scheduling.
    pub release_overhead: Duration,
    /// Holding must be predicted this fraction sooner than a cold start.
    pub hold_margin: f64,
    /// A pull whose bytes have not moved this long is stalled.
    pub stall_after: Duration,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        Self {
            default_throughput: (25u64 << 20) as f64,
            release_overhead: Duration::from_millis(500),
            hold_margin: 0.2,
            stall_after: Duration::from_secs(5),
        }
    }
}

/// What the decision knows about waiting versus a cold start.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The node predicted to be warm soonest, and in how long (without the
    /// release overhead); None when no eligible node's pulls can be waited for.
    pub hold: Option<(String, Duration)>,
    /// The soonest cold start on a node not pulling the images: node and
    /// duration of its pull; None when every eligible node is pulling them.
    pub cold: Option<(String, Duration)>,
    /// Eligible nodes whose agents are pulling some of the images (moving):
    /// a pod released cold must not land there. Sorted.
    pub competing: Vec<String>,
    /// A pull of the pod's images that stopped moving: node, image, and
    /// how long it has stood still.
    pub stalled: Option<(String, String, Duration)>,
    /// Holding is predicted to beat the cold start by the margin, or no
    /// node is left for a cold start.
    pub hold_wins: bool,
}

impl Estimate {
    /// Why a cold start was chosen, for the pod's Event.
    pub fn why_cold(&self, cfg: &EstimateConfig) -> String {
        let cold = match &self.cold {
            // Zero: no node reports a size, so no duration is claimed.
            Some((node, d)) if d.is_zero() => format!("a cold start on {node}"),
            Some((node, d)) => format!("a cold start (about {} on {node})", secs(*d)),
            None => "a cold start".to_string(),
        };
        let margin = (cfg.hold_margin * 100.0).round();
        match (&self.hold, &self.stalled) {
            (Some((node, warm)), _) => format!(
                "{node} would be warm in about {} plus {} to release, not {margin}% sooner than {cold}",
                secs(*warm),
                secs(cfg.release_overhead)
            ),
            (None, Some((node, image, still))) => format!(
                "the pull of {image} on {node} has not moved for {}; {cold} is sooner than waiting",
                secs(*still)
            ),
            (None, None) if !self.competing.is_empty() => format!(
                "no eligible node is pulling all of them; {cold} is sooner than warming first"
            ),
            (None, None) => {
                format!("no eligible node is pulling them; {cold} is sooner than warming first")
            }
        }
    }
}

/// One eligible node's prospects.
#[derive(Debug, Clone, PartialEq)]
struct Prospect {
    warm_in: Option<Duration>,
    cold_in: Duration,
    /// Its agent is pulling some of the images, and the bytes move.
    competing: bool,
    stalled: Option<(String, Duration)>,
}

/// The estimate for `images` over the `eligible` nodes of `view`; None
/// when there are none.
pub fn estimate(
    images: &[String],
    eligible: &[String],
    view: &ClusterView,
    cfg: &EstimateConfig,
    now: DateTime<Utc>,
) -> Option<Estimate> {
    if eligible.is_empty() {
        return None;
    }
    let sizes: Vec<u64> = images.iter().map(|i| reported_size(view, i)).collect();
    let mut hold: Option<(String, Duration)> = None;
    let mut cold: Option<(String, Duration)> = None;
    let mut competing = Vec::new();
    let mut stalled: Option<(String, String, Duration)> = None;
    for rec in eligible.iter().filter_map(|n| view.node(n)) {
        let p = prospect(rec, images, &sizes, cfg, now);
        if let Some(w) = p.warm_in {
            if hold.as_ref().is_none_or(|(_, best)| w < *best) {
                hold = Some((rec.node.clone(), w));
            }
        }
        if p.competing {
            competing.push(rec.node.clone());
        } else if cold.as_ref().is_none_or(|(_, best)| p.cold_in < *best) {
            cold = Some((rec.node.clone(), p.cold_in));
        }
        if let Some((image, still)) = p.stalled {
            stalled.get_or_insert((rec.node.clone(), image, still));
        }
    }
    competing.sort();
    let hold_wins = hold.as_ref().is_some_and(|(_, w)| match &cold {
        Some((_, c)) => {
            let waited = w.saturating_add(cfg.release_overhead).as_secs_f64();
            waited <= c.as_secs_f64() * (1.0 - cfg.hold_margin)
        }
        None => true,
    });
    Some(Estimate {
        hold,
        cold,
        competing,
        stalled,
        hold_wins,
    })
}

/// The smallest number of missing bytes any node reports for a running
/// pull of `image` (the best case for a node that reports nothing); 0
/// when no node reports one.
fn reported_size(view: &ClusterView, image: &str) -> u64 {
    view.nodes()
        .filter_map(|r| r.images.get(image))
        .filter(|s| s.phase == Phase::Pulling as i32 && s.bytes_total > 0)
        .map(|s| s.bytes_total)
        .min()
        .unwrap_or(0)
}

fn prospect(
    rec: &NodeRecord,
    images: &[String],
    sizes: &[u64],
    cfg: &EstimateConfig,
    now: DateTime<Utc>,
) -> Prospect {
    let rate = rec
        .throughput_bytes_per_second
        .unwrap_or(cfg.default_throughput)
        .max(1.0);
    let time =
        |bytes: u64| Duration::try_from_secs_f64(bytes as f64 / rate).unwrap_or(Duration::MAX);
    let mut waitable = true;
    let mut competing = false;
    let (mut remaining, mut cold_bytes) = (0u64, 0u64);
    let mut stalled = None;
    for (image, size) in images.iter().zip(sizes) {
        let Some(s) = rec.images.get(image) else {
            waitable = false;
            cold_bytes += size;
            continue;
        };
        if s.phase == Phase::Warm as i32 {
            continue;
        }
        cold_bytes += if s.bytes_total > 0 {
            s.bytes_total
        } else {
            *size
        };
        if s.phase != Phase::Pulling as i32 {
            waitable = false;
            continue;
        }
        let still = rec
            .progress_at(image)
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or(Duration::ZERO);
        // Unpacking (every byte in) reports no progress for a while.
        let unpacking = s.bytes_total > 0 && s.bytes_done >= s.bytes_total;
        let limit = if unpacking {
            cfg.stall_after.max(time(s.bytes_total))
        } else {
            cfg.stall_after
        };
        if still > limit {
            waitable = false;
            stalled.get_or_insert((image.clone(), still));
            continue;
        }
        competing = true;
        if s.bytes_total == 0 {
            // Not resolved yet: nothing says how long it will take.
            waitable = false;
        }
        remaining += s.bytes_total.saturating_sub(s.bytes_done);
    }
    Prospect {
        warm_in: waitable.then(|| time(remaining)),
        cold_in: time(cold_bytes),
        competing,
        stalled,
    }
}

/// Seconds with one decimal, e.g. `3.2s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
