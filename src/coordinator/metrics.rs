//! Coordinator metrics on an explicit registry, `prewarm_coordinator_` prefix.

use std::collections::BTreeSet;
use std::sync::Mutex;

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
        ] {
            m.registry.register(c).expect("metric registered twice");
        }
        m
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
}
