//! Coordinator metrics on an explicit registry, `prewarm_coordinator_` prefix.

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub connected: IntGauge,
    pub updates: IntCounter,
    pub rejected: IntCounterVec,
    pub warm_fraction: GaugeVec,
    pub report_lag: Gauge,
    pub is_leader: IntGauge,
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
            registry: r,
        };
        for c in [
            Box::new(m.connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.updates.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.warm_fraction.clone()),
            Box::new(m.report_lag.clone()),
            Box::new(m.is_leader.clone()),
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
