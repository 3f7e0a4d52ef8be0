//! Keeps the node's learned values across agent restarts: loaded once at
//! start (falling back to defaults with one log line saying why), saved
//! when they change, at most every [`SAVE_EVERY`], and on shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

use super::metrics::Metrics;
use super::node::{NodeState, SIZE_TTL};
use crate::node::state::{StateError, StateStore};
use crate::plan::learned::{self, LearnedState};

/// Changed values are written at most this often (and on shutdown).
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The store and what was last written to it.
pub struct Persisted {
    store: Arc<dyn StateStore>,
    last: Option<LearnedState>,
    last_write: Option<Instant>,
    /// The last save failed: say so once until one works again.
    failing: bool,
}

impl Persisted {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self {
            store,
            last: None,
            last_write: None,
            failing: false,
        }
    }

    /// Loads and checks the state into `node`; the gauge
    /// `prewarm_learned_state_restored` says whether it was used.
    pub fn restore(&mut self, node: &mut NodeState, metrics: &Metrics, now: DateTime<Utc>) {
        let at = self.store.location();
        let loaded = self.store.load().map_err(|e| match e {
            StateError::Missing { .. } => None,
            other => Some(other.to_string()),
        });
        let checked = loaded.and_then(|s| {
            learned::check(s, &node.name, SIZE_TTL, now).map_err(|why| Some(format!("{at}: {why}")))
        });
        match checked {
            Ok(state) => {
                node.restore(&state);
                if let Some(bps) = state.throughput_bytes_per_second {
                    metrics.throughput.set(bps);
                }
                metrics.learned_state_restored.set(1);
                tracing::info!(path = %at, throughput_bytes_per_second = ?state.throughput_bytes_per_second,
                    measured_images = state.missing_bytes.len(), windows = state.windows.len(),
                    "learned state restored");
                self.last = Some(state);
            }
            Err(None) => {
                metrics.learned_state_restored.set(0);
                tracing::info!(path = %at, "no learned state on this node yet; planning from the defaults until a pull is measured");
            }
            Err(Some(why)) => {
                metrics.learned_state_restored.set(0);
                tracing::warn!(path = %at, reason = %why, "learned state not used; planning from the defaults until a pull is measured");
            }
        }
    }

    /// Saves `node`'s values if they changed and the last write is at least
    /// [`SAVE_EVERY`] ago (or `now_anyway`, on shutdown). Returns when a
    /// pending change should be written, if one waits.
    pub fn save(
        &mut self,
        node: &NodeState,
        now: DateTime<Utc>,
        now_anyway: bool,
    ) -> Option<DateTime<Utc>> {
        let state = node.learned(now);
        if self.last.as_ref().is_some_and(|l| l.same_values(&state)) {
            return None;
        }
        let since = self.last_write.map(|t| t.elapsed());
        if let Some(since) = since.filter(|s| *s < SAVE_EVERY && !now_anyway) {
            let wait = TimeDelta::from_std(SAVE_EVERY - since).unwrap_or_default();
            return Some(now + wait);
        }
        self.last_write = Some(Instant::now());
        match self.store.save(&state) {
            Ok(()) => {
                if self.failing {
                    tracing::info!(path = %self.store.location(), "learned state saved again");
                }
                self.failing = false;
                tracing::debug!(path = %self.store.location(), "learned state saved");
                self.last = Some(state);
                None
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "cannot save the learned state; a restarted agent will plan from the defaults");
                }
                self.failing = true;
                // Tried again after the period.
                Some(now + TimeDelta::from_std(SAVE_EVERY).unwrap_or_default())
            }
        }
    }
}
