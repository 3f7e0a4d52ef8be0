//! The agent's Prometheus metrics, on an explicit registry. Also the
//! engine's observer, so pulls feed them directly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::node::pull::{PullError, PullObserver, PullOutcome};

pub struct Metrics {
    pub registry: Registry,
    pub pull_duration: Histogram,
    pub pulled_bytes: IntCounter,
    pub pull_failures: IntCounterVec,
    pub images_desired: IntGauge,
    pub images_warm: IntGauge,
    pub images_pinned: IntGauge,
    pub images_held: IntGauge,
    pub pin_changes: IntCounterVec,
    pub pulls_in_flight: IntGauge,
    pub last_success: Gauge,
    pub config_reload_failures: IntCounter,
    pub config_last_reload: Gauge,
    pub pin_supported: IntGauge,
    pub runtime_up: IntGauge,
    pub throughput: Gauge,
    pub window_next_activation: GaugeVec,
    pub window_warm: IntGaugeVec,
    pub window_lead: GaugeVec,
    pub window_late: IntCounterVec,
    pub window_phase: IntGaugeVec,
    pub coordinator_configured: IntGauge,
    pub coordinator_linked: IntGauge,
    pub coordinator_link_failures: IntCounterVec,
    pub coordinator_last_attach: Gauge,
    pub credentials_reloads: IntCounter,
    pub credentials_reload_failures: IntCounter,
    pub intent_images_refused: IntGauge,
    pub pull_retries_waiting: IntGauge,
    pub window_planned_lead: GaugeVec,
    pub learned_state_restored: IntGauge,
    pub images: ImageMetrics,
    /// 1 per planned window, labelled with where it comes from.
    pub window_info: IntGaugeVec,
    /// Coordinator windows not planned (conflict with the ConfigMap, invalid).
    pub coordinator_windows_dropped: IntGauge,
}

/// Per-image series, only for the images of the node's desired set: the
/// label is bounded by the config and the intents' limits, never by what
/// else the node holds.
pub struct ImageMetrics {
    pub warm: IntGaugeVec,
    pub pinned: IntGaugeVec,
    pub bytes: IntGaugeVec,
    pub last_pull_duration: GaugeVec,
    /// Images that have series now.
    shown: Mutex<BTreeSet<String>>,
}

/// What is known of one desired image.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImageRow {
    pub warm: bool,
    pub pinned: bool,
    /// Size in the CRI image store; 0 until warm.
    pub bytes: u64,
    /// The last successful pull of it by this agent, seconds.
    pub last_pull_seconds: Option<f64>,
}

impl ImageMetrics {
    fn new(r: &Registry) -> Self {
        let ints = |name: &str, help: &str| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["image"]).expect("valid metric"),
            )
        };
        Self {
            warm: ints(
                "image_warm",
                "1 if the desired image is present and unpacked in the CRI image store",
            ),
            pinned: ints(
                "image_pinned",
                "1 if the desired image is pinned against kubelet image GC",
            ),
            bytes: ints(
                "image_bytes",
                "Size of the desired image as the CRI image store reports it; 0 until warm",
            ),
            last_pull_duration: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "image_last_pull_duration_seconds",
                        "Duration of this agent's last successful pull of the desired image",
                    ),
                    &["image"],
                )
                .expect("valid metric"),
            ),
            shown: Mutex::default(),
        }
    }

    /// Sets the series of `rows` (the desired set, by CRI name) and deletes
    /// those of images no longer in it.
    pub fn set(&self, rows: &BTreeMap<String, ImageRow>) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for gone in shown.iter().filter(|n| !rows.contains_key(*n)) {
            let l = [gone.as_str()];
            let _ = self.warm.remove_label_values(&l);
            let _ = self.pinned.remove_label_values(&l);
            let _ = self.bytes.remove_label_values(&l);
            let _ = self.last_pull_duration.remove_label_values(&l);
        }
        for (name, row) in rows {
            let l = [name.as_str()];
            self.warm.with_label_values(&l).set(row.warm as i64);
            self.pinned.with_label_values(&l).set(row.pinned as i64);
            self.bytes
                .with_label_values(&l)
                .set(i64::try_from(row.bytes).unwrap_or(i64::MAX));
            match row.last_pull_seconds {
                Some(secs) => self.last_pull_duration.with_label_values(&l).set(secs),
                None => {
                    let _ = self.last_pull_duration.remove_label_values(&l);
                }
            }
        }
        *shown = rows.keys().cloned().collect();
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are static and unique, so registration cannot fail.
    r.register(Box::new(m.clone()))
        .expect("metric registered twice");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("prewarm".into()), None).expect("valid prefix");
        let g = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid metric"));
        Self {
            pull_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pull_duration_seconds",
                        "Time to warm one image, fetch and unpack",
                    )
                    .buckets(vec![
                        0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            pulled_bytes: reg(
                &r,
                IntCounter::new("pulled_bytes_total", "Bytes fetched from registries")
                    .expect("valid metric"),
            ),
            pull_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("pull_failures_total", "Failed pulls by reason"),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            images_desired: g("images_desired", "Images this node should hold warm"),
            images_warm: g(
                "images_warm",
                "Desired images present in the CRI image store",
            ),
            images_pinned: g(
                "images_pinned",
                "Desired images pinned against kubelet image GC",
            ),
            images_held: g(
                "images_held",
                "Images kept pinned only by an intent's hold or a container using them",
            ),
            pin_changes: {
                let c = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "pin_changes_total",
                            "Pin label writes by the agent: pin, unpin, hold (renewed)",
                        ),
                        &["change"],
                    )
                    .expect("valid metric"),
                );
                for change in ["pin", "unpin", "hold"] {
                    c.with_label_values(&[change]);
                }
                c
            },
            pulls_in_flight: g("pulls_in_flight", "Pulls running now"),
            last_success: reg(
                &r,
                Gauge::new(
                    "last_success_timestamp_seconds",
                    "Unix time of the last successful pull",
                )
                .expect("valid metric"),
            ),
            config_reload_failures: reg(
                &r,
                IntCounter::new(
                    "config_reload_failures_total",
                    "Config files rejected on reload",
                )
                .expect("valid metric"),
            ),
            config_last_reload: reg(
                &r,
                Gauge::new(
                    "config_last_reload_success_timestamp_seconds",
                    "Unix time the config was last loaded",
                )
                .expect("valid metric"),
            ),
            pin_supported: g(
                "runtime_pinning_supported",
                "1 if the runtime honours the CRI pinned label",
            ),
            runtime_up: g("runtime_up", "1 if containerd answered the last reconcile"),
            throughput: reg(
                &r,
                Gauge::new(
                    "node_throughput_bytes_per_second",
                    "This node's measured pull throughput (fetch and unpack)",
                )
                .expect("valid metric"),
            ),
            window_next_activation: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "window_next_activation_timestamp_seconds",
                        "Unix time of the window's next activation",
                    ),
                    &["window"],
                )
                .expect("valid metric"),
            ),
            window_warm: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "window_warm",
                        "1 if every image of the window is warm on this node",
                    ),
                    &["window"],
                )
                .expect("valid metric"),
            ),
            window_lead: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "window_lead_seconds",
                        "Seconds before activation the window became warm; negative if late",
                    ),
                    &["window"],
                )
                .expect("valid metric"),
            ),
            window_late: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "window_late_total",
                        "Activations that found the window not yet warm",
                    ),
                    &["window"],
                )
                .expect("valid metric"),
            ),
            window_phase: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "window_phase",
                        "1 for the window's current phase (idle, warming, active, late, grace)",
                    ),
                    &["window", "phase"],
                )
                .expect("valid metric"),
            ),
            coordinator_configured: g(
                "coordinator_configured",
                "1 if the config has a coordinator section",
            ),
            coordinator_linked: g(
                "coordinator_linked",
                "1 while a stream to the coordinator is attached",
            ),
            coordinator_link_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "coordinator_link_failures_total",
                        "Failed attempts and ended sessions of the coordinator link, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            coordinator_last_attach: reg(
                &r,
                Gauge::new(
                    "coordinator_last_attach_timestamp_seconds",
                    "Unix time the coordinator last accepted this agent's stream",
                )
                .expect("valid metric"),
            ),
            credentials_reloads: reg(
                &r,
                IntCounter::new(
                    "credentials_reloads_total",
                    "Registry credential files re-read after they changed",
                )
                .expect("valid metric"),
            ),
            credentials_reload_failures: reg(
                &r,
                IntCounter::new(
                    "credentials_reload_failures_total",
                    "Changed credential files rejected (the previous credentials stay)",
                )
                .expect("valid metric"),
            ),
            intent_images_refused: g(
                "intent_images_refused",
                "Images coordinator intents ask for that the intents limits or the disk floor refuse",
            ),
            pull_retries_waiting: g(
                "pull_retries_waiting",
                "Images whose last pull failed, waiting out their backoff",
            ),
            window_planned_lead: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "window_planned_lead_seconds",
                        "Seconds before activation warming was planned to start (max of leadTime and the estimated pull time)",
                    ),
                    &["window"],
                )
                .expect("valid metric"),
            ),
            learned_state_restored: g(
                "learned_state_restored",
                "1 if this agent started from the learned state persisted on the node, 0 if from the defaults",
            ),
            images: ImageMetrics::new(&r),
            window_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "window_info",
                        "1 for each window this agent plans; source is config or keda:<namespace>/<scaledobject>#<trigger>",
                    ),
                    &["window", "source"],
                )
                .expect("valid metric"),
            ),
            coordinator_windows_dropped: g(
                "coordinator_windows_dropped",
                "Windows received from the coordinator that this agent does not plan (a ConfigMap window wins, or invalid)",
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl crate::agent::link::LinkObserver for Metrics {
    fn attached(&self) {
        self.coordinator_linked.set(1);
        self.coordinator_last_attach.set(unix_now());
    }
    fn failed(&self, reason: crate::agent::link::FailureReason) {
        self.coordinator_linked.set(0);
        self.coordinator_link_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

impl PullObserver for Metrics {
    fn resolved(&self, image: &str, total: u64, missing: u64) {
        tracing::info!(
            image,
            total_bytes = total,
            missing_bytes = missing,
            "pull resolved"
        );
    }
    fn bytes(&self, _image: &str, n: u64) {
        self.pulled_bytes.inc_by(n);
    }
    fn finished(&self, image: &str, result: &Result<PullOutcome, PullError>) {
        match result {
            Ok(o) => {
                if !o.already_present {
                    self.pull_duration.observe(o.duration.as_secs_f64());
                }
                self.last_success.set(unix_now());
                tracing::info!(
                    image,
                    fetched_bytes = o.fetched_bytes,
                    seconds = o.duration.as_secs_f64(),
                    already_present = o.already_present,
                    pinned = o.pinned,
                    "image warm"
                );
            }
            Err(e) => {
                self.pull_failures.with_label_values(&[e.reason()]).inc();
                tracing::warn!(image, reason = e.reason(), error = %e, "pull failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_prefixed_metrics() {
        let m = Metrics::new();
        m.pull_failures.with_label_values(&["unauthorized"]).inc();
        m.pulled_bytes.inc_by(42);
        let text = m.render();
        assert!(
            text.contains("prewarm_pull_failures_total{reason=\"unauthorized\"} 1"),
            "{text}"
        );
        assert!(text.contains("prewarm_pulled_bytes_total 42"));
        assert!(text.contains("# TYPE prewarm_pull_duration_seconds histogram"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("prewarm_"), "{line}");
        }
    }

    fn series(m: &Metrics, image: &str) -> Vec<String> {
        let label = format!("{{image=\"{image}\"}}");
        m.render()
            .lines()
            .filter(|l| l.starts_with("prewarm_image_") && l.contains(&label))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn image_series_follow_the_desired_set() {
        let m = Metrics::new();
        let warm = ImageRow {
            warm: true,
            pinned: true,
            bytes: 42,
            last_pull_seconds: Some(1.5),
        };
        let rows: BTreeMap<String, ImageRow> = [
            ("r/a:1".to_string(), warm),
            ("r/b:1".to_string(), ImageRow::default()),
        ]
        .into();
        m.images.set(&rows);
        let a = series(&m, "r/a:1");
        for want in [
            "prewarm_image_warm{image=\"r/a:1\"} 1",
            "prewarm_image_pinned{image=\"r/a:1\"} 1",
            "prewarm_image_bytes{image=\"r/a:1\"} 42",
            "prewarm_image_last_pull_duration_seconds{image=\"r/a:1\"} 1.5",
        ] {
            assert!(a.iter().any(|l| l == want), "{want} not in {a:?}");
        }
        // Not pulled by this agent: no duration series, zeros elsewhere.
        assert_eq!(series(&m, "r/b:1").len(), 3, "{:?}", series(&m, "r/b:1"));
        let rows: BTreeMap<String, ImageRow> = [("r/b:1".to_string(), warm)].into();
        m.images.set(&rows);
        assert!(series(&m, "r/a:1").is_empty(), "a left the set");
        assert_eq!(series(&m, "r/b:1").len(), 4);
        m.images.set(&BTreeMap::new());
        assert!(!m.render().contains("prewarm_image_"), "{}", m.render());
    }
}
