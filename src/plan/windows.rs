//! Which images activation windows want on a node at a given instant.
//!
//! A pure function of (windows, scheduling defaults, node view, now): no clock
//! and no I/O, so an agent that restarts mid-window computes the same plan and
//! tests pass exact instants.
//!
//! Each window occurrence is `[start, start + duration)` in real elapsed time,
//! or `[start, first end occurrence after start)` for a window with an `end`
//! schedule (a KEDA cron trigger's start/end pair), followed by a grace period `[end, end + grace)` during which pins are held
//! but nothing is pulled. Warming for the next start begins `max(leadTime,
//! estimated pull)` before it, where the estimate is the bytes the node still
//! lacks ÷ throughput × `scheduling.safetyFactor`.
//!
//! Starts are computed by croner in the window's time zone (OCPS / Vixie
//! behaviour across daylight saving changes):
//! - a start that falls into a spring-forward gap runs at the first valid
//!   instant after the gap (02:30 on a day where 02:00 jumps to 03:00 runs at
//!   03:00); interval schedules (`0 * * * *`) simply skip the missing hour;
//! - in a fall-back overlap a fixed-time schedule (single second, minute and
//!   hour) runs once, at the earlier instant; interval schedules run at both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::windows::{Scheduling, Window};
use crate::config::ImageRef;

/// Priority base of images of late windows (active, not yet warm): above any
/// window priority (an `i32`), while late windows still order among
/// themselves by their own priority.
pub const LATE_PRIORITY: i64 = 1 << 40;

/// Upper bound of a pull estimate, to keep time arithmetic in range.
pub const MAX_ESTIMATE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the planner needs to know about the node.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub labels: &'a BTreeMap<String, String>,
    /// Bytes this node still lacks per image (CRI name as produced by
    /// [`cri_name`]); absent = unknown.
    pub missing_bytes: &'a BTreeMap<String, u64>,
    /// Images (CRI names) present and unpacked on the node now.
    pub warm: &'a BTreeSet<String>,
    /// Measured download throughput in bytes/s, `None` until measured.
    pub throughput: Option<f64>,
}

/// Where a window stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing to do before the next warm start.
    Idle,
    /// Pulling ahead of the next start.
    Warming,
    /// Inside an occurrence with every image warm.
    Active,
    /// Inside an occurrence but some image is not warm yet.
    Late,
    /// The occurrence ended; pins are held, nothing is pulled.
    Grace,
}

impl Phase {
    /// Lowercase name, for logs, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Warming => "warming",
            Phase::Active => "active",
            Phase::Late => "late",
            Phase::Grace => "grace",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One window as seen from this node at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStatus {
    pub name: String,
    /// "config", or the coordinator's source of the window.
    pub source: String,
    /// The window's nodeSelector matches this node.
    pub applies: bool,
    pub phase: Phase,
    /// Next start strictly after now (for Idle/Warming, the one being
    /// prepared). `DateTime::<Utc>::MAX_UTC` if the schedule never fires
    /// again, which validated configurations rule out.
    pub next_activation: DateTime<Utc>,
    /// `[start, end)` being warmed for, active, or in grace; `None` when Idle.
    pub occurrence: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// When warming for `next_activation` starts.
    pub warm_start: DateTime<Utc>,
    /// When the node's own plan would start it (before [`WarmStarts`]).
    pub local_warm_start: DateTime<Utc>,
    /// CRI names of the window's images.
    pub images: Vec<String>,
    /// Bytes still missing over images not warm; `None` if any is unknown.
    pub missing_bytes: Option<u64>,
    /// The known missing bytes by registry host, over images not warm (a
    /// registry whose cold images are all unmeasured shows 0).
    pub missing_by_registry: BTreeMap<String, u64>,
    pub estimated_pull: Duration,
    pub priority: i32,
    pub all_warm: bool,
}

/// An image some window wants on the node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredImage {
    /// CRI name.
    pub name: String,
    pub image: ImageRef,
    pub pin: bool,
    /// False during Grace: keep the pin, don't pull.
    pub pull: bool,
    /// Max over the wanting windows; late windows add [`LATE_PRIORITY`].
    pub priority: i64,
    /// Names of the windows that want it, in configuration order.
    pub windows: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowPlan {
    /// One status per configured window, in configuration order.
    pub windows: Vec<WindowStatus>,
    /// Sorted by priority (highest first), then name.
    pub desired: Vec<DesiredImage>,
    /// Earliest future instant at which some applying window changes phase
    /// (warm start, start, end or end of grace); `None` if there is none.
    pub next_wakeup: Option<DateTime<Utc>>,
}

/// Moves a window's warm start away from the node's own plan (a registry
/// budget's schedule, a per-node jitter: [`crate::plan::pull_start`]).
pub trait WarmStarts {
    /// When warming for the occurrence starting at `next` begins, given the
    /// node's own plan `local` and the registries of the images not warm.
    fn warm_start(
        &self,
        window: &str,
        next: DateTime<Utc>,
        local: DateTime<Utc>,
        cold_registries: &BTreeSet<String>,
    ) -> DateTime<Utc>;
}

/// The node's own plan, unchanged.
pub struct LocalStarts;

impl WarmStarts for LocalStarts {
    fn warm_start(
        &self,
        _: &str,
        _: DateTime<Utc>,
        local: DateTime<Utc>,
        _: &BTreeSet<String>,
    ) -> DateTime<Utc> {
        local
    }
}

/// The plan for `node` at `now`.
pub fn plan_windows(
    windows: &[Window],
    sched: &Scheduling,
    node: &NodeView,
    now: DateTime<Utc>,
) -> WindowPlan {
    plan_windows_with(windows, sched, node, &LocalStarts, now)
}

/// [`plan_windows`] with warm starts moved by `starts`.
pub fn plan_windows_with(
    windows: &[Window],
    sched: &Scheduling,
    node: &NodeView,
    starts: &dyn WarmStarts,
    now: DateTime<Utc>,
) -> WindowPlan {
    let mut desired: BTreeMap<String, DesiredImage> = BTreeMap::new();
    let mut statuses = Vec::with_capacity(windows.len());
    let mut next_wakeup: Option<DateTime<Utc>> = None;
    for window in windows {
        let eval = evaluate(window, sched, node, starts, now);
        if eval.status.applies {
            let earliest = eval.wakeups.into_iter().filter(|t| *t > now).min();
            next_wakeup = next_wakeup.into_iter().chain(earliest).min();
            want(&mut desired, window, &eval.status);
        }
        statuses.push(eval.status);
    }
    let mut desired: Vec<DesiredImage> = desired.into_values().collect();
    desired.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    WindowPlan {
        windows: statuses,
        desired,
        next_wakeup,
    }
}

/// The next `n` starts strictly after `after`, computed in the window's time
/// zone and returned in UTC (fewer if the schedule stops firing).
pub fn activations(w: &Window, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut starts = Vec::with_capacity(n);
    let mut cursor = after;
    while starts.len() < n {
        match w.next_start(cursor) {
            Some(start) => {
                starts.push(start);
                cursor = start;
            }
            None => break,
        }
    }
    starts
}

/// Expected download time for `bytes`, safety factor included, rounded up
/// to whole seconds and capped at [`MAX_ESTIMATE`].
pub fn estimate_pull(bytes: u64, throughput: Option<f64>, sched: &Scheduling) -> Duration {
    if bytes == 0 {
        return Duration::ZERO;
    }
    let measured = throughput.filter(|t| t.is_finite() && *t > 0.0);
    let rate = measured.unwrap_or(sched.default_throughput.as_u64() as f64);
    // Unvalidated inputs (factor < 1 or NaN) fall back to no headroom.
    let factor = match sched.safety_factor {
        f if f.is_finite() && f >= 1.0 => f,
        _ => 1.0,
    };
    let secs = bytes as f64 / rate * factor;
    match secs {
        s if s.is_finite() && s < MAX_ESTIMATE.as_secs_f64() => {
            Duration::from_secs(s.ceil() as u64)
        }
        _ => MAX_ESTIMATE,
    }
}

/// A window's status plus the instants at which it next changes phase.
struct Evaluation {
    status: WindowStatus,
    wakeups: Vec<DateTime<Utc>>,
}

fn evaluate(
    w: &Window,
    sched: &Scheduling,
    node: &NodeView,
    starts: &dyn WarmStarts,
    now: DateTime<Utc>,
) -> Evaluation {
    let mut images: Vec<String> = Vec::with_capacity(w.images.len());
    for item in &w.images {
        let name = item.image.cri_name();
        if !images.contains(&name) {
            images.push(name);
        }
    }
    let cold: Vec<&String> = images.iter().filter(|n| !node.warm.contains(*n)).collect();
    let known: Vec<u64> = cold
        .iter()
        .filter_map(|n| node.missing_bytes.get(*n).copied())
        .collect();
    let missing_sum = known.iter().fold(0u64, |acc, b| acc.saturating_add(*b));
    let missing_bytes = (known.len() == cold.len()).then_some(missing_sum);
    let mut missing_by_registry: BTreeMap<String, u64> = BTreeMap::new();
    for name in &cold {
        let bytes = node.missing_bytes.get(*name).copied().unwrap_or(0);
        let entry = missing_by_registry.entry(registry_of(name)).or_default();
        *entry = entry.saturating_add(bytes);
    }
    let estimated_pull = estimate_pull(missing_sum, node.throughput, sched);
    let lead = w.lead_time.max(estimated_pull);
    let grace = w.effective_grace(sched);

    let next = w.next_start(now);
    let next_activation = next.unwrap_or(DateTime::<Utc>::MAX_UTC);
    let cold_registries: BTreeSet<String> = w
        .images
        .iter()
        .filter(|i| !node.warm.contains(&i.image.cri_name()))
        .map(|i| i.image.registry.clone())
        .collect();
    let local_warm_start = next.map_or(DateTime::<Utc>::MAX_UTC, |s| sub(s, lead));
    let warm_start = next.map_or(DateTime::<Utc>::MAX_UTC, |s| {
        starts.warm_start(&w.name, s, local_warm_start, &cold_registries)
    });
    // Ends grow with starts (one duration for all), so only the latest start
    // at or before now can still be active or in grace.
    let current = w
        .previous_start(now)
        .map(|start| (start, end_of(w, start)))
        .filter(|(_, end)| now < add(*end, grace));

    let applies = w.applies_to(node.labels);
    let all_warm = cold.is_empty();
    let (phase, occurrence) = match current {
        _ if !applies => (Phase::Idle, None),
        Some(occ) if now < occ.1 => (
            if all_warm { Phase::Active } else { Phase::Late },
            Some(occ),
        ),
        // Warming for the next start outranks the previous one's grace: it pulls.
        _ if next.is_some() && now >= warm_start => {
            (Phase::Warming, next.map(|s| (s, end_of(w, s))))
        }
        Some(occ) => (Phase::Grace, Some(occ)),
        None => (Phase::Idle, None),
    };

    let mut wakeups = Vec::with_capacity(4);
    if let Some((_, end)) = current {
        wakeups.extend([end, add(end, grace)]);
    }
    if let Some(start) = next {
        wakeups.extend([warm_start, start]);
    }
    Evaluation {
        status: WindowStatus {
            name: w.name.clone(),
            source: w.source_name().to_string(),
            applies,
            phase,
            next_activation,
            occurrence,
            warm_start,
            local_warm_start,
            images,
            missing_bytes,
            missing_by_registry,
            estimated_pull,
            priority: w.priority,
            all_warm,
        },
        wakeups,
    }
}

/// Adds what `status`'s phase asks of `w`'s images to `desired`.
fn want(desired: &mut BTreeMap<String, DesiredImage>, w: &Window, status: &WindowStatus) {
    let (pull, priority) = match status.phase {
        Phase::Warming | Phase::Active => (true, i64::from(w.priority)),
        Phase::Late => (true, LATE_PRIORITY + i64::from(w.priority)),
        Phase::Grace => (false, i64::from(w.priority)),
        Phase::Idle => return,
    };
    for e in w.image_entries() {
        // Grace only holds pins; an unpinned image has nothing to hold.
        if status.phase == Phase::Grace && !e.pin {
            continue;
        }
        let name = e.image.cri_name();
        let entry = desired.entry(name.clone()).or_insert_with(|| DesiredImage {
            name,
            image: e.image.clone(),
            pin: false,
            pull: false,
            priority: i64::MIN,
            windows: Vec::new(),
        });
        entry.pin |= e.pin;
        entry.pull |= pull;
        entry.priority = entry.priority.max(priority);
        if !entry.windows.contains(&w.name) {
            entry.windows.push(w.name.clone());
        }
    }
}

/// The registry host of a CRI name (normalized: `registry/repository...`).
pub fn registry_of(cri_name: &str) -> String {
    cri_name.split('/').next().unwrap_or_default().to_string()
}

/// When the occurrence starting at `start` ends; never, if its `end`
/// schedule stops firing.
fn end_of(w: &Window, start: DateTime<Utc>) -> DateTime<Utc> {
    w.end_of(start).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t + d`, saturating at the end of representable time.
fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the start of representable time.
fn sub(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
#[path = "windows_tests.rs"]
mod tests;
