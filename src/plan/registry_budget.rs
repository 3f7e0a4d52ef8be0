//! When each node starts pulling from each registry, so that no registry sees
//! more than its egress budget and every node is still warm by its deadline.
//!
//! A pure function of (budgets, demands, options, now): no clock, no I/O.
//! Times are planned in whole seconds (what the wire carries).
//!
//! Per registry with a budget of `B` bytes/s and `N` concurrent nodes:
//! 1. **Lanes.** The budget is split into `K` lanes, `K` = the smallest of
//!    `N`, `B` ÷ the slowest node's rate, the number of demands (and `B`),
//!    but at least one per started pull while `N` allows.
//!    Each lane carries one node at a time, capped at `B / K`; so at any
//!    instant at most `K ≤ N` nodes pull and their caps sum to at most `B`.
//!    A node pulls at `min(own rate, B / K)`; its pull takes
//!    `missing × safetyFactor ÷ that rate`.
//! 2. **Started** demands keep their lane (never moved) until their
//!    predicted finish; if more are started than there are lanes, the
//!    overflow shares lanes and nothing new starts there until all are done.
//! 3. **Backward pass**, latest deadline first: each demand goes into the
//!    lane that stays free the latest, finishing by `min(deadline, next job
//!    in the lane)`, starting as late as that allows but never after
//!    `deadline − minLead`, and never before now or the lane's started pull.
//! 4. **Late** demands (those that fit in no lane) are placed by a forward
//!    pass, earliest deadline first, into the earliest gap of any lane long
//!    enough to hold them (a lane's end is always such a gap): as early as
//!    possible without pushing an on-time node past its deadline.
//!
//! Registries without a budget keep today's local plan: start at
//! `deadline − max(minLead, estimate)`, no cap. O(n log n + late × gaps).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::windows::MAX_ESTIMATE;

/// One registry's egress budget. `host` "*" = the default for any host
/// without its own (each such host gets its own budget of that size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryBudget {
    pub host: String,
    /// 0 = unlimited.
    pub bytes_per_sec: u64,
    /// 0 = unlimited.
    pub max_nodes: u32,
}

impl RegistryBudget {
    /// A budget that limits something (both zero = no budget).
    pub fn limits(&self) -> bool {
        self.bytes_per_sec > 0 || self.max_nodes > 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budgets {
    pub registries: Vec<RegistryBudget>,
}

impl Budgets {
    /// The budget for `host` (case-insensitive exact match), else the `*`
    /// default, else None. (`for` is a Rust keyword, hence the name.)
    pub fn for_host(&self, host: &str) -> Option<&RegistryBudget> {
        let exact = self
            .registries
            .iter()
            .find(|b| b.host != "*" && b.host.eq_ignore_ascii_case(host));
        exact.or_else(|| self.registries.iter().find(|b| b.host == "*"))
    }

    /// True when no registry has a budget that limits anything.
    pub fn is_unlimited(&self) -> bool {
        !self.registries.iter().any(RegistryBudget::limits)
    }
}

/// What one node must still pull from one registry for one window occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub node: String,
    pub window: String,
    pub registry: String,
    pub missing_bytes: u64,
    /// What this node reaches alone (learned throughput); None = unknown
    /// (the planner uses `PlanOptions::default_node_rate`).
    pub node_rate: Option<f64>,
    /// Must be warm by then (the occurrence's start).
    pub deadline: DateTime<Utc>,
    /// Already pulling since then (keeps its slot and rate; never moved).
    pub started: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Bytes/s of a node whose throughput is unknown.
    pub default_node_rate: f64,
    /// Like `scheduling.safetyFactor`; below 1 or not finite = 1.
    pub safety_factor: f64,
    /// Never start later than `deadline − min_lead`.
    pub min_lead: Duration,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            default_node_rate: (50u64 << 20) as f64,
            safety_factor: 1.5,
            min_lead: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub node: String,
    pub window: String,
    pub registry: String,
    pub start: DateTime<Utc>,
    /// Cap for this node's pulls from this registry for this window; 0 = none.
    pub bytes_per_sec: u64,
    /// Predicted.
    pub finish: DateTime<Utc>,
    /// finish > deadline even inside the budget.
    pub late: bool,
}

/// Plans every demand; the result is in the order of `demands`.
pub fn plan(
    budgets: &Budgets,
    demands: &[Demand],
    opts: &PlanOptions,
    now: DateTime<Utc>,
) -> Vec<Assignment> {
    let opts = Options::new(opts);
    let now = ceil_secs(now);
    let mut placed = vec![Placement::default(); demands.len()];
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in demands.iter().enumerate() {
        groups
            .entry(d.registry.to_ascii_lowercase())
            .or_default()
            .push(i);
    }
    for (host, idx) in groups {
        let jobs: Vec<Job> = idx
            .iter()
            .map(|&i| Job::new(i, &demands[i], &opts))
            .collect();
        match budgets.for_host(&host).filter(|b| b.limits()) {
            Some(b) => plan_budgeted(b, jobs, now, &mut placed),
            None => jobs.iter().for_each(|j| placed[j.idx] = unbudgeted(j, now)),
        }
    }
    demands
        .iter()
        .zip(placed)
        .map(|(d, p)| p.assignment(d))
        .collect()
}

/// The highest sum of caps over time among `assignments` from `registry`
/// (case-insensitive) that have a cap; what the registry sees at most.
pub fn planned_peak(assignments: &[Assignment], registry: &str) -> u64 {
    let mut events: Vec<(DateTime<Utc>, i128)> = Vec::new();
    for a in assignments {
        if a.bytes_per_sec > 0 && a.finish > a.start && a.registry.eq_ignore_ascii_case(registry) {
            events.push((a.start, i128::from(a.bytes_per_sec)));
            events.push((a.finish, -i128::from(a.bytes_per_sec)));
        }
    }
    // Ends before starts at the same instant: intervals are [start, finish).
    events.sort();
    let (mut cur, mut peak) = (0i128, 0i128);
    for (_, delta) in events {
        cur += delta;
        peak = peak.max(cur);
    }
    u64::try_from(peak).unwrap_or(u64::MAX)
}

/// Sanitised options.
struct Options {
    default_rate: f64,
    safety: f64,
    min_lead: i64,
}

impl Options {
    fn new(o: &PlanOptions) -> Self {
        Self {
            default_rate: valid_rate(Some(o.default_node_rate)).unwrap_or(1.0),
            safety: match o.safety_factor {
                f if f.is_finite() && f >= 1.0 => f,
                _ => 1.0,
            },
            min_lead: i64::try_from(o.min_lead.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

fn valid_rate(r: Option<f64>) -> Option<f64> {
    r.filter(|r| r.is_finite() && *r >= 1.0)
}

/// One demand in planner units (seconds since the epoch, bytes/s).
#[derive(Debug, Clone)]
struct Job<'a> {
    idx: usize,
    demand: &'a Demand,
    /// Bytes to move, safety factor included.
    work: f64,
    rate: f64,
    deadline: i64,
    latest_start: i64,
    started: Option<i64>,
}

impl<'a> Job<'a> {
    fn new(idx: usize, d: &'a Demand, o: &Options) -> Self {
        let deadline = d.deadline.timestamp();
        Self {
            idx,
            demand: d,
            work: d.missing_bytes as f64 * o.safety,
            rate: valid_rate(d.node_rate).unwrap_or(o.default_rate),
            deadline,
            latest_start: deadline.saturating_sub(o.min_lead),
            started: d.started.map(|s| s.timestamp()),
        }
    }

    /// Whole seconds to pull at `cap` (bytes/s, infinite = uncapped).
    fn duration(&self, cap: f64) -> i64 {
        let secs = self.work / self.rate.min(cap);
        if secs.is_finite() && secs < MAX_ESTIMATE.as_secs_f64() {
            secs.ceil() as i64
        } else {
            MAX_ESTIMATE.as_secs() as i64
        }
    }

    fn is_empty(&self) -> bool {
        self.work <= 0.0
    }
}

/// Where one demand ended up (seconds since the epoch).
#[derive(Debug, Clone, Copy, Default)]
struct Placement {
    start: i64,
    finish: i64,
    cap: u64,
    late: bool,
}

impl Placement {
    fn at(job: &Job, start: i64, dur: i64, cap: u64) -> Self {
        let finish = start.saturating_add(dur);
        Self {
            start,
            finish,
            cap,
            late: finish > job.deadline,
        }
    }

    /// Nothing to pull is never late.
    fn nothing(job: &Job) -> Self {
        let start = job.started.unwrap_or(job.latest_start);
        Self {
            start,
            finish: start,
            cap: 0,
            late: false,
        }
    }

    fn assignment(self, d: &Demand) -> Assignment {
        Assignment {
            node: d.node.clone(),
            window: d.window.clone(),
            registry: d.registry.clone(),
            start: instant(self.start),
            bytes_per_sec: self.cap,
            finish: instant(self.finish),
            late: self.late,
        }
    }
}

/// Today's local plan: start `max(minLead, estimate)` before the deadline.
fn unbudgeted(job: &Job, now: i64) -> Placement {
    if job.is_empty() {
        return Placement::nothing(job);
    }
    let dur = job.duration(f64::INFINITY);
    match job.started {
        Some(s) => Placement {
            start: s,
            ..Placement::at(job, now, dur, 0)
        },
        None => {
            let start = job.latest_start.min(job.deadline.saturating_sub(dur));
            // A start in the past begins now.
            let finish = start.max(now).saturating_add(dur);
            Placement {
                start,
                finish,
                cap: 0,
                late: finish > job.deadline,
            }
        }
    }
}

/// One lane of a registry's budget.
#[derive(Debug, Clone)]
struct Lane {
    /// Nothing new before this: now, or the end of the started pulls in it.
    lower: i64,
    /// Backward pass: the start of the earliest job placed so far.
    free_before: i64,
    /// Placed jobs, latest first.
    busy: Vec<(i64, i64)>,
}

fn plan_budgeted(b: &RegistryBudget, jobs: Vec<Job<'_>>, now: i64, placed: &mut [Placement]) {
    let (empty, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(Job::is_empty);
    empty
        .iter()
        .for_each(|j| placed[j.idx] = Placement::nothing(j));
    if jobs.is_empty() {
        return;
    }
    let started = jobs.iter().filter(|j| j.started.is_some()).count();
    let k = lane_count(b, &jobs, started);
    let (cap, rate) = match b.bytes_per_sec {
        0 => (0, f64::INFINITY),
        bps => (bps / k as u64, (bps / k as u64) as f64),
    };
    let mut lanes = vec![
        Lane {
            lower: now,
            free_before: i64::MAX,
            busy: Vec::new(),
        };
        k
    ];
    let (started, mut fresh): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.started.is_some());
    place_started(&started, &mut lanes, now, cap, rate, placed);
    fresh.sort_by(|a, b| order(b, a));
    let late = backward(&fresh, &mut lanes, now, cap, rate, placed);
    forward(&late, &lanes, cap, rate, placed);
}

/// `K` lanes: never more than `max_nodes`, the demands, or `B` (so each
/// lane keeps at least 1 byte/s), and no more than `B` ÷ the slowest node,
/// so every lane carries at least the slowest node's rate, except that
/// every started pull keeps a lane while `max_nodes` allows (a re-plan
/// lowers their caps rather than overrunning `B`).
fn lane_count(b: &RegistryBudget, jobs: &[Job], started: usize) -> usize {
    let mut k = jobs.len();
    if b.bytes_per_sec > 0 {
        let slowest = jobs.iter().map(|j| j.rate).fold(f64::INFINITY, f64::min);
        let by_rate = (b.bytes_per_sec as f64 / slowest).floor().max(1.0);
        k = k.min(by_rate as usize);
    }
    k = k.max(started);
    if b.max_nodes > 0 {
        k = k.min(b.max_nodes as usize);
    }
    if b.bytes_per_sec > 0 {
        k = k.min(usize::try_from(b.bytes_per_sec).unwrap_or(usize::MAX));
    }
    k.max(1)
}

/// Earliest deadline first, ties by node name, then the rest of the demand
/// (so equal inputs in any order plan alike).
fn order(a: &Job, b: &Job) -> std::cmp::Ordering {
    let (da, db) = (a.demand, b.demand);
    a.deadline
        .cmp(&b.deadline)
        .then_with(|| da.node.cmp(&db.node))
        .then_with(|| da.window.cmp(&db.window))
        .then_with(|| a.work.total_cmp(&b.work))
        .then_with(|| a.rate.total_cmp(&b.rate))
        .then_with(|| a.started.cmp(&b.started))
}

fn place_started(
    started: &[Job],
    lanes: &mut [Lane],
    now: i64,
    cap: u64,
    rate: f64,
    placed: &mut [Placement],
) {
    let mut fin: Vec<(i64, &Job)> = started
        .iter()
        .map(|j| (now.saturating_add(j.duration(rate)), j))
        .collect();
    // Longest first, each to the lane that frees first.
    fin.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| order(a.1, b.1)));
    let mut by_lower: BTreeSet<(i64, usize)> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (l.lower, i))
        .collect();
    for (finish, job) in fin {
        let Some((lower, i)) = by_lower.pop_first() else {
            return; // k >= 1
        };
        lanes[i].lower = lower.max(finish);
        by_lower.insert((lanes[i].lower, i));
        placed[job.idx] = Placement {
            start: job.started.unwrap_or(now),
            finish,
            cap,
            late: finish > job.deadline,
        };
    }
}

/// Latest deadline first into the lane free latest; returns the jobs that
/// fit nowhere before their deadline.
fn backward<'j, 'd>(
    jobs: &'j [Job<'d>],
    lanes: &mut [Lane],
    now: i64,
    cap: u64,
    rate: f64,
    placed: &mut [Placement],
) -> Vec<&'j Job<'d>> {
    let mut by_free: BTreeSet<(i64, usize)> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (l.free_before, i))
        .collect();
    let mut late = Vec::new();
    for job in jobs {
        let dur = job.duration(rate);
        match fit(job, dur, lanes, &by_free, now) {
            Some((i, start)) => {
                by_free.remove(&(lanes[i].free_before, i));
                lanes[i].free_before = start;
                lanes[i].busy.push((start, start.saturating_add(dur)));
                by_free.insert((start, i));
                placed[job.idx] = Placement::at(job, start, dur, cap);
            }
            None => late.push(job),
        }
    }
    late
}

/// The lane (free latest first) and latest start at which `job` finishes on
/// time, if any.
fn fit(
    job: &Job,
    dur: i64,
    lanes: &[Lane],
    by_free: &BTreeSet<(i64, usize)>,
    now: i64,
) -> Option<(usize, i64)> {
    for &(free_before, i) in by_free.iter().rev() {
        let end = job.deadline.min(free_before);
        if end < now.saturating_add(dur) {
            return None; // lanes further down are free even less long
        }
        let lower = lanes[i].lower;
        if lower.saturating_add(dur) <= end {
            let latest = end.saturating_sub(dur).min(job.latest_start);
            return Some((i, latest.max(lower)));
        }
    }
    None
}

/// Earliest deadline first into the earliest gap that holds them.
fn forward(late: &[&Job], lanes: &[Lane], cap: u64, rate: f64, placed: &mut [Placement]) {
    if late.is_empty() {
        return;
    }
    let mut gaps = gaps(lanes);
    for job in late.iter().rev() {
        let dur = job.duration(rate);
        let found = gaps
            .iter()
            .find(|&&(start, _, end)| end.saturating_sub(start) >= dur)
            .copied();
        // The last gap of every lane is open-ended, so one always holds it.
        let Some(gap @ (start, lane, end)) = found else {
            continue;
        };
        gaps.remove(&gap);
        let finish = start.saturating_add(dur);
        if finish < end {
            gaps.insert((finish, lane, end));
        }
        placed[job.idx] = Placement::at(job, start, dur, cap);
    }
}

/// Free intervals `(start, lane, end)` of every lane after the backward pass.
fn gaps(lanes: &[Lane]) -> BTreeSet<(i64, usize, i64)> {
    let mut out = BTreeSet::new();
    for (i, lane) in lanes.iter().enumerate() {
        let mut from = lane.lower;
        for &(start, finish) in lane.busy.iter().rev() {
            if start > from {
                out.insert((from, i, start));
            }
            from = from.max(finish);
        }
        out.insert((from, i, i64::MAX));
    }
    out
}

/// `t` rounded up to a whole second.
fn ceil_secs(t: DateTime<Utc>) -> i64 {
    let s = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// Seconds since the epoch as an instant, clamped to chrono's range.
fn instant(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(if secs < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

#[cfg(test)]
#[path = "registry_budget_tests.rs"]
mod tests;
