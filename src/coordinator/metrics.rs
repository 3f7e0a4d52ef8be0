//! Coordinator metrics on an explicit registry, `prewarm_coordinator_` prefix.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::plan::window_pools::{WindowPoolRow, PHASES};
use crate::wire::deploygroup::{DeployGroupStatus, GroupPhase, Outcome, Stage};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub connected: IntGauge,
    pub updates: IntCounter,
    pub rejected: IntCounterVec,
    pub warm_fraction: GaugeVec,
    pub report_lag: Gauge,
    pub is_leader: IntGauge,
    /// Gated pods held now.
    pub gate_held: IntGauge,
    /// Releases by outcome: `warm`, `unwarmed` (fail-open or bad images).
    pub gate_released: IntCounterVec,
    /// From the coordinator first seeing a gated pod to its release.
    pub gate_release_seconds: Histogram,
    /// Gate timeouts by policy (`fail-open`, `fail-closed`).
    pub gate_timeouts: IntCounterVec,
    /// Finished deploy steps by group and result (`succeeded`, `failed`,
    /// `rolled_back`).
    pub deploy_steps: IntCounterVec,
    /// 1 for the group's current phase (`Idle`, `Stepping`, `Halted`,
    /// `Invalid`), 0 for the others.
    pub deploy_phase: IntGaugeVec,
    /// Node records forgotten, by reason (`deleted`, `silent`).
    pub forgotten_nodes: IntCounterVec,
    /// The (image, pool) series of `warm_fraction` exported last, so the
    /// ones whose row is gone are deleted instead of kept forever.
    warm_series: Mutex<BTreeSet<(String, String)>>,
    /// Node records kept while their agent is not connected (until they
    /// are forgotten).
    pub disconnected: IntGauge,
    /// Per (window, pool): share of the connected nodes the window applies
    /// to that hold it warm.
    pub window_warm_fraction: GaugeVec,
    /// Per (window, pool, phase): connected nodes in that phase.
    pub window_nodes: IntGaugeVec,
    /// Per (window, pool): earliest next activation reported.
    pub window_next_activation: GaugeVec,
    /// The (window, pool) rows exported last (see `warm_series`).
    window_series: Mutex<BTreeSet<(String, String)>>,
    /// 1 for the stage of a deploy group's running step, 0 for the others
    /// (all 0 with no step running).
    pub deploy_stage: IntGaugeVec,
    /// 1 for the result of a deploy group's latest finished step.
    pub deploy_last_result: IntGaugeVec,
}

/// Label values of `rejected_reports_total` (src/coordinator/link.rs).
const REJECT_REASONS: [&str; 8] = [
    "auth",
    "auth_unavailable",
    "rate_limited",
    "foreign_node",
    "invalid",
    "protocol",
    "out_of_order",
    "not_leader",
];

/// Label values of `deploy_group_stage`.
const STAGES: [(Stage, &str); 5] = [
    (Stage::Warming, "warming"),
    (Stage::Rolling, "rolling"),
    (Stage::Validating, "validating"),
    (Stage::Quiescing, "quiescing"),
    (Stage::RollingBack, "rolling_back"),
];
const GROUP_PHASES: [GroupPhase; 4] = [
    GroupPhase::Idle,
    GroupPhase::Stepping,
    GroupPhase::Halted,
    GroupPhase::Invalid,
];
/// Label values of `deploy_steps_total` and `deploy_group_last_result`.
const RESULTS: [(Outcome, &str); 3] = [
    (Outcome::Succeeded, "succeeded"),
    (Outcome::Failed, "failed"),
    (Outcome::RolledBack, "rolled_back"),
];

fn result_label(o: Outcome) -> &'static str {
    RESULTS
        .iter()
        .find(|(r, _)| *r == o)
        .map_or("unknown", |(_, l)| l)
}

impl CoordinatorMetrics {
    pub fn new() -> Self {
        let r =
            Registry::new_custom(Some("prewarm_coordinator".into()), None).expect("valid prefix");
        let m = Self {
            connected: IntGauge::new("connected_agents", "Agents holding a stream now")
                .expect("valid metric"),
            updates: IntCounter::new("updates_total", "Image updates ingested from agents")
                .expect("valid metric"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "rejected_reports_total",
                    "Refused streams and reports by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            warm_fraction: GaugeVec::new(
                Opts::new(
                    "warm_fraction",
                    "Share of a pool's eligible nodes where the image is warm",
                ),
                &["image", "pool"],
            )
            .expect("valid metric"),
            report_lag: Gauge::new(
                "report_lag_seconds",
                "Longest time since a connected agent last reported",
            )
            .expect("valid metric"),
            is_leader: IntGauge::new("leader", "1 on the replica holding the Lease")
                .expect("valid metric"),
            gate_held: IntGauge::new("gate_held_pods", "Pods held by the warm gate now")
                .expect("valid metric"),
            gate_released: IntCounterVec::new(
                Opts::new(
                    "gate_released_pods_total",
                    "Gated pods released, by outcome: warm, unwarmed (timeout or bad image), \
                     cold_faster (a cold start was predicted sooner than waiting)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            gate_release_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "gate_release_seconds",
                    "Time from a gated pod being seen to its release",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0,
                ]),
            )
            .expect("valid metric"),
            gate_timeouts: IntCounterVec::new(
                Opts::new(
                    "gate_timeouts_total",
                    "Gated pods that timed out, by policy",
                ),
                &["policy"],
            )
            .expect("valid metric"),
            deploy_steps: IntCounterVec::new(
                Opts::new(
                    "deploy_steps_total",
                    "Finished deploy steps, by group and result",
                ),
                &["namespace", "group", "result"],
            )
            .expect("valid metric"),
            deploy_phase: IntGaugeVec::new(
                Opts::new("deploy_group_phase", "1 for a deploy group's current phase"),
                &["namespace", "group", "phase"],
            )
            .expect("valid metric"),
            forgotten_nodes: IntCounterVec::new(
                Opts::new(
                    "forgotten_nodes_total",
                    "Node records dropped: deleted from the API server, or disconnected and silent past the TTL",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            warm_series: Mutex::default(),
            disconnected: IntGauge::new(
                "disconnected_agents",
                "Nodes whose agent is not connected, kept until forgotten",
            )
            .expect("valid metric"),
            window_warm_fraction: GaugeVec::new(
                Opts::new(
                    "window_warm_fraction",
                    "Share of a pool's connected nodes a window applies to that hold it warm",
                ),
                &["window", "pool"],
            )
            .expect("valid metric"),
            window_nodes: IntGaugeVec::new(
                Opts::new(
                    "window_nodes",
                    "Connected nodes a window applies to, by pool and window phase",
                ),
                &["window", "pool", "phase"],
            )
            .expect("valid metric"),
            window_next_activation: GaugeVec::new(
                Opts::new(
                    "window_next_activation_timestamp_seconds",
                    "Earliest next activation of a window its pool's nodes report",
                ),
                &["window", "pool"],
            )
            .expect("valid metric"),
            window_series: Mutex::default(),
            deploy_stage: IntGaugeVec::new(
                Opts::new(
                    "deploy_group_stage",
                    "1 for the stage of a deploy group's running step",
                ),
                &["namespace", "group", "stage"],
            )
            .expect("valid metric"),
            deploy_last_result: IntGaugeVec::new(
                Opts::new(
                    "deploy_group_last_result",
                    "1 for the result of a deploy group's latest finished step",
                ),
                &["namespace", "group", "result"],
            )
            .expect("valid metric"),
            registry: r,
        };
        for c in [
            Box::new(m.connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.updates.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.warm_fraction.clone()),
            Box::new(m.report_lag.clone()),
            Box::new(m.is_leader.clone()),
            Box::new(m.gate_held.clone()),
            Box::new(m.gate_released.clone()),
            Box::new(m.gate_release_seconds.clone()),
            Box::new(m.gate_timeouts.clone()),
            Box::new(m.deploy_steps.clone()),
            Box::new(m.deploy_phase.clone()),
            Box::new(m.forgotten_nodes.clone()),
            Box::new(m.disconnected.clone()),
            Box::new(m.window_warm_fraction.clone()),
            Box::new(m.window_nodes.clone()),
            Box::new(m.window_next_activation.clone()),
            Box::new(m.deploy_stage.clone()),
            Box::new(m.deploy_last_result.clone()),
        ] {
            m.registry.register(c).expect("metric registered twice");
        }
        // Every outcome and policy exists from the start, so the first
        // release or timeout is an increase Prometheus can see.
        for outcome in ["warm", "unwarmed", "cold_faster"] {
            m.gate_released.with_label_values(&[outcome]);
        }
        for policy in ["fail-open", "fail-closed"] {
            m.gate_timeouts.with_label_values(&[policy]);
        }
        for reason in REJECT_REASONS {
            m.rejected.with_label_values(&[reason]);
        }
        m
    }

    /// Sets the window metrics to exactly these rows: series of (window,
    /// pool) rows that are gone are deleted.
    pub fn set_window_pools(&self, rows: &[WindowPoolRow]) {
        let mut exported = self.window_series.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = BTreeSet::new();
        for r in rows {
            let (w, p) = (r.window.as_str(), r.pool.as_str());
            self.window_warm_fraction
                .with_label_values(&[w, p])
                .set(r.warm_fraction());
            self.window_next_activation
                .with_label_values(&[w, p])
                .set(r.next_activation_unix as f64);
            for (phase, n) in PHASES.iter().zip(r.phases) {
                self.window_nodes
                    .with_label_values(&[w, p, phase])
                    .set(n as i64);
            }
            now.insert((r.window.clone(), r.pool.clone()));
        }
        for (w, p) in exported.difference(&now) {
            let _ = self.window_warm_fraction.remove_label_values(&[w, p]);
            let _ = self.window_next_activation.remove_label_values(&[w, p]);
            for phase in PHASES {
                let _ = self.window_nodes.remove_label_values(&[w, p, phase]);
            }
        }
        *exported = now;
    }

    /// A deploy group's phase, the stage of its running step and the
    /// result of its latest finished step, from its status; and
    /// `deploy_steps_total` for the results `new` adds to `old`.
    pub fn set_deploy_group(
        &self,
        namespace: &str,
        group: &str,
        old: &DeployGroupStatus,
        new: &DeployGroupStatus,
    ) {
        for r in new.results.iter().filter(|r| !old.results.contains(r)) {
            self.deploy_steps
                .with_label_values(&[namespace, group, result_label(r.result)])
                .inc();
        }
        for phase in GROUP_PHASES {
            self.deploy_phase
                .with_label_values(&[namespace, group, &format!("{phase:?}")])
                .set((new.phase == phase) as i64);
        }
        let stage = new.step.as_ref().map(|s| s.stage);
        for (s, label) in STAGES {
            self.deploy_stage
                .with_label_values(&[namespace, group, label])
                .set((stage == Some(s)) as i64);
        }
        // Results are one per member: the latest is the last finished.
        if let Some(last) = new.results.iter().max_by_key(|r| r.finished) {
            for (o, label) in RESULTS {
                self.deploy_last_result
                    .with_label_values(&[namespace, group, label])
                    .set((last.result == o) as i64);
            }
        }
    }

    /// Sets `warm_fraction` to exactly these (image, pool, fraction) rows:
    /// series of rows that are gone are deleted.
    pub fn set_warm_fractions(&self, rows: impl IntoIterator<Item = (String, String, f64)>) {
        let mut exported = self.warm_series.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = BTreeSet::new();
        for (image, pool, frac) in rows {
            self.warm_fraction
                .with_label_values(&[&image, &pool])
                .set(frac);
            now.insert((image, pool));
        }
        for (image, pool) in exported.difference(&now) {
            let _ = self.warm_fraction.remove_label_values(&[image, pool]);
        }
        *exported = now;
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(m: &CoordinatorMetrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("prewarm_coordinator_warm_fraction{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn warm_fraction_series_of_gone_rows_are_deleted() {
        let m = CoordinatorMetrics::new();
        let row = |i: &str, p: &str, f| (i.to_string(), p.to_string(), f);
        m.set_warm_fractions([row("r/a:1", "p1", 1.0), row("r/a:1", "p2", 0.5)]);
        assert_eq!(series(&m).len(), 2);
        m.set_warm_fractions([row("r/a:1", "p2", 1.0), row("r/b:1", "p3", 0.0)]);
        assert_eq!(
            series(&m),
            [
                r#"prewarm_coordinator_warm_fraction{image="r/a:1",pool="p2"} 1"#,
                r#"prewarm_coordinator_warm_fraction{image="r/b:1",pool="p3"} 0"#,
            ]
        );
        m.set_warm_fractions([]);
        assert!(series(&m).is_empty());
    }

    fn lines(m: &CoordinatorMetrics, prefix: &str) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    fn row(window: &str, pool: &str, phases: [usize; 6], warm: usize) -> WindowPoolRow {
        WindowPoolRow {
            window: window.into(),
            pool: pool.into(),
            phases,
            warm_nodes: warm,
            next_activation_unix: 1_800_000_000,
        }
    }

    #[test]
    fn window_series_of_gone_rows_are_deleted() {
        let m = CoordinatorMetrics::new();
        m.set_window_pools(&[
            row("erp", "int", [0, 1, 0, 1, 0, 0], 1),
            row("erp", "sys", [1, 0, 0, 0, 0, 0], 0),
        ]);
        assert!(
            lines(&m, "prewarm_coordinator_window_warm_fraction{").contains(
                &r#"prewarm_coordinator_window_warm_fraction{pool="int",window="erp"} 0.5"#
                    .to_string()
            )
        );
        assert!(lines(&m, "prewarm_coordinator_window_nodes{").contains(
            &r#"prewarm_coordinator_window_nodes{phase="late",pool="int",window="erp"} 1"#
                .to_string()
        ));
        assert_eq!(lines(&m, "prewarm_coordinator_window_nodes{").len(), 12);
        m.set_window_pools(&[row("erp", "sys", [0, 0, 1, 0, 0, 0], 1)]);
        assert_eq!(
            lines(&m, "prewarm_coordinator_window_warm_fraction{"),
            [r#"prewarm_coordinator_window_warm_fraction{pool="sys",window="erp"} 1"#]
        );
        assert_eq!(
            lines(
                &m,
                "prewarm_coordinator_window_next_activation_timestamp_seconds{"
            ),
            [
                r#"prewarm_coordinator_window_next_activation_timestamp_seconds{pool="sys",window="erp"} 1800000000"#
            ]
        );
        assert_eq!(lines(&m, "prewarm_coordinator_window_nodes{").len(), 6);
        m.set_window_pools(&[]);
        assert!(lines(&m, "prewarm_coordinator_window_").is_empty());
    }

    #[test]
    fn gate_outcomes_policies_and_reject_reasons_exist_before_the_first_count() {
        let text = CoordinatorMetrics::new().render();
        for s in [
            r#"prewarm_coordinator_gate_released_pods_total{outcome="warm"} 0"#,
            r#"prewarm_coordinator_gate_released_pods_total{outcome="unwarmed"} 0"#,
            r#"prewarm_coordinator_gate_released_pods_total{outcome="cold_faster"} 0"#,
            r#"prewarm_coordinator_gate_timeouts_total{policy="fail-open"} 0"#,
            r#"prewarm_coordinator_gate_timeouts_total{policy="fail-closed"} 0"#,
            r#"prewarm_coordinator_rejected_reports_total{reason="auth"} 0"#,
            r#"prewarm_coordinator_rejected_reports_total{reason="not_leader"} 0"#,
        ] {
            assert!(text.contains(s), "{s} missing from\n{text}");
        }
    }

    fn result(
        member: &str,
        result: Outcome,
        finished: i64,
    ) -> crate::wire::deploygroup::MemberResult {
        let at = chrono::DateTime::from_timestamp(finished, 0).unwrap();
        crate::wire::deploygroup::MemberResult {
            member: member.into(),
            template_hash: "h".into(),
            result,
            reason: String::new(),
            started: at,
            finished: at,
            timings: Default::default(),
        }
    }

    #[test]
    fn deploy_group_stage_and_last_result_follow_the_status() {
        let m = CoordinatorMetrics::new();
        let one = |prefix: &str| {
            lines(&m, prefix)
                .into_iter()
                .filter(|l| l.ends_with(" 1"))
                .collect::<Vec<_>>()
        };
        let idle = DeployGroupStatus::default();
        let stepping = DeployGroupStatus {
            phase: GroupPhase::Stepping,
            step: Some(crate::wire::deploygroup::StepStatus {
                stage: Stage::Validating,
                ..Default::default()
            }),
            results: vec![result("a", Outcome::Succeeded, 100)],
            ..Default::default()
        };
        m.set_deploy_group("ns", "g", &idle, &stepping);
        assert_eq!(
            one("prewarm_coordinator_deploy_group_stage{"),
            [
                r#"prewarm_coordinator_deploy_group_stage{group="g",namespace="ns",stage="validating"} 1"#
            ]
        );
        assert_eq!(
            one("prewarm_coordinator_deploy_group_last_result{"),
            [
                r#"prewarm_coordinator_deploy_group_last_result{group="g",namespace="ns",result="succeeded"} 1"#
            ]
        );
        // Member b fails after a's success: the latest result is b's.
        let halted = DeployGroupStatus {
            phase: GroupPhase::Halted,
            step: None,
            results: vec![
                result("a", Outcome::Succeeded, 100),
                result("b", Outcome::RolledBack, 200),
            ],
            ..Default::default()
        };
        m.set_deploy_group("ns", "g", &stepping, &halted);
        assert!(one("prewarm_coordinator_deploy_group_stage{").is_empty());
        assert_eq!(
            lines(&m, "prewarm_coordinator_deploy_group_stage{").len(),
            5
        );
        assert_eq!(
            one("prewarm_coordinator_deploy_group_last_result{"),
            [
                r#"prewarm_coordinator_deploy_group_last_result{group="g",namespace="ns",result="rolled_back"} 1"#
            ]
        );
        assert_eq!(
            one("prewarm_coordinator_deploy_group_phase{"),
            [
                r#"prewarm_coordinator_deploy_group_phase{group="g",namespace="ns",phase="Halted"} 1"#
            ]
        );
        // Each result counted once, when it first appears.
        assert_eq!(
            lines(&m, "prewarm_coordinator_deploy_steps_total{"),
            [
                r#"prewarm_coordinator_deploy_steps_total{group="g",namespace="ns",result="rolled_back"} 1"#,
                r#"prewarm_coordinator_deploy_steps_total{group="g",namespace="ns",result="succeeded"} 1"#,
            ]
        );
    }
}
