//! Registry budget simulation: N nodes each pull the same images from one
//! registry for one activation. Deterministic discrete-event simulation with
//! a fluid network model, using the real planner
//! (`prewarm::plan::registry_budget::plan`) and the agent's own lead
//! estimate (`prewarm::plan::windows::estimate_pull`).
//!
//! The registry serves at most `MAX_CLIENTS` nodes at once (others get 429
//! and retry with the agent's backoff: 0.5 s doubling to 30 s, full jitter)
//! and its egress is capped at `CAP_GBIT`, shared max-min fairly among the
//! nodes it serves. Policies:
//! - local: every node starts at activation − max(leadTime, its estimate);
//! - planned: the coordinator re-plans every `TICK_S` seconds from
//!   `HORIZON_MIN` before activation with the budget = the registry's
//!   capacity; nodes start at their planned instant, capped at their rate;
//! - planned, short horizon: the same but planning starts only
//!   `SHORT_HORIZON_MIN` before activation, so part of the pool cannot make
//!   it; those are reported late by the first plan, before activation.
//!
//! Reported, never asserted; exits non-zero only if a planned schedule (or
//! what the nodes pulled under it) exceeds the budget. Markdown to stdout.
//!
//! `cargo bench --bench registry_budget`. Env `PREWARM_BENCH_RB_<KNOB>`:
//! NODES (1000), IMAGES (10), IMAGE_MB (500), CAP_GBIT (10), MAX_CLIENTS
//! (200), LEAD_MIN (10), HORIZON_MIN (180), SHORT_HORIZON_MIN (45), SEEDS (5),
//! TICK_S (10).

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use prewarm::config::windows::Scheduling;
use prewarm::plan::registry_budget::{
    plan, Assignment, Budgets, Demand, PlanOptions, RegistryBudget,
};
use prewarm::plan::windows::estimate_pull;

const REGISTRY: &str = "registry.example";
const MB: f64 = 1e6;

#[derive(Debug, Clone)]
struct Knobs {
    nodes: usize,
    images: u64,
    image_mb: u64,
    cap_gbit: f64,
    max_clients: usize,
    lead_min: u64,
    horizon_min: u64,
    short_horizon_min: u64,
    seeds: u64,
    tick_s: u64,
}

fn knob(name: &str, default: u64) -> u64 {
    let key = format!("PREWARM_BENCH_RB_{name}");
    match std::env::var(&key) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{key}={v} is not a whole number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            nodes: knob("NODES", 1000) as usize,
            images: knob("IMAGES", 10),
            image_mb: knob("IMAGE_MB", 500),
            cap_gbit: knob("CAP_GBIT", 10) as f64,
            max_clients: knob("MAX_CLIENTS", 200).max(1) as usize,
            lead_min: knob("LEAD_MIN", 10),
            horizon_min: knob("HORIZON_MIN", 180),
            short_horizon_min: knob("SHORT_HORIZON_MIN", 45),
            seeds: knob("SEEDS", 5).max(1),
            tick_s: knob("TICK_S", 10).max(1),
        }
    }

    fn cap(&self) -> f64 {
        self.cap_gbit * 1e9 / 8.0
    }

    fn bytes_per_node(&self) -> u64 {
        self.images * self.image_mb * 1_000_000
    }
}

/// SplitMix64: a small fixed-seed generator, so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    Local,
    Planned { horizon_s: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Will try to start at this time (seconds relative to activation).
    Idle(f64),
    /// Got a 429; retries at this time.
    Waiting(f64),
    Pulling,
    Done(f64),
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    /// What the node learned about itself (the agent's throughput).
    learned: f64,
    /// What it actually reaches alone.
    actual: f64,
    remaining: f64,
    phase: Phase,
    /// Bytes/s cap from the plan; infinite = none.
    cap: f64,
    attempts: u32,
    first_attempt: Option<f64>,
    saw_429: bool,
}

fn nodes(k: &Knobs, seed: u64) -> Vec<Node> {
    let mut rng = Rng(seed);
    (0..k.nodes)
        .map(|i| {
            let learned = rng.uniform(50.0, 150.0) * MB;
            Node {
                name: format!("node-{i:05}"),
                learned,
                actual: learned * rng.uniform(0.9, 1.1),
                remaining: k.bytes_per_node() as f64,
                phase: Phase::Idle(f64::INFINITY),
                cap: f64::INFINITY,
                attempts: 0,
                first_attempt: None,
                saw_429: false,
            }
        })
        .collect()
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    peak_egress: f64,
    peak_offered: f64,
    too_many: u64,
    nodes_429: usize,
    /// Seconds after activation, per late node.
    late: Vec<f64>,
    last_warm: f64,
    /// Late at the first plan (before activation), and how many of the
    /// nodes that ended up late some plan before activation had flagged.
    predicted_late: usize,
    late_reported: usize,
    plan_ms: Vec<f64>,
    violations: Vec<String>,
}

struct Sim<'a> {
    k: &'a Knobs,
    policy: Policy,
    nodes: Vec<Node>,
    rng: Rng,
    t: f64,
    out: Outcome,
    flagged: Vec<bool>,
    first_plan: bool,
}

/// The activation instant the simulation's t = 0 stands for.
fn activation() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("valid instant")
}

fn at(t: f64) -> DateTime<Utc> {
    activation() + TimeDelta::milliseconds((t * 1000.0).round() as i64)
}

fn rel(d: DateTime<Utc>) -> f64 {
    (d - activation()).num_milliseconds() as f64 / 1000.0
}

fn scheduling() -> Scheduling {
    Scheduling::default()
}

fn budgets(k: &Knobs) -> Budgets {
    Budgets {
        registries: vec![RegistryBudget {
            host: REGISTRY.into(),
            bytes_per_sec: k.cap() as u64,
            max_nodes: k.max_clients as u32,
        }],
    }
}

fn plan_options(k: &Knobs) -> PlanOptions {
    let s = scheduling();
    PlanOptions {
        default_node_rate: s.default_throughput.as_u64() as f64,
        safety_factor: s.safety_factor,
        min_lead: Duration::from_secs(k.lead_min * 60),
    }
}

impl<'a> Sim<'a> {
    fn new(k: &'a Knobs, policy: Policy, seed: u64) -> Self {
        let mut nodes = nodes(k, seed);
        if policy == Policy::Local {
            let sched = scheduling();
            let lead_time = Duration::from_secs(k.lead_min * 60);
            for n in &mut nodes {
                let est = estimate_pull(k.bytes_per_node(), Some(n.learned), &sched);
                n.phase = Phase::Idle(-lead_time.max(est).as_secs_f64());
            }
        }
        let flagged = vec![false; nodes.len()];
        let t = match policy {
            Policy::Local => nodes
                .iter()
                .map(|n| match n.phase {
                    Phase::Idle(s) => s,
                    _ => 0.0,
                })
                .fold(0.0, f64::min),
            Policy::Planned { horizon_s } => -horizon_s,
        };
        Self {
            k,
            policy,
            nodes,
            rng: Rng(seed ^ 0xA5A5_A5A5),
            t,
            out: Outcome::default(),
            flagged,
            first_plan: true,
        }
    }

    fn run(mut self) -> Outcome {
        let mut next_tick = self.t;
        while self
            .nodes
            .iter()
            .any(|n| !matches!(n.phase, Phase::Done(_)))
        {
            let rates = self.rates();
            let next = self.next_event(&rates, next_tick);
            self.advance(&rates, next);
            if matches!(self.policy, Policy::Planned { .. }) && self.t >= next_tick {
                self.replan();
                next_tick += self.k.tick_s as f64;
            }
            self.attempt_starts();
        }
        self.finish()
    }

    /// Max-min fair share of the registry's egress among pulling nodes,
    /// each wanting min(its own rate, its cap).
    fn rates(&mut self) -> Vec<f64> {
        let want: Vec<f64> = self
            .nodes
            .iter()
            .map(|n| match n.phase {
                Phase::Pulling => n.actual.min(n.cap),
                _ => 0.0,
            })
            .collect();
        let offered: f64 = want.iter().sum();
        self.out.peak_offered = self.out.peak_offered.max(offered);
        let cap = self.k.cap();
        if matches!(self.policy, Policy::Planned { .. }) && offered > cap * (1.0 + 1e-9) {
            self.out.violations.push(format!(
                "t={:.0}s: nodes pull {offered:.0} B/s under a {cap:.0} B/s budget",
                self.t
            ));
        }
        let rates = if offered <= cap {
            want
        } else {
            water_fill(&want, cap)
        };
        let egress: f64 = rates.iter().sum();
        self.out.peak_egress = self.out.peak_egress.max(egress);
        rates
    }

    fn next_event(&self, rates: &[f64], next_tick: f64) -> f64 {
        let mut next = match self.policy {
            Policy::Planned { .. } => next_tick,
            Policy::Local => f64::INFINITY,
        };
        for (n, r) in self.nodes.iter().zip(rates) {
            let t = match n.phase {
                Phase::Idle(s) | Phase::Waiting(s) => s,
                Phase::Pulling if *r > 0.0 => self.t + n.remaining / r,
                _ => f64::INFINITY,
            };
            next = next.min(t);
        }
        next.max(self.t)
    }

    fn advance(&mut self, rates: &[f64], next: f64) {
        let dt = next - self.t;
        for (n, r) in self.nodes.iter_mut().zip(rates) {
            if n.phase == Phase::Pulling {
                n.remaining -= r * dt;
                if n.remaining <= 1.0 {
                    n.remaining = 0.0;
                    n.phase = Phase::Done(next);
                }
            }
        }
        self.t = next;
    }

    /// Nodes due now try to start, in name order; over the registry's
    /// client limit they get a 429 and back off.
    fn attempt_starts(&mut self) {
        let mut pulling = self
            .nodes
            .iter()
            .filter(|n| n.phase == Phase::Pulling)
            .count();
        for i in 0..self.nodes.len() {
            let due = match self.nodes[i].phase {
                Phase::Idle(s) | Phase::Waiting(s) => s <= self.t,
                _ => false,
            };
            if !due {
                continue;
            }
            let t = self.t;
            let n = &mut self.nodes[i];
            n.first_attempt.get_or_insert(t);
            if pulling < self.k.max_clients {
                n.phase = Phase::Pulling;
                pulling += 1;
                continue;
            }
            self.out.too_many += 1;
            n.saw_429 = true;
            let base = (0.5 * 2f64.powi(n.attempts.min(16) as i32)).min(30.0);
            n.attempts += 1;
            let delay = base * (1.0 + self.rng.uniform(0.0, 1.0));
            n.phase = Phase::Waiting(t + delay);
        }
    }

    fn replan(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !matches!(self.nodes[i].phase, Phase::Done(_)))
            .collect();
        let demands: Vec<Demand> = live.iter().map(|&i| self.demand(i)).collect();
        let now = at(self.t);
        let started = Instant::now();
        let plan = plan(&budgets(self.k), &demands, &plan_options(self.k), now);
        self.out.plan_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if let Err(e) = check_budget(self.k, &demands, &plan, now) {
            self.out.violations.push(e);
        }
        let late = plan.iter().filter(|a| a.late).count();
        if self.first_plan {
            self.out.predicted_late = late;
            self.first_plan = false;
        }
        for (&i, a) in live.iter().zip(&plan) {
            if a.late && self.t < 0.0 {
                self.flagged[i] = true;
            }
            let n = &mut self.nodes[i];
            n.cap = if a.bytes_per_sec > 0 {
                a.bytes_per_sec as f64
            } else {
                f64::INFINITY
            };
            if let Phase::Idle(_) = n.phase {
                n.phase = Phase::Idle(rel(a.start).max(self.t));
            }
        }
    }

    fn demand(&self, i: usize) -> Demand {
        let n = &self.nodes[i];
        Demand {
            node: n.name.clone(),
            window: "pool-a".into(),
            registry: REGISTRY.into(),
            missing_bytes: n.remaining.ceil() as u64,
            node_rate: Some(n.learned),
            deadline: activation(),
            started: n.first_attempt.map(at),
        }
    }

    fn finish(mut self) -> Outcome {
        for (i, n) in self.nodes.iter().enumerate() {
            let Phase::Done(t) = n.phase else { continue };
            self.out.last_warm = if i == 0 { t } else { self.out.last_warm.max(t) };
            if t > 0.0 {
                self.out.late.push(t);
                self.out.late_reported += usize::from(self.flagged[i]);
            }
            self.out.nodes_429 += usize::from(n.saw_429);
        }
        self.out.late.sort_by(f64::total_cmp);
        self.out
    }
}

fn water_fill(want: &[f64], cap: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..want.len()).filter(|&i| want[i] > 0.0).collect();
    order.sort_by(|&a, &b| want[a].total_cmp(&want[b]));
    let mut out = vec![0.0; want.len()];
    let mut left = cap;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (order.len() - k) as f64;
        out[i] = want[i].min(share);
        left -= out[i];
    }
    out
}

/// Independent check of one plan: from `now` on, at most `max_nodes`
/// pulls at once and their caps summing to at most the rate budget.
fn check_budget(
    k: &Knobs,
    d: &[Demand],
    plan: &[Assignment],
    now: DateTime<Utc>,
) -> Result<(), String> {
    let live: Vec<&Assignment> = d
        .iter()
        .zip(plan)
        .filter(|(d, a)| d.missing_bytes > 0 && a.finish > now && a.finish > a.start)
        .map(|(_, a)| a)
        .collect();
    if let Some(a) = live.iter().find(|a| a.bytes_per_sec == 0) {
        return Err(format!(
            "plan at {now}: {} uncapped under a rate budget",
            a.node
        ));
    }
    // Sweep: ends before starts at the same instant ([start, finish)).
    let mut events: Vec<(DateTime<Utc>, i128, i64)> = Vec::with_capacity(live.len() * 2);
    for a in &live {
        events.push((a.start.max(now), i128::from(a.bytes_per_sec), 1));
        events.push((a.finish, -i128::from(a.bytes_per_sec), -1));
    }
    events.sort();
    let (mut rate, mut count) = (0i128, 0i64);
    for (t, r, c) in events {
        rate += r;
        count += c;
        if count > k.max_clients as i64 || rate > k.cap() as u64 as i128 {
            return Err(format!("plan at {now}: {count} nodes, {rate} B/s at {t}"));
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn mins(s: f64) -> String {
    let sign = if s < 0.0 { "−" } else { "+" };
    format!("{sign}{:.1} min", s.abs() / 60.0)
}

fn gbit(b: f64) -> String {
    format!("{:.2}", b * 8.0 / 1e9)
}

fn row(label: &str, runs: &[Outcome], cap: f64) -> String {
    let m = |f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(f).collect());
    let late = m(&|o| o.late.len() as f64);
    let p50 = m(&|o| pct(&o.late, 0.5));
    let max = m(&|o| pct(&o.late, 1.0));
    let planned = runs.iter().any(|o| !o.plan_ms.is_empty());
    let reported = if planned {
        format!(
            "{:.0} predicted; {:.0} of {late:.0} late flagged",
            m(&|o| o.predicted_late as f64),
            m(&|o| o.late_reported as f64)
        )
    } else {
        "— (no plan)".into()
    };
    let plan_ms = if planned {
        format!(
            "{:.2} / {:.2} ms",
            m(&|o| median(o.plan_ms.clone())),
            m(&|o| o.plan_ms.iter().copied().fold(0.0, f64::max))
        )
    } else {
        "—".into()
    };
    let late_by = if late > 0.0 {
        format!("{} / {}", mins(p50), mins(max))
    } else {
        "—".into()
    };
    format!(
        "| {label} | {} ({:.0}%) | {} | {:.0} ({:.0} nodes) | {late:.0} | {late_by} | {} | {reported} | {plan_ms} |",
        gbit(m(&|o| o.peak_egress)),
        m(&|o| o.peak_egress) / cap * 100.0,
        gbit(m(&|o| o.peak_offered)),
        m(&|o| o.too_many as f64),
        m(&|o| o.nodes_429 as f64),
        mins(m(&|o| o.last_warm)),
    )
}

/// Planner run time for `n` demands in three shapes (median of 5, ms).
fn planner_timing(k: &Knobs, n: usize) -> Vec<(String, f64)> {
    let mut rng = Rng(7);
    let mk = |rng: &mut Rng, registries: usize, horizon_h: f64| -> Vec<Demand> {
        (0..n)
            .map(|i| Demand {
                node: format!("node-{i:05}"),
                window: format!("w{}", i % 4),
                registry: format!("reg{}", i % registries),
                missing_bytes: k.bytes_per_node(),
                node_rate: Some(rng.uniform(50.0, 150.0) * MB),
                deadline: at(3600.0 * horizon_h * (1.0 + (i % 4) as f64) / 4.0),
                started: None,
            })
            .collect()
    };
    let b = Budgets {
        registries: vec![RegistryBudget {
            host: "*".into(),
            bytes_per_sec: k.cap() as u64,
            max_nodes: k.max_clients as u32,
        }],
    };
    let shapes = [
        (
            "1 registry, 4 deadlines, all on time",
            mk(&mut rng, 1, 48.0),
        ),
        ("3 registries, 4 deadlines", mk(&mut rng, 3, 12.0)),
        ("1 registry, overloaded (most late)", mk(&mut rng, 1, 2.0)),
    ];
    shapes
        .into_iter()
        .map(|(label, d)| {
            let times: Vec<f64> = (0..5)
                .map(|_| {
                    let s = Instant::now();
                    let p = plan(&b, &d, &plan_options(k), at(0.0));
                    let ms = s.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(p.len(), d.len());
                    ms
                })
                .collect();
            let late = plan(&b, &d, &plan_options(k), at(0.0))
                .iter()
                .filter(|a| a.late)
                .count();
            (format!("{n} demands, {label} ({late} late)"), median(times))
        })
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn main() {
    let k = Knobs::from_env();
    let cap = k.cap();
    eprintln!("registry budget simulation: {k:?}");
    let policies = [
        (
            "everyone at activation − lead (local plan)".to_string(),
            Policy::Local,
        ),
        (
            format!(
                "planned, budget = capacity, planning from −{} min",
                k.horizon_min
            ),
            Policy::Planned {
                horizon_s: k.horizon_min as f64 * 60.0,
            },
        ),
        (
            format!(
                "planned, budget = capacity, planning from −{} min (infeasible part)",
                k.short_horizon_min
            ),
            Policy::Planned {
                horizon_s: k.short_horizon_min as f64 * 60.0,
            },
        ),
    ];
    let mut failed = false;
    let mut rows = Vec::new();
    for (label, policy) in &policies {
        let runs: Vec<Outcome> = (1..=k.seeds)
            .map(|seed| {
                eprintln!("  {label}: seed {seed}");
                Sim::new(&k, *policy, seed).run()
            })
            .collect();
        for o in &runs {
            for v in o.violations.iter().take(5) {
                eprintln!("BUDGET VIOLATION ({label}): {v}");
                failed = true;
            }
        }
        rows.push(row(label, &runs, cap));
    }
    println!(
        "{} nodes × {} images × {} MB from one registry: egress cap {} Gbit/s ({:.2} GB/s), {} clients at once (then 429). \
         Node rates 50–150 MB/s (actual ±10% of learned), leadTime {} min, safetyFactor 1.5, re-plan every {} s. \
         Median of {} seeds. {} UTC, {}.\n",
        k.nodes, k.images, k.image_mb, k.cap_gbit, cap / 1e9, k.max_clients, k.lead_min, k.tick_s,
        k.seeds, Utc::now().format("%Y-%m-%d %H:%M"), machine()
    );
    println!("| policy | peak egress Gbit/s (of cap) | peak offered Gbit/s | 429s (nodes hit) | late nodes | late by p50 / max | last node warm vs activation | late reported before activation | planner per plan (median / max) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\n| planner alone | median of 5 |\n|---|---|");
    for (label, ms) in planner_timing(&k, 10_000) {
        println!("| {label} | {ms:.1} ms |");
    }
    if failed {
        eprintln!("a planned schedule exceeded its budget");
        std::process::exit(1);
    }
}
