//! What the agent tells the coordinator: per-image progress (an engine
//! observer that also feeds the metrics) and the node report built after
//! each reconcile; plus the intents it accepts back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::link::NodeReport;
use super::metrics::Metrics;
use crate::config::reference::ImageRef;
use crate::node::pull::{PullError, PullObserver, PullOutcome};
use crate::plan::windows::WindowStatus;
use crate::wire::v1::image_state::Phase;
use crate::wire::v1::{ImageState, WindowState};

/// How often byte progress of running pulls is sent to the coordinator
/// (its warm gate tells a moving pull from a stalled one by it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Bytes done/total of running pulls and the last error per image.
#[derive(Default)]
struct Progress {
    running: HashMap<String, (u64, u64)>,
    failed: HashMap<String, String>,
    /// Engine key → CRI name of images reported in flight.
    names: HashMap<String, String>,
}

/// The engine's observer in the agent: metrics plus per-image progress.
pub struct AgentObserver {
    pub metrics: Arc<Metrics>,
    progress: Mutex<Progress>,
}

impl AgentObserver {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            progress: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state to report for `image` (keyed like the engine, by ImageRef).
    pub fn image_state(
        &self,
        name: &str,
        image: &ImageRef,
        present: Option<bool>,
        in_flight: bool,
    ) -> ImageState {
        let mut p = self.lock();
        let key = image.to_string();
        if in_flight {
            p.names.insert(key.clone(), name.to_string());
        }
        let (done, total) = p.running.get(&key).copied().unwrap_or((0, 0));
        let phase = match (present, in_flight) {
            (Some(_), _) => Phase::Warm,
            (None, true) => Phase::Pulling,
            (None, false) if p.failed.contains_key(&key) => Phase::Failed,
            (None, false) => Phase::Unspecified,
        };
        ImageState {
            name: name.to_string(),
            phase: phase as i32,
            pinned: present.unwrap_or(false),
            bytes_done: done,
            bytes_total: total,
            error: if phase == Phase::Failed {
                p.failed.get(&key).cloned().unwrap_or_default()
            } else {
                String::new()
            },
        }
    }

    /// `report` with the current bytes of its pulling images; None when
    /// none moved.
    pub fn refreshed(&self, report: &NodeReport) -> Option<NodeReport> {
        let p = self.lock();
        let mut out: Option<NodeReport> = None;
        for (key, (done, total)) in &p.running {
            let Some(name) = p.names.get(key) else {
                continue;
            };
            let Some(cur) = report.images.get(name) else {
                continue;
            };
            if cur.phase != Phase::Pulling as i32
                || (cur.bytes_done, cur.bytes_total) == (*done, *total)
            {
                continue;
            }
            let next = out.get_or_insert_with(|| report.clone());
            if let Some(i) = next.images.get_mut(name) {
                i.bytes_done = *done;
                i.bytes_total = *total;
            }
        }
        out
    }
}

/// Sends byte progress of running pulls every [`PROGRESS_EVERY`] between
/// reconciles (which rebuild the whole report), until cancelled.
pub async fn refresh_progress(
    observer: Arc<AgentObserver>,
    reports: watch::Sender<Arc<NodeReport>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        reports.send_if_modified(|cur| match observer.refreshed(cur) {
            Some(next) => {
                *cur = Arc::new(next);
                true
            }
            None => false,
        });
    }
}

impl PullObserver for AgentObserver {
    fn resolved(&self, image: &str, total: u64, missing: u64) {
        self.lock().running.insert(image.to_string(), (0, missing));
        self.metrics.resolved(image, total, missing);
    }
    fn bytes(&self, image: &str, n: u64) {
        if let Some(e) = self.lock().running.get_mut(image) {
            e.0 += n;
        }
        self.metrics.bytes(image, n);
    }
    fn finished(&self, image: &str, result: &Result<PullOutcome, PullError>) {
        {
            let mut p = self.lock();
            p.running.remove(image);
            p.names.remove(image);
            match result {
                Ok(_) => p.failed.remove(image),
                Err(e) => p.failed.insert(image.to_string(), e.to_string()),
            };
        }
        self.metrics.finished(image, result);
    }
}

pub fn window_states(statuses: &[WindowStatus]) -> BTreeMap<String, WindowState> {
    statuses
        .iter()
        .filter(|s| s.applies)
        .map(|s| {
            (
                s.name.clone(),
                WindowState {
                    name: s.name.clone(),
                    phase: s.phase.as_str().to_string(),
                    next_activation_unix: s.next_activation.timestamp(),
                    warm: s.all_warm,
                    source: s.source.clone(),
                    missing: s.missing_by_registry.clone().into_iter().collect(),
                },
            )
        })
        .collect()
}

/// Assembles the report; `images` maps CRI names to their state.
pub fn node_report(
    labels: &BTreeMap<String, String>,
    images: BTreeMap<String, ImageState>,
    windows: BTreeMap<String, WindowState>,
    free_disk_bytes: u64,
    pin_supported: bool,
    throughput_bytes_per_second: Option<f64>,
) -> NodeReport {
    NodeReport {
        labels: labels.clone(),
        images,
        windows,
        free_disk_bytes,
        pin_supported,
        throughput_bytes_per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshed_reports_carry_the_bytes_of_running_pulls_only() {
        let obs = AgentObserver::new(Arc::new(Metrics::new()));
        let a: ImageRef = "r.example/a:1".parse().unwrap();
        let b: ImageRef = "r.example/b:1".parse().unwrap();
        let (an, bn) = (a.cri_name(), b.cri_name());
        let mut report = NodeReport::default();
        // As a reconcile reports them: a in flight, b warm.
        report
            .images
            .insert(an.clone(), obs.image_state(&an, &a, None, true));
        report
            .images
            .insert(bn.clone(), obs.image_state(&bn, &b, Some(true), false));
        assert_eq!(obs.refreshed(&report), None, "nothing moved yet");
        obs.resolved(&a.to_string(), 100, 80);
        obs.bytes(&a.to_string(), 30);
        // A pull the report does not show is left alone.
        obs.resolved(&b.to_string(), 50, 50);
        obs.bytes(&b.to_string(), 10);
        let next = obs.refreshed(&report).expect("a moved");
        assert_eq!(
            (next.images[&an].bytes_done, next.images[&an].bytes_total),
            (30, 80)
        );
        assert_eq!(next.images[&an].phase, Phase::Pulling as i32);
        assert_eq!(next.images[&bn], report.images[&bn], "warm b untouched");
        assert_eq!(obs.refreshed(&next), None, "already current");
        obs.finished(
            &a.to_string(),
            &Err(PullError::Cancelled {
                image: a.to_string(),
            }),
        );
        obs.bytes(&a.to_string(), 5);
        assert_eq!(
            obs.refreshed(&next),
            None,
            "a finished: the reconcile reports it"
        );
    }
}
