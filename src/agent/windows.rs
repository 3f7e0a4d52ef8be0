//! Per-window bookkeeping the pure plan does not keep: when each occurrence
//! became warm (the lead achieved) and whether it opened late. Feeds the
//! window metrics and log lines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::metrics::Metrics;
use crate::plan::windows::{Phase, WindowStatus};

const PHASES: [(Phase, &str); 5] = [
    (Phase::Idle, "idle"),
    (Phase::Warming, "warming"),
    (Phase::Active, "active"),
    (Phase::Late, "late"),
    (Phase::Grace, "grace"),
];

#[derive(Debug)]
struct Occurrence {
    start: DateTime<Utc>,
    warm_seen: bool,
    late_counted: bool,
}

#[derive(Default)]
pub struct Tracker {
    windows: BTreeMap<String, Occurrence>,
    /// Window → the source its info series carries.
    sources: BTreeMap<String, String>,
}

impl Tracker {
    pub fn observe(&mut self, statuses: &[WindowStatus], now: DateTime<Utc>, metrics: &Metrics) {
        for st in statuses {
            let name = st.name.as_str();
            self.source(name, &st.source, metrics);
            metrics
                .window_next_activation
                .with_label_values(&[name])
                .set(st.next_activation.timestamp() as f64);
            for (phase, label) in PHASES {
                metrics
                    .window_phase
                    .with_label_values(&[name, label])
                    .set((st.applies && st.phase == phase) as i64);
            }
            metrics
                .window_warm
                .with_label_values(&[name])
                .set((st.applies && st.all_warm) as i64);
            if !st.applies {
                continue;
            }
            let start = match (st.phase, st.occurrence) {
                (Phase::Active | Phase::Late | Phase::Grace, Some((start, _))) => start,
                _ => st.next_activation,
            };
            let occ = self.windows.entry(st.name.clone()).or_insert(Occurrence {
                start,
                warm_seen: false,
                late_counted: false,
            });
            if occ.start != start {
                *occ = Occurrence {
                    start,
                    warm_seen: false,
                    late_counted: false,
                };
            }
            let preparing = matches!(st.phase, Phase::Warming | Phase::Active | Phase::Late);
            if st.phase == Phase::Late && !occ.late_counted {
                occ.late_counted = true;
                metrics.window_late.with_label_values(&[name]).inc();
                tracing::warn!(window = name, activation = %start, missing_bytes = st.missing_bytes.unwrap_or(0),
                    "window opened before its images were warm; pulling at top priority");
            }
            if preparing && st.all_warm && !occ.warm_seen {
                occ.warm_seen = true;
                let lead = (start - now).num_milliseconds() as f64 / 1000.0;
                metrics.window_lead.with_label_values(&[name]).set(lead);
                tracing::info!(window = name, activation = %start, lead_seconds = lead, "window warm");
            }
        }
        // Windows removed from the config stop being reported.
        let live: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .windows
            .keys()
            .filter(|k| !live.contains(&k.as_str()))
            .cloned()
            .collect();
        let unsourced: Vec<String> = self
            .sources
            .keys()
            .filter(|k| !live.contains(&k.as_str()))
            .cloned()
            .collect();
        for name in unsourced {
            if let Some(source) = self.sources.remove(&name) {
                let _ = metrics.window_info.remove_label_values(&[&name, &source]);
            }
        }
        for name in gone {
            self.windows.remove(&name);
            let _ = metrics.window_next_activation.remove_label_values(&[&name]);
            let _ = metrics.window_warm.remove_label_values(&[&name]);
            let _ = metrics.window_lead.remove_label_values(&[&name]);
            for (_, label) in PHASES {
                let _ = metrics.window_phase.remove_label_values(&[&name, label]);
            }
        }
    }

    /// Keeps one info series per window, with its current source.
    fn source(&mut self, name: &str, source: &str, metrics: &Metrics) {
        if self.sources.get(name).map(String::as_str) == Some(source) {
            return;
        }
        if let Some(old) = self.sources.insert(name.to_string(), source.to_string()) {
            let _ = metrics.window_info.remove_label_values(&[name, &old]);
        }
        metrics
            .window_info
            .with_label_values(&[name, source])
            .set(1);
    }
}
