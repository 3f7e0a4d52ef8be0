//! Per-window bookkeeping the pure plan does not keep: when each occurrence
//! became warm (the lead achieved) and whether it opened late. Feeds the
//! window metrics and log lines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::metrics::Metrics;
use crate::plan::learned::WindowRecord;
use crate::plan::windows::{Phase, WindowStatus};

const PHASES: [(Phase, &str); 5] = [
    (Phase::Idle, "idle"),
    (Phase::Warming, "warming"),
    (Phase::Active, "active"),
    (Phase::Late, "late"),
    (Phase::Grace, "grace"),
];

#[derive(Debug, Clone, Copy)]
struct Occurrence {
    start: DateTime<Utc>,
    warm_seen: bool,
    late_counted: bool,
    /// The planned lead, frozen once warming for this occurrence began.
    planned_lead: Option<f64>,
    /// The lead achieved, once warm.
    lead: Option<f64>,
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

#[derive(Default)]
pub struct Tracker {
    windows: BTreeMap<String, Occurrence>,
    /// Window → the source its info series carries.
    sources: BTreeMap<String, String>,
}

impl Tracker {
    /// The occurrences tracked, to persist (at most `max`).
    pub fn records(&self, max: usize) -> BTreeMap<String, WindowRecord> {
        self.windows
            .iter()
            .take(max)
            .map(|(name, o)| {
                let r = WindowRecord {
                    occurrence_start_unix: o.start.timestamp(),
                    warm_seen: o.warm_seen,
                    late_counted: o.late_counted,
                    lead_seconds: o.lead,
                };
                (name.clone(), r)
            })
            .collect()
    }

    /// Continues from persisted occurrences: one already seen warm is not
    /// measured again (its lead is kept), one counted late not counted
    /// again; a window whose occurrence moved on starts afresh as usual.
    pub fn restore(&mut self, records: &BTreeMap<String, WindowRecord>) {
        for (name, r) in records {
            let Some(start) = DateTime::from_timestamp(r.occurrence_start_unix, 0) else {
                continue;
            };
            let occ = Occurrence {
                start,
                warm_seen: r.warm_seen,
                late_counted: r.late_counted,
                planned_lead: None,
                lead: r.lead_seconds.filter(|_| r.warm_seen),
            };
            self.windows.insert(name.clone(), occ);
        }
    }

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
            // Exported at 0 from the start, so the first late activation
            // is an increase Prometheus sees.
            metrics.window_late.with_label_values(&[name]);
            let fresh = Occurrence {
                start,
                warm_seen: false,
                late_counted: false,
                planned_lead: None,
                lead: None,
            };
            let occ = self.windows.entry(st.name.clone()).or_insert(fresh);
            if occ.start != start {
                *occ = fresh;
            }
            // A lead measured before a restart is shown again.
            if let Some(lead) = occ.lead {
                metrics.window_lead.with_label_values(&[name]).set(lead);
            }
            let plan_now = secs(st.next_activation - st.warm_start);
            let planned = match (st.phase, occ.planned_lead) {
                (_, Some(p)) => Some(p),
                // The plan that started this occurrence's warming, kept.
                (Phase::Warming, None) => {
                    occ.planned_lead = Some(plan_now);
                    Some(plan_now)
                }
                (Phase::Idle | Phase::Grace, None) => Some(plan_now),
                // Opened before this process saw it warming: unknown.
                (Phase::Active | Phase::Late, None) => None,
            };
            if let Some(p) = planned {
                metrics
                    .window_planned_lead
                    .with_label_values(&[name])
                    .set(p);
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
                occ.lead = Some(lead);
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
            let _ = metrics.window_planned_lead.remove_label_values(&[&name]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// A window opening at t(1000) whose warming starts at `warm_start`.
    fn status(phase: Phase, warm_start: i64, all_warm: bool) -> WindowStatus {
        WindowStatus {
            name: "erp".into(),
            applies: true,
            phase,
            next_activation: t(1000),
            occurrence: (phase != Phase::Idle).then(|| (t(1000), t(2000))),
            warm_start: t(warm_start),
            local_warm_start: t(warm_start),
            images: vec!["r/a:1".into()],
            missing_bytes: Some(0),
            missing_by_registry: Default::default(),
            estimated_pull: Default::default(),
            priority: 0,
            all_warm,
            source: "config".into(),
        }
    }

    fn status_w(phase: Phase, all_warm: bool) -> WindowStatus {
        WindowStatus {
            name: "w".into(),
            applies: true,
            phase,
            next_activation: t(600),
            occurrence: Some((t(600), t(4200))),
            warm_start: t(0),
            local_warm_start: t(0),
            images: vec!["r/a:1".into()],
            missing_bytes: Some(0),
            missing_by_registry: Default::default(),
            estimated_pull: Duration::ZERO,
            priority: 0,
            all_warm,
            source: "config".into(),
        }
    }

    fn value(m: &Metrics, metric: &str) -> Option<f64> {
        let prefix = format!("{metric}{{window=\"erp\"}} ");
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
    }

    #[test]
    fn planned_lead_is_the_plan_that_started_warming() {
        let (m, mut tr) = (Metrics::new(), Tracker::default());
        tr.observe(&[status(Phase::Idle, 400, false)], t(0), &m);
        assert_eq!(
            value(&m, "prewarm_window_planned_lead_seconds"),
            Some(600.0)
        );
        // The late counter is there before any late activation.
        assert_eq!(value(&m, "prewarm_window_late_total"), Some(0.0));
        tr.observe(&[status(Phase::Warming, 300, false)], t(300), &m);
        // As bytes arrive the estimate shrinks; the plan that started stays.
        tr.observe(&[status(Phase::Warming, 800, false)], t(500), &m);
        assert_eq!(
            value(&m, "prewarm_window_planned_lead_seconds"),
            Some(700.0)
        );
        tr.observe(&[status(Phase::Warming, 990, true)], t(600), &m);
        assert_eq!(value(&m, "prewarm_window_lead_seconds"), Some(400.0));
        assert_eq!(
            value(&m, "prewarm_window_planned_lead_seconds"),
            Some(700.0)
        );
    }

    #[test]
    fn planned_lead_is_unknown_for_a_window_first_seen_open() {
        let (m, mut tr) = (Metrics::new(), Tracker::default());
        tr.observe(&[status(Phase::Active, 900, true)], t(1100), &m);
        assert_eq!(value(&m, "prewarm_window_planned_lead_seconds"), None);
        tr.observe(&[], t(1200), &m);
        assert_eq!(value(&m, "prewarm_window_warm"), None);
    }

    /// Issue 12: an agent restarted after its window became warm keeps the
    /// lead it achieved instead of measuring it again from the restart, and
    /// does not count a late activation twice.
    #[test]
    fn a_restart_keeps_the_lead_and_the_late_count() {
        let m = Metrics::new();
        let mut before = Tracker::default();
        before.observe(&[status_w(Phase::Warming, true)], t(100), &m);
        let lead = |m: &Metrics| m.window_lead.with_label_values(&["w"]).get();
        assert_eq!(lead(&m), 500.0);
        let saved = before.records(16);

        let m = Metrics::new();
        let mut after = Tracker::default();
        after.restore(&saved);
        after.observe(&[status_w(Phase::Warming, true)], t(400), &m);
        assert_eq!(lead(&m), 500.0, "measured again from the restart");

        // Late, counted; restarted; not counted again.
        let m = Metrics::new();
        let mut late = Tracker::default();
        late.observe(&[status_w(Phase::Late, false)], t(700), &m);
        let saved = late.records(16);
        let m = Metrics::new();
        let mut after = Tracker::default();
        after.restore(&saved);
        after.observe(&[status_w(Phase::Late, false)], t(800), &m);
        assert_eq!(m.window_late.with_label_values(&["w"]).get(), 0);
        // The next occurrence starts afresh.
        let mut next = status_w(Phase::Warming, true);
        next.next_activation = t(90_000);
        next.occurrence = Some((t(90_000), t(93_600)));
        after.observe(&[next], t(89_000), &m);
        assert_eq!(lead(&m), 1000.0);
    }
}
