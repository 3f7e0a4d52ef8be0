//! What the agent has learned about its node and keeps across restarts:
//! its pull throughput, the missing bytes it measured per image (with the
//! wall-clock time of the measurement) and, per window, the occurrence it
//! last saw warm or late. Pure: the checks take `now` and limits as
//! arguments; reading and writing the file is `node::state`'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The format this agent writes and reads.
pub const STATE_VERSION: u32 = 1;
/// Throughputs outside this range (bytes/s) are not believed.
pub const THROUGHPUT_RANGE: (f64, f64) = (1024.0, (1u64 << 40) as f64);
/// No image is believed to miss more than this.
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;
/// At most this many images and this many windows are kept.
pub const MAX_ENTRIES: usize = 1024;
/// Longest name (image reference or window) kept.
pub const MAX_NAME: usize = 512;
/// A lead (seconds, either sign) beyond a year is nonsense.
const MAX_LEAD_SECONDS: f64 = 366.0 * 24.0 * 3600.0;
/// A measurement this far in the future is a clock that jumped: dropped.
const FUTURE_SKEW: Duration = Duration::from_secs(300);

/// The persisted document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedState {
    pub version: u32,
    /// The node it was learned on (a hostPath can outlive its node's name).
    pub node: String,
    pub saved_at_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_bytes_per_second: Option<f64>,
    /// CRI name → bytes still missing when measured.
    #[serde(default)]
    pub missing_bytes: BTreeMap<String, MeasuredSize>,
    /// Window name → the occurrence last tracked.
    #[serde(default)]
    pub windows: BTreeMap<String, WindowRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredSize {
    pub bytes: u64,
    pub measured_at_unix: i64,
}

/// One window's current occurrence as the agent's tracker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowRecord {
    pub occurrence_start_unix: i64,
    /// The occurrence was seen warm (its lead is recorded).
    pub warm_seen: bool,
    /// Its late activation was counted already.
    pub late_counted: bool,
    /// Seconds before the start it became warm; negative if late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_seconds: Option<f64>,
}

impl LearnedState {
    pub fn new(node: &str, now: DateTime<Utc>) -> Self {
        Self {
            version: STATE_VERSION,
            node: node.to_string(),
            saved_at_unix: now.timestamp(),
            throughput_bytes_per_second: None,
            missing_bytes: BTreeMap::new(),
            windows: BTreeMap::new(),
        }
    }

    /// Same learned values, whenever saved.
    pub fn same_values(&self, other: &LearnedState) -> bool {
        let mut o = other.clone();
        o.saved_at_unix = self.saved_at_unix;
        *self == o
    }
}

/// Why a persisted state is not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("it is version {found}, this agent reads version {STATE_VERSION}")]
    Version { found: u32 },
    #[error("it was written for node {written_for:?}, this is node {this:?}")]
    OtherNode { written_for: String, this: String },
    #[error("{field}: {problem}")]
    BadValue { field: String, problem: String },
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> Rejection {
    Rejection::BadValue {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `state` as usable on `node` at `now`: rejected whole if it is another
/// version, another node's or holds a value no agent writes (not finite,
/// out of range, too many entries); measurements older than `size_ttl`
/// (or from the future) are dropped, as they would have been by the agent.
pub fn check(
    mut state: LearnedState,
    node: &str,
    size_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<LearnedState, Rejection> {
    if state.version != STATE_VERSION {
        return Err(Rejection::Version {
            found: state.version,
        });
    }
    if state.node != node {
        return Err(Rejection::OtherNode {
            written_for: state.node,
            this: node.to_string(),
        });
    }
    if let Some(t) = state.throughput_bytes_per_second {
        let (lo, hi) = THROUGHPUT_RANGE;
        if !t.is_finite() || !(lo..=hi).contains(&t) {
            return Err(bad(
                "throughputBytesPerSecond",
                format!("{t} is not between {lo} and {hi} bytes/s"),
            ));
        }
    }
    check_counts(&state)?;
    for (name, m) in &state.missing_bytes {
        if m.bytes > MAX_IMAGE_BYTES {
            return Err(bad(
                format!("missingBytes[{name:?}].bytes"),
                format!("{} is more than {MAX_IMAGE_BYTES}", m.bytes),
            ));
        }
    }
    for (name, w) in &state.windows {
        if let Some(lead) = w.lead_seconds {
            if !lead.is_finite() || lead.abs() > MAX_LEAD_SECONDS {
                return Err(bad(
                    format!("windows[{name:?}].leadSeconds"),
                    format!("{lead} is not a lead time"),
                ));
            }
        }
        if DateTime::from_timestamp(w.occurrence_start_unix, 0).is_none() {
            return Err(bad(
                format!("windows[{name:?}].occurrenceStartUnix"),
                "is out of range",
            ));
        }
    }
    state
        .missing_bytes
        .retain(|_, m| fresh(m.measured_at_unix, size_ttl, now));
    Ok(state)
}

fn check_counts(state: &LearnedState) -> Result<(), Rejection> {
    if state.missing_bytes.len() > MAX_ENTRIES {
        return Err(bad(
            "missingBytes",
            format!("more than {MAX_ENTRIES} images"),
        ));
    }
    if state.windows.len() > MAX_ENTRIES {
        return Err(bad("windows", format!("more than {MAX_ENTRIES} windows")));
    }
    let names = state.missing_bytes.keys().chain(state.windows.keys());
    if let Some(long) = names.into_iter().find(|n| n.len() > MAX_NAME) {
        let shown: String = long.chars().take(40).collect();
        return Err(bad(
            format!("{shown}…"),
            format!("name longer than {MAX_NAME} bytes"),
        ));
    }
    Ok(())
}

/// Measured at `at_unix`, still trusted at `now`.
pub fn fresh(at_unix: i64, ttl: Duration, now: DateTime<Utc>) -> bool {
    let Some(at) = DateTime::from_timestamp(at_unix, 0) else {
        return false;
    };
    let skew = chrono::TimeDelta::from_std(FUTURE_SKEW).unwrap_or_default();
    let ttl = chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::MAX);
    at <= now + skew && now - at < ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn state() -> LearnedState {
        let mut s = LearnedState::new("n1", t(0));
        s.throughput_bytes_per_second = Some(40e6);
        s.missing_bytes.insert(
            "r/a:1".into(),
            MeasuredSize {
                bytes: 100,
                measured_at_unix: t(-60).timestamp(),
            },
        );
        s.windows.insert(
            "w".into(),
            WindowRecord {
                occurrence_start_unix: t(3600).timestamp(),
                warm_seen: true,
                late_counted: false,
                lead_seconds: Some(120.0),
            },
        );
        s
    }

    #[test]
    fn a_sane_state_is_kept_whole() {
        assert_eq!(check(state(), "n1", TTL, t(0)), Ok(state()));
    }

    #[test]
    fn another_version_or_node_is_rejected() {
        let mut s = state();
        s.version = 2;
        assert_eq!(
            check(s, "n1", TTL, t(0)),
            Err(Rejection::Version { found: 2 })
        );
        let err = check(state(), "n2", TTL, t(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"it was written for node "n1", this is node "n2""#
        );
    }

    #[test]
    fn non_finite_or_out_of_range_values_are_rejected() {
        for bps in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1.0, 1e300] {
            let mut s = state();
            s.throughput_bytes_per_second = Some(bps);
            let err = check(s, "n1", TTL, t(0)).unwrap_err();
            assert!(
                err.to_string().starts_with("throughputBytesPerSecond: "),
                "{bps}: {err}"
            );
        }
        let mut s = state();
        s.windows.get_mut("w").unwrap().lead_seconds = Some(f64::NEG_INFINITY);
        let err = check(s, "n1", TTL, t(0)).unwrap_err();
        assert!(err.to_string().contains("leadSeconds"), "{err}");
        let mut s = state();
        s.missing_bytes.get_mut("r/a:1").unwrap().bytes = u64::MAX;
        let err = check(s, "n1", TTL, t(0)).unwrap_err();
        assert!(err.to_string().contains("r/a:1"), "{err}");
        let mut s = state();
        s.windows.get_mut("w").unwrap().occurrence_start_unix = i64::MAX;
        assert!(check(s, "n1", TTL, t(0)).is_err());
    }

    #[test]
    fn too_many_or_too_long_entries_are_rejected() {
        let mut s = state();
        for i in 0..=MAX_ENTRIES {
            s.windows.insert(format!("w{i}"), s.windows["w"]);
        }
        assert!(check(s, "n1", TTL, t(0)).is_err());
        let mut s = state();
        let m = s.missing_bytes["r/a:1"];
        s.missing_bytes.insert("x".repeat(MAX_NAME + 1), m);
        assert!(check(s, "n1", TTL, t(0)).is_err());
    }

    #[test]
    fn stale_or_future_measurements_are_dropped_the_rest_kept() {
        let got = check(state(), "n1", TTL, t(600 - 60)).unwrap();
        assert!(got.missing_bytes.is_empty(), "ten minutes old");
        assert_eq!(got.throughput_bytes_per_second, Some(40e6));
        assert_eq!(got.windows, state().windows);
        let got = check(state(), "n1", TTL, t(-60 - 400)).unwrap();
        assert!(got.missing_bytes.is_empty(), "measured in the future");
        let got = check(state(), "n1", TTL, t(-60 - 200)).unwrap();
        assert_eq!(got.missing_bytes.len(), 1, "within the clock skew");
    }

    #[test]
    fn same_values_ignores_when_it_was_saved() {
        let mut later = state();
        later.saved_at_unix += 99;
        assert!(state().same_values(&later));
        later.throughput_bytes_per_second = Some(1e6);
        assert!(!state().same_values(&later));
    }
}
