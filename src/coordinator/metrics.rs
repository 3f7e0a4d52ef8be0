//! Coordinator metrics on an explicit registry, `prewarm_coordinator_` prefix.

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
        ] {
            m.registry.register(c).expect("metric registered twice");
        }
        m
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
