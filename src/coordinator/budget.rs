//! The cluster-wide registry budget (`--registry-budget`): on a tick the
//! serving replica (the leader) turns every connected node's windows into
//! demands (bytes still missing per registry, the next activation, the
//! node's learned throughput), plans them against the budgets
//! ([`crate::plan::registry_budget`]), and sends each node its schedules
//! through its intent stream, only when they changed. Nodes that will be
//! late even inside the budget are reported before their window: a gauge
//! and one warning per node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;

use super::link::{LinkState, NodeSchedules};
use crate::plan::registry_budget::{self, Assignment, Budgets, Demand, PlanOptions};
use crate::plan::view::ClusterView;
use crate::plan::windows::registry_of;
use crate::wire::v1::image_state::Phase as ImagePhase;
use crate::wire::v1::PullSchedule;

/// How often the budget is planned again.
pub const TICK: Duration = Duration::from_secs(10);
/// A scheduled start is at least this long before the window opens: a
/// node gets its schedule a tick or two after it was planned.
pub const MIN_LEAD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BudgetOptions {
    pub budgets: Budgets,
    pub plan: PlanOptions,
    pub tick: Duration,
}

/// `--registry-budget HOST=RATE[,nodes=N]`: RATE in bytes per second as in
/// the agent config (`2GiB`, `500MB/s`); `*` is the default for any host.
pub fn parse_budget(s: &str) -> Result<registry_budget::RegistryBudget, String> {
    let (host, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected HOST=RATE[,nodes=N]"))?;
    let host = host.trim();
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(format!(
            "host {host:?}: expected a registry host[:port] or *"
        ));
    }
    let mut parts = rest.split(',');
    let rate = parts.next().unwrap_or_default().trim();
    let bytes_per_sec = crate::config::units::ByteSize::parse_rate(rate)
        .map_err(|e| format!("rate {rate:?}: {e}"))?
        .as_u64();
    let mut max_nodes = 0u32;
    for part in parts {
        let part = part.trim();
        let n = part
            .strip_prefix("nodes=")
            .ok_or_else(|| format!("{part:?}: expected nodes=N"))?;
        max_nodes = n
            .parse()
            .map_err(|_| format!("nodes {n:?}: expected a whole number"))?;
    }
    Ok(registry_budget::RegistryBudget {
        host: host.to_ascii_lowercase(),
        bytes_per_sec,
        max_nodes,
    })
}

/// The budget's metrics, on the coordinator's registry.
pub struct BudgetMetrics {
    pub late_nodes: IntGaugeVec,
    pub planned: prometheus::GaugeVec,
}

impl BudgetMetrics {
    pub fn new(registry: &prometheus::Registry) -> Self {
        let late_nodes = IntGaugeVec::new(
            Opts::new(
                "budget_late_nodes",
                "Nodes that will not be warm by the window's next start even inside the registry budget",
            ),
            &["window", "registry"],
        )
        .expect("valid metric");
        let planned = prometheus::GaugeVec::new(
            Opts::new(
                "budget_planned_bytes_per_second",
                "Highest sum of the planned pull caps on one registry",
            ),
            &["registry"],
        )
        .expect("valid metric");
        // A second budget loop on the same registry reuses nothing: fine to ignore.
        let _ = registry.register(Box::new(late_nodes.clone()));
        let _ = registry.register(Box::new(planned.clone()));
        Self {
            late_nodes,
            planned,
        }
    }
}

/// The demands of every connected node's windows on budgeted registries:
/// one per window and registry with bytes still missing for the next
/// start. A node already pulling from that registry for a warming window
/// is `started` (at the start it was given, else now).
pub fn demands(
    view: &ClusterView,
    budgets: &Budgets,
    sent: &NodeSchedules,
    now: DateTime<Utc>,
) -> Vec<Demand> {
    let mut out = Vec::new();
    for rec in view.nodes().filter(|r| r.connected) {
        for w in rec.windows.values() {
            let Some(deadline) = DateTime::from_timestamp(w.next_activation_unix, 0) else {
                continue;
            };
            if deadline <= now || w.warm {
                continue;
            }
            for (registry, bytes) in &w.missing {
                if *bytes == 0 || !budgets.for_host(registry).is_some_and(|b| b.limits()) {
                    continue;
                }
                let pulling = w.phase == "warming"
                    && rec.images.iter().any(|(name, i)| {
                        i.phase == ImagePhase::Pulling as i32 && registry_of(name) == *registry
                    });
                let given = sent.get(&rec.node).and_then(|s| {
                    s.iter()
                        .find(|s| {
                            s.window == w.name
                                && s.registry == *registry
                                && s.deadline_unix == w.next_activation_unix
                        })
                        .and_then(|s| DateTime::from_timestamp(s.start_unix, 0))
                });
                out.push(Demand {
                    node: rec.node.clone(),
                    window: w.name.clone(),
                    registry: registry.clone(),
                    missing_bytes: *bytes,
                    node_rate: rec.throughput_bytes_per_second,
                    deadline,
                    started: pulling.then(|| given.filter(|g| *g <= now).unwrap_or(now)),
                });
            }
        }
    }
    out
}

/// Each node's schedules from the plan (in window, registry order).
pub fn schedules(demands: &[Demand], plan: &[Assignment]) -> NodeSchedules {
    let mut out = NodeSchedules::new();
    for (d, a) in demands.iter().zip(plan) {
        out.entry(a.node.clone()).or_default().push(PullSchedule {
            window: a.window.clone(),
            registry: a.registry.clone(),
            start_unix: a.start.timestamp(),
            bytes_per_second: a.bytes_per_sec,
            late: a.late,
            deadline_unix: d.deadline.timestamp(),
        });
    }
    for s in out.values_mut() {
        s.sort_by(|a, b| (&a.window, &a.registry).cmp(&(&b.window, &b.registry)));
    }
    out
}

/// One node-window-registry the plan says will be late.
type LateKey = (String, String, String);

/// Plans and publishes; keeps what it needs between ticks.
pub struct Budgeter {
    state: Arc<LinkState>,
    opts: BudgetOptions,
    metrics: BudgetMetrics,
    late: BTreeSet<LateKey>,
    series: BTreeSet<(String, String)>,
    registries: BTreeSet<String>,
}

impl Budgeter {
    pub fn new(state: Arc<LinkState>, opts: BudgetOptions) -> Self {
        let metrics = BudgetMetrics::new(&state.metrics.registry);
        Self {
            state,
            opts,
            metrics,
            late: BTreeSet::new(),
            series: BTreeSet::new(),
            registries: BTreeSet::new(),
        }
    }

    /// One pass at `now`: returns the schedules now published.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Arc<NodeSchedules> {
        let sent = self.state.schedules.borrow().clone();
        let demands = {
            let view = self.state.view();
            demands(&view, &self.opts.budgets, &sent, now)
        };
        let plan = registry_budget::plan(&self.opts.budgets, &demands, &self.opts.plan, now);
        self.report(&demands, &plan);
        let next = schedules(&demands, &plan);
        self.state.schedules.send_if_modified(|cur| {
            let changed = **cur != next;
            if changed {
                *cur = Arc::new(next);
            }
            changed
        });
        self.state.schedules.borrow().clone()
    }

    /// Late nodes (gauge, one warning each when they become late) and the
    /// planned peak per registry.
    fn report(&mut self, demands: &[Demand], plan: &[Assignment]) {
        let mut late = BTreeSet::new();
        let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (d, a) in demands.iter().zip(plan) {
            let series = (a.window.clone(), a.registry.clone());
            let n = counts.entry(series).or_default();
            if !a.late {
                continue;
            }
            *n += 1;
            let key = (a.node.clone(), a.window.clone(), a.registry.clone());
            if !self.late.contains(&key) {
                tracing::warn!(node = %a.node, window = %a.window, registry = %a.registry,
                    deadline = %d.deadline, predicted_warm = %a.finish, missing_bytes = d.missing_bytes,
                    "this node will not be warm by the window's start inside the registry budget");
            }
            late.insert(key);
        }
        self.late = late;
        for gone in self.series.iter().filter(|s| !counts.contains_key(*s)) {
            let _ = self
                .metrics
                .late_nodes
                .remove_label_values(&[&gone.0, &gone.1]);
        }
        for ((w, r), n) in &counts {
            self.metrics.late_nodes.with_label_values(&[w, r]).set(*n);
        }
        self.series = counts.into_keys().collect();
        let registries: BTreeSet<String> = plan.iter().map(|a| a.registry.clone()).collect();
        for gone in self.registries.difference(&registries) {
            let _ = self.metrics.planned.remove_label_values(&[gone]);
        }
        for r in &registries {
            let peak = registry_budget::planned_peak(plan, r);
            self.metrics
                .planned
                .with_label_values(&[r])
                .set(peak as f64);
        }
        self.registries = registries;
    }

    /// Drops every schedule and late report (this replica stopped serving).
    fn clear(&mut self) {
        self.state.schedules.send_if_modified(|cur| {
            let had = !cur.is_empty();
            *cur = Arc::new(NodeSchedules::new());
            had
        });
        self.report(&[], &[]);
    }
}

/// Plans on every tick while this replica serves agents (the leader).
pub async fn run(state: Arc<LinkState>, opts: BudgetOptions, cancel: CancellationToken) {
    let tick = opts.tick;
    let mut serving = state.serving.subscribe();
    let mut b = Budgeter::new(state, opts);
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            Ok(()) = serving.changed() => {}
            _ = cancel.cancelled() => return,
        }
        if *serving.borrow_and_update() {
            b.tick(Utc::now());
        } else {
            b.clear();
        }
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
