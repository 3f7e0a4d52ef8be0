//! Activation windows: recurring periods (cron schedule + duration in a time
//! zone) during which a set of images must already be warm on the nodes a
//! selector picks. The pure scheduler in `plan::windows` decides from these
//! when warming starts and how long pins are held.
//!
//! Schedules use standard (Vixie) cron semantics: 5 fields, or 6 with a
//! leading seconds field; `0` and `7` both mean Sunday; names (`MON`, `JAN`),
//! ranges, steps and lists work as usual. When both day-of-month and
//! day-of-week are restricted a day matching *either* fires (Vixie's OR).
//! croner's extensions (`L`, `W`, `#`, `?`, a `+` prefix on day-of-week to
//! AND the two day fields) are accepted too. Unlike Vixie, a stepped day field
//! such as `*/2` counts as restricted for that OR rule; only a bare `*` is
//! unrestricted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{units, ByteSize, ConfigError, ImageEntry, ImageItem};

/// A window whose schedule has no start within this many days never fires.
pub const FIRE_HORIZON_DAYS: i64 = 5 * 366;

/// Longest window name: a DNS label.
pub const NAME_MAX_LEN: usize = 63;

/// Global defaults for every window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of scheduling settings"
)]
pub struct Scheduling {
    /// Estimated pull time is multiplied by this (≥ 1) to leave headroom.
    pub safety_factor: f64,
    /// Bytes per second assumed until the node has measured its own.
    #[serde(with = "units::rate")]
    pub default_throughput: ByteSize,
    /// Pins are held this long after a window ends.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Pins of images a coordinator intent asked for are held at least this
    /// long after the intent ends (gated pods start, rollouts finish).
    #[serde(with = "humantime_serde")]
    pub intent_hold: Duration,
    /// Without a coordinator schedule, each node starts warming up to this
    /// much earlier than its own plan (a fixed share per node, window and
    /// occurrence), so a pool's nodes do not all hit the registry at once.
    #[serde(with = "humantime_serde")]
    pub start_jitter: Duration,
}

/// Longest `scheduling.startJitter` accepted.
pub const MAX_START_JITTER: Duration = Duration::from_secs(24 * 3600);

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            safety_factor: 1.5,
            default_throughput: ByteSize(25 << 20),
            grace: Duration::from_secs(15 * 60),
            intent_hold: Duration::from_secs(15 * 60),
            start_jitter: Duration::from_secs(120),
        }
    }
}

impl Scheduling {
    /// Whether every field has its default (the section is then not written out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if self.safety_factor.is_nan() || self.safety_factor < 1.0 {
            return Err(ConfigError::invalid(
                field("safetyFactor"),
                "must be at least 1",
            ));
        }
        if !self.safety_factor.is_finite() {
            return Err(ConfigError::invalid(
                field("safetyFactor"),
                "must be finite",
            ));
        }
        if self.default_throughput.is_zero() {
            return Err(ConfigError::invalid(
                field("defaultThroughput"),
                "must be greater than 0",
            ));
        }
        if self.intent_hold < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                field("intentHold"),
                "must be at least 1s (it keeps pins from dropping when an intent ends)",
            ));
        }
        if self.start_jitter > MAX_START_JITTER {
            return Err(ConfigError::invalid(
                field("startJitter"),
                "must be at most 24h (warming starts up to this much earlier than planned)",
            ));
        }
        Ok(())
    }
}

/// One recurring activation window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a window: a mapping with name, schedule, duration or end, and images"
)]
pub struct Window {
    /// Unique, DNS-label-like (`[a-z0-9-]`, ≤ 63 characters).
    pub name: String,
    /// When occurrences start, read in `timezone`.
    pub schedule: Schedule,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_timezone", with = "timezone_serde")]
    pub timezone: Tz,
    /// How long each occurrence lasts, in real elapsed time. Exactly one
    /// of `duration` and `end` is set.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    /// Each occurrence ends at the first occurrence of this cron (read in
    /// `timezone`) after its start, as a KEDA cron trigger's `end` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Schedule>,
    /// Warming starts at least this long before a start.
    #[serde(default, with = "humantime_serde")]
    pub lead_time: Duration,
    /// Node labels that must all match; empty selects every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Images that must be warm when the window starts, as written: a
    /// reference or `{image, pin}`; see [`Window::image_entries`].
    pub images: Vec<ImageItem>,
    /// Higher is warmed first.
    #[serde(default)]
    pub priority: i32,
    /// Pin the images while the window is active and in grace; the
    /// default for entries that do not set their own `pin`.
    #[serde(default = "pin_default")]
    pub pin: bool,
    /// Overrides `scheduling.grace` for this window.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace: Option<Duration>,
    /// Overrides the node-wide pacing while this window's images are pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<PacingOverride>,
    /// Where the window comes from: `None` for the config file, else the
    /// coordinator's source (`keda:<namespace>/<name>#<trigger>`).
    #[serde(skip)]
    pub source: Option<String>,
}

fn default_timezone() -> Tz {
    Tz::UTC
}

fn pin_default() -> bool {
    true
}

impl Window {
    /// The window's images with their pins decided: an entry's own `pin`,
    /// else the window's.
    pub fn image_entries(&self) -> impl Iterator<Item = ImageEntry> + '_ {
        self.images.iter().map(|item| item.resolve(self.pin))
    }

    /// The grace period in force: this window's, else the global one.
    pub fn effective_grace(&self, sched: &Scheduling) -> Duration {
        self.grace.unwrap_or(sched.grace)
    }

    /// Whether a node with `labels` is selected (every selector entry matches).
    pub fn applies_to(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }

    /// The first start strictly after `after`, computed in the window's zone.
    pub fn next_start(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        let next = self
            .schedule
            .cron
            .find_next_occurrence(&local, false)
            .ok()?;
        Some(next.with_timezone(&Utc))
    }

    /// When the occurrence starting at `start` ends: `duration` later, or
    /// at the first `end` occurrence strictly after it (in the window's
    /// zone, so it follows daylight saving time). `None` if `end` never
    /// fires again.
    pub fn end_of(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (&self.end, self.duration) {
            (Some(end), _) => {
                let local = start.with_timezone(&self.timezone);
                let next = end.cron.find_next_occurrence(&local, false).ok()?;
                Some(next.with_timezone(&Utc))
            }
            (None, Some(d)) => TimeDelta::from_std(d)
                .ok()
                .and_then(|d| start.checked_add_signed(d)),
            (None, None) => None,
        }
    }

    /// Where the window comes from, for logs, metrics and the CLI.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or("config")
    }

    /// The latest start at or before `at`, computed in the window's zone.
    pub fn previous_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.timezone);
        let prev = self
            .schedule
            .cron
            .find_previous_occurrence(&local, true)
            .ok()?;
        Some(prev.with_timezone(&Utc))
    }

    fn validate(&self, at: &str, now: DateTime<Utc>) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        check_name(&self.name).map_err(|msg| ConfigError::invalid(field("name"), msg))?;
        let horizon = now + TimeDelta::days(FIRE_HORIZON_DAYS);
        if self.next_start(now).is_none_or(|start| start > horizon) {
            return Err(ConfigError::invalid(field("schedule"), "never fires"));
        }
        match (self.duration, &self.end) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    field("end"),
                    "set either duration or end, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    field("duration"),
                    "missing: set duration (how long each occurrence lasts) or end (a cron schedule of when it ends)",
                ))
            }
            (Some(d), None) if d.is_zero() => {
                return Err(ConfigError::invalid(
                    field("duration"),
                    "must be greater than 0",
                ))
            }
            (Some(_), None) => {}
            (None, Some(_)) => {
                let start = self.next_start(now).unwrap_or(now);
                if self.end_of(start).is_none_or(|end| end > horizon) {
                    return Err(ConfigError::invalid(field("end"), "never fires"));
                }
            }
        }
        if self.node_selector.keys().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::invalid(
                field("nodeSelector"),
                "label keys must not be empty",
            ));
        }
        if self.images.is_empty() {
            return Err(ConfigError::invalid(field("images"), "must not be empty"));
        }
        for (i, item) in self.images.iter().enumerate() {
            let image = &item.image;
            if let Some(first) = self.images[..i].iter().position(|e| e.image == *image) {
                let message = format!("duplicate image \"{image}\" (same as images[{first}])");
                return Err(ConfigError::invalid(format!("{at}.images[{i}]"), message));
            }
        }
        let pulls = self.pacing.as_ref().and_then(|p| p.max_concurrent_pulls);
        if pulls == Some(0) {
            return Err(ConfigError::invalid(
                field("pacing.maxConcurrentPulls"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Per-window pacing; unset fields keep the node-wide `pacing` values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping with bandwidth and maxConcurrentPulls"
)]
pub struct PacingOverride {
    /// Bytes per second (`/s` allowed); 0 means unlimited, as in `pacing`.
    #[serde(with = "opt_rate", skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_pulls: Option<usize>,
}

/// Validates every window, and the names across windows. `now` anchors the
/// "never fires" check (no start within [`FIRE_HORIZON_DAYS`]).
pub fn validate_windows(
    windows: &[Window],
    at: &str,
    now: DateTime<Utc>,
) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, window) in windows.iter().enumerate() {
        let here = format!("{at}[{i}]");
        window.validate(&here, now)?;
        if !names.insert(window.name.as_str()) {
            let message = format!("duplicate window \"{}\"", window.name);
            return Err(ConfigError::invalid(format!("{here}.name"), message));
        }
    }
    Ok(())
}

/// DNS-label-like: lowercase letters, digits and `-`, not at either end.
fn check_name(name: &str) -> Result<(), &'static str> {
    let charset = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    match () {
        _ if name.is_empty() => Err("must not be empty"),
        _ if name.len() > NAME_MAX_LEN => Err("must be at most 63 characters"),
        _ if !charset => Err("must contain only lowercase letters, digits and '-'"),
        _ if name.starts_with('-') || name.ends_with('-') => {
            Err("must start and end with a letter or digit")
        }
        _ => Ok(()),
    }
}

/// A parsed cron schedule that remembers the text it was written as.
///
/// Compared, printed and serialized by that text.
#[derive(Clone)]
pub struct Schedule {
    source: String,
    cron: Cron,
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected 5 or 6 fields, got {0}")]
    FieldCount(usize),
    /// croner's own message.
    #[error("{0}")]
    Cron(String),
}

impl Schedule {
    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The parsed pattern.
    pub fn cron(&self) -> &Cron {
        &self.cron
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Counted here so the message is ours; croner would also accept a year.
        let fields = s.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::FieldCount(fields));
        }
        // Optional leading seconds, no year field, Vixie's OR of the day
        // fields (dom_and_dow off), strict ranges (no `/10` shorthand).
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .sloppy_ranges(false)
            .build();
        let cron = parser
            .parse(s)
            .map_err(|e| ScheduleError::Cron(cron_message(&e)))?;
        Ok(Schedule {
            source: s.to_owned(),
            cron,
        })
    }
}

/// croner's message without its type names ("CronPattern …") and prefixes.
fn cron_message(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let text = match e {
        E::EmptyPattern => "must not be empty",
        E::InvalidDate => "invalid date",
        E::InvalidTime => "invalid time",
        E::TimeSearchLimitExceeded => "no matching time found",
        E::InvalidPattern(m) | E::ComponentError(m) => m.as_str(),
        E::IllegalCharacters(m) => m.trim_start_matches("CronPattern contains "),
    };
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Schedule {}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.source).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Schedule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cron schedule such as \"0 8 * * MON-FRI\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Schedule, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Parses an IANA time zone name exactly as written (`Europe/Amsterdam`).
pub fn parse_timezone(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>()
        .map_err(|_| format!("unknown IANA time zone \"{s}\""))
}

/// `chrono_tz::Tz` as its IANA name.
mod timezone_serde {
    use super::*;

    pub fn serialize<S: Serializer>(tz: &Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Tz;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IANA time zone such as \"Europe/Amsterdam\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tz, E> {
                parse_timezone(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An optional [`units::rate`].
mod opt_rate {
    use super::*;

    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Rate(#[serde(with = "units::rate")] ByteSize);

    pub fn serialize<S: Serializer>(
        value: &Option<ByteSize>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(rate) => units::rate::serialize(rate, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ByteSize>, D::Error> {
        Ok(Option::<Rate>::deserialize(deserializer)?.map(|rate| rate.0))
    }
}

#[cfg(test)]
#[path = "windows_tests.rs"]
mod tests;
