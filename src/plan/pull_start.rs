//! When an agent starts pulling a window's images from one registry, and how
//! fast: the coordinator's registry-budget schedule while the link is up,
//! else the node's own plan shifted earlier by a per-node jitter (so a pool's
//! agents do not all hit the registry on the same second, and every
//! deadline the local plan meets still holds). Pure: no clock, no I/O.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::windows::{Phase, WarmStarts, WindowStatus};
use crate::wire::v1::PullSchedule;

/// A deterministic share of `max` in [0, `max`) for `node`'s warming of
/// `window`'s occurrence starting at `occurrence`: the same in every
/// process and on every restart, different between nodes and occurrences.
pub fn jitter(node: &str, window: &str, occurrence: DateTime<Utc>, max: Duration) -> Duration {
    let max_ms = max.as_millis().min(u128::from(u64::MAX));
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut h = Fnv::new();
    h.write(node.as_bytes());
    h.write(&[0]);
    h.write(window.as_bytes());
    h.write(&[0]);
    h.write(&occurrence.timestamp().to_be_bytes());
    // Multiply-shift maps the hash onto [0, max_ms) without modulo bias.
    let ms = (u128::from(h.finish()) * max_ms) >> 64;
    Duration::from_millis(ms as u64)
}

/// FNV-1a, 64 bit: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    /// A final avalanche (splitmix64) so nearby inputs spread over the range.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Which start and cap apply to this node's pulls.
#[derive(Debug, Clone, Copy)]
pub struct Starts<'a> {
    pub node: &'a str,
    /// `scheduling.startJitter`.
    pub max_jitter: Duration,
    /// The coordinator's schedules for this node; empty while the link is
    /// down (they count only while it is up).
    pub schedules: &'a [PullSchedule],
}

impl Starts<'_> {
    /// The schedule for `window`'s images from `registry`, if it is for the
    /// occurrence starting at `next` (an older one no longer applies).
    pub fn schedule(
        &self,
        window: &str,
        registry: &str,
        next: DateTime<Utc>,
    ) -> Option<&PullSchedule> {
        self.schedules.iter().find(|s| {
            s.window == window && s.registry == registry && s.deadline_unix == next.timestamp()
        })
    }

    /// When pulls of `window`'s images from `registry` may start, for the
    /// occurrence at `next` whose local plan starts at `local`.
    pub fn image_start(
        &self,
        window: &str,
        registry: &str,
        next: DateTime<Utc>,
        local: DateTime<Utc>,
    ) -> DateTime<Utc> {
        match self.schedule(window, registry, next) {
            Some(s) => DateTime::from_timestamp(s.start_unix, 0).unwrap_or(local),
            None => self.jittered(window, next, local),
        }
    }

    /// The cap in bytes/s on those pulls; None when no schedule caps them.
    pub fn cap(&self, window: &str, registry: &str, next: DateTime<Utc>) -> Option<u64> {
        self.schedule(window, registry, next)
            .map(|s| s.bytes_per_second)
            .filter(|b| *b > 0)
    }

    /// The local plan, moved earlier by this node's jitter.
    pub fn jittered(
        &self,
        window: &str,
        next: DateTime<Utc>,
        local: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let j = jitter(self.node, window, next, self.max_jitter);
        TimeDelta::from_std(j)
            .ok()
            .and_then(|d| local.checked_sub_signed(d))
            .unwrap_or(local)
    }
}

/// A schedule's cap on one pull: the window and registry it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub window: String,
    pub registry: String,
    pub bytes_per_sec: u64,
}

impl Starts<'_> {
    /// The earliest instant a pull of an image from `registry` wanted only
    /// by `windows` (names, of `statuses`) may start: the earliest start
    /// among those windows warming for it; None when one of them is already
    /// open (late: pull now) or none is warming.
    pub fn not_before(
        &self,
        statuses: &[WindowStatus],
        windows: &[String],
        registry: &str,
    ) -> Option<DateTime<Utc>> {
        let mut earliest: Option<DateTime<Utc>> = None;
        for st in statuses
            .iter()
            .filter(|s| s.applies && windows.contains(&s.name))
        {
            match st.phase {
                Phase::Active | Phase::Late => return None,
                Phase::Warming => {
                    let at = self.image_start(
                        &st.name,
                        registry,
                        st.next_activation,
                        st.local_warm_start,
                    );
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                }
                Phase::Idle | Phase::Grace => {}
            }
        }
        earliest
    }

    /// The schedule cap on a pull from `registry` for `windows`: that of
    /// the highest-priority warming window with one (ties by name).
    pub fn pull_cap(
        &self,
        statuses: &[WindowStatus],
        windows: &[String],
        registry: &str,
    ) -> Option<Cap> {
        statuses
            .iter()
            .filter(|s| s.applies && s.phase == Phase::Warming && windows.contains(&s.name))
            .filter_map(|s| {
                let b = self.cap(&s.name, registry, s.next_activation)?;
                Some((s.priority, std::cmp::Reverse(&s.name), b))
            })
            .max()
            .map(|(_, name, b)| Cap {
                window: name.0.clone(),
                registry: registry.to_string(),
                bytes_per_sec: b,
            })
    }
}

impl WarmStarts for Starts<'_> {
    /// The window warms from the earliest start among the registries it
    /// still needs something from.
    fn warm_start(
        &self,
        window: &str,
        next: DateTime<Utc>,
        local: DateTime<Utc>,
        cold_registries: &BTreeSet<String>,
    ) -> DateTime<Utc> {
        cold_registries
            .iter()
            .map(|r| self.image_start(window, r, next, local))
            .min()
            .unwrap_or_else(|| self.jittered(window, next, local))
    }
}

#[cfg(test)]
#[path = "pull_start_tests.rs"]
mod tests;
