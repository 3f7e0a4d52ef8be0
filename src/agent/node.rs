//! What the agent learns about its node over time: its labels (from the
//! API server, the last known kept when it is down), its pull throughput
//! and the missing bytes of images windows will need soon.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::stack::Stack;
use super::windows;
use crate::config::reference::ImageRef;
use crate::config::AgentConfig;
use crate::k8s::{Labels, NodeLabels};
use crate::node::pull::PullOptions;
use crate::plan::learned::{self, LearnedState, MeasuredSize, MAX_ENTRIES};
use crate::plan::throughput::Throughput;
use crate::plan::windows::{
    plan_windows_with as plan_windows_pure, NodeView, Phase, WarmStarts, WindowPlan,
};

/// How often node labels are re-read from the API server.
const LABELS_TTL: Duration = Duration::from_secs(300);
/// Wait before reading labels again after a failure.
const LABELS_RETRY: Duration = Duration::from_secs(5);
/// Measured missing bytes are trusted this long (across restarts too).
pub const SIZE_TTL: Duration = Duration::from_secs(600);
/// Sizes are measured for windows starting within this many hours.
const SIZE_HORIZON_HOURS: i64 = 48;
/// Budget for measuring one image's missing bytes.
const SIZE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent learns about its node over time.
pub struct NodeState {
    pub name: String,
    source: Option<Arc<dyn NodeLabels>>,
    pub labels: Labels,
    labels_read: Option<Instant>,
    pub throughput: Throughput,
    /// Missing bytes per image, with when (wall clock) they were measured.
    pub sizes: HashMap<String, (u64, DateTime<Utc>)>,
    pub tracker: windows::Tracker,
}

impl NodeState {
    #[allow(clippy::too_many_arguments)]
    pub async fn plan_windows(
        &mut self,
        cfg: &AgentConfig,
        stack: &Stack,
        (in_flight, cancel): (&BTreeMap<String, Vec<String>>, &CancellationToken),
        candidates: &BTreeMap<String, ImageRef>,
        warm: &BTreeSet<String>,
        platform: &crate::config::Platform,
        starts: &(dyn WarmStarts + Sync),
        now: chrono::DateTime<Utc>,
    ) -> WindowPlan {
        let fresh = |t: &DateTime<Utc>| learned::fresh(t.timestamp(), SIZE_TTL, now);
        let sizes = |node: &NodeState| -> BTreeMap<String, u64> {
            node.sizes
                .iter()
                .map(|(k, (b, _))| (k.clone(), *b))
                .collect()
        };
        let missing = sizes(self);
        let view = NodeView {
            labels: &self.labels,
            missing_bytes: &missing,
            warm,
            throughput: self.throughput.bytes_per_second(),
        };
        let first = plan_windows_pure(&cfg.windows, &cfg.scheduling, &view, starts, now);
        // Measure what is missing for windows that are near or running.
        let horizon = now + chrono::Duration::hours(SIZE_HORIZON_HOURS);
        let opts = PullOptions {
            pin: false,
            platform: platform.clone(),
            cri_timeout: Duration::from_secs(60),
            priority: 0,
            bandwidth: None,
        };
        let mut measured = false;
        for st in first
            .windows
            .iter()
            .filter(|s| s.applies && (s.phase != Phase::Idle || s.next_activation <= horizon))
        {
            for name in &st.images {
                if warm.contains(name) || in_flight.contains_key(name) {
                    continue;
                }
                if self.sizes.get(name).is_some_and(|(_, t)| fresh(t)) {
                    continue;
                }
                let Some(image) = candidates.get(name) else {
                    continue;
                };
                match tokio::time::timeout(
                    SIZE_TIMEOUT,
                    stack.engine.missing_bytes(image, &opts, cancel),
                )
                .await
                {
                    Ok(Ok(bytes)) => {
                        self.sizes.insert(name.clone(), (bytes, now));
                        measured = true;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(image = %name, error = %e, "cannot measure missing bytes; lead time uses the minimum")
                    }
                    Err(_) => tracing::warn!(image = %name, "measuring missing bytes timed out"),
                }
            }
        }
        if !measured {
            return first;
        }
        let missing = sizes(self);
        let view = NodeView {
            missing_bytes: &missing,
            ..view
        };
        plan_windows_pure(&cfg.windows, &cfg.scheduling, &view, starts, now)
    }

    pub fn new(name: String, source: Option<Arc<dyn NodeLabels>>) -> Self {
        Self {
            name,
            source,
            labels: Labels::new(),
            labels_read: None,
            throughput: Throughput::default(),
            sizes: HashMap::new(),
            tracker: windows::Tracker::default(),
        }
    }

    /// What this node learned, to persist: the throughput, the fresh
    /// measurements (the newest [`MAX_ENTRIES`]) and the windows' occurrences.
    pub fn learned(&self, now: DateTime<Utc>) -> LearnedState {
        let mut state = LearnedState::new(&self.name, now);
        state.throughput_bytes_per_second = self.throughput.bytes_per_second();
        let mut sizes: Vec<_> = self
            .sizes
            .iter()
            .filter(|(_, (_, t))| learned::fresh(t.timestamp(), SIZE_TTL, now))
            .collect();
        sizes.sort_by_key(|(_, (_, t))| std::cmp::Reverse(*t));
        state.missing_bytes = sizes
            .into_iter()
            .take(MAX_ENTRIES)
            .map(|(name, (bytes, t))| {
                let m = MeasuredSize {
                    bytes: *bytes,
                    measured_at_unix: t.timestamp(),
                };
                (name.clone(), m)
            })
            .collect();
        state.windows = self.tracker.records(MAX_ENTRIES);
        state
    }

    /// Takes over a checked learned state (see [`learned::check`]).
    pub fn restore(&mut self, state: &LearnedState) {
        if let Some(bps) = state.throughput_bytes_per_second {
            self.throughput = Throughput::learned(bps);
        }
        for (name, m) in &state.missing_bytes {
            if let Some(t) = DateTime::from_timestamp(m.measured_at_unix, 0) {
                self.sizes.insert(name.clone(), (m.bytes, t));
            }
        }
        self.tracker.restore(&state.windows);
    }

    /// Re-reads the node's labels now and then; on failure the last known
    /// labels stay (the API server being down must not stop the agent).
    pub async fn refresh_labels(&mut self) {
        if self.labels_read.is_some_and(|t| t.elapsed() < LABELS_TTL) {
            return;
        }
        let Some(source) = &self.source else {
            self.labels_read = Some(Instant::now());
            return;
        };
        match source.labels(&self.name).await {
            Ok(labels) => {
                if labels != self.labels {
                    tracing::info!(node = %self.name, labels = labels.len(), "node labels read");
                }
                self.labels = labels;
                self.labels_read = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(node = %self.name, error = %e, "cannot read node labels; keeping the last known");
                // Try again soon rather than after the full TTL.
                self.labels_read = Some(Instant::now() - LABELS_TTL + LABELS_RETRY);
            }
        }
    }
}
