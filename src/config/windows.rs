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
}

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            safety_factor: 1.5,
            default_throughput: ByteSize(25 << 20),
            grace: Duration::from_secs(15 * 60),
            intent_hold: Duration::from_secs(15 * 60),
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
        Ok(())
    }
}

/// One recurring activation window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a window: a mapping with name, schedule, duration and images"
)]
pub struct Window {
    /// Unique, DNS-label-like (`[a-z0-9-]`, ≤ 63 characters).
    pub name: String,
    /// When occurrences start, read in `timezone`.
    pub schedule: Schedule,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_timezone", with = "timezone_serde")]
    pub timezone: Tz,
    /// How long each occurrence lasts, in real elapsed time.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
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
        if self.duration.is_zero() {
            return Err(ConfigError::invalid(
                field("duration"),
                "must be greater than 0",
            ));
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
mod tests {
    use super::*;
    use crate::config::{AgentConfig, ConfigErrorKind};
    use chrono::TimeZone;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/config/windows/", $name))
        };
    }

    /// Each fixture's first line is `# expect: <the ConfigError display>`.
    fn expect_error(text: &str) {
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "));
        let expect = expect.expect("fixture starts with # expect:");
        match AgentConfig::from_yaml(text) {
            Ok(c) => panic!("parsed: {c:?}\n{text}"),
            Err(err) => {
                assert_eq!(err.to_string(), expect, "{text}");
                let leaked = crate::config::error::rust_words(expect);
                assert!(leaked.is_empty(), "{expect}: shows {leaked:?}");
            }
        }
    }

    /// One test per invalid fixture, and the list of them.
    macro_rules! invalid {
        ($($test:ident: $file:literal,)*) => {
            const INVALID: &[&str] = &[$($file),*];
            $(
                #[test]
                fn $test() {
                    expect_error(fixture!($file));
                }
            )*
        };
    }

    invalid! {
        name_empty: "name-empty.yaml",
        name_duplicate: "name-duplicate.yaml",
        name_charset: "name-charset.yaml",
        name_dash: "name-dash.yaml",
        name_too_long: "name-too-long.yaml",
        name_missing: "name-missing.yaml",
        schedule_field_count: "schedule-field-count.yaml",
        schedule_seven_fields: "schedule-seven-fields.yaml",
        schedule_out_of_range: "schedule-out-of-range.yaml",
        schedule_bad_name: "schedule-bad-name.yaml",
        schedule_never_fires: "schedule-never-fires.yaml",
        timezone_unknown: "timezone-unknown.yaml",
        duration_zero: "duration-zero.yaml",
        duration_missing: "duration-missing.yaml",
        images_empty: "images-empty.yaml",
        image_invalid: "image-invalid.yaml",
        image_duplicate: "image-duplicate.yaml",
        pacing_max_concurrent_pulls: "pacing-max-concurrent-pulls.yaml",
        pacing_bandwidth: "pacing-bandwidth.yaml",
        node_selector_empty_key: "node-selector-empty-key.yaml",
        window_unknown_field: "window-unknown-field.yaml",
        safety_factor: "safety-factor.yaml",
        default_throughput: "default-throughput.yaml",
        intent_hold: "intent-hold.yaml",
        scheduling_unknown_field: "scheduling-unknown-field.yaml",
    }

    fn parse(text: &str) -> AgentConfig {
        AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_fixture_is_tested() {
        // `file!()` is relative to the package root, where tests run.
        let here = std::path::Path::new(file!()).parent();
        let dir = here.map(|d| d.join("../../tests/fixtures/config/windows"));
        let dir = dir.unwrap_or_default();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files: Vec<String> = entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        files.retain(|f| !f.starts_with("valid"));
        files.sort();
        let mut tested = INVALID.to_vec();
        tested.sort();
        assert_eq!(files, tested);
    }

    #[test]
    fn valid_fixture_normalizes_and_round_trips() {
        let c = parse(fixture!("valid.yaml"));
        assert_eq!(c.to_yaml(), fixture!("valid.normalized.yaml"));
        assert_eq!(parse(&c.to_yaml()), c);
        let erp = &c.windows[0];
        assert_eq!(erp.timezone, chrono_tz::Europe::Amsterdam);
        assert_eq!(
            erp.effective_grace(&c.scheduling),
            Duration::from_secs(1800)
        );
        let pacing = erp.pacing.clone().unwrap_or_default();
        assert_eq!(pacing.bandwidth, Some(ByteSize(200 << 20)));
        let other = &c.windows[1];
        let pins: Vec<bool> = other.image_entries().map(|e| e.pin).collect();
        assert_eq!(pins, [false, true]);
        assert_eq!(other.timezone, Tz::UTC);
        assert_eq!(other.lead_time, Duration::ZERO);
        assert_eq!(
            other.effective_grace(&c.scheduling),
            Duration::from_secs(600)
        );
        assert_eq!(c.scheduling.default_throughput, ByteSize(50 << 20));
        assert_eq!(c.scheduling.intent_hold, Duration::from_secs(1200));
    }

    #[test]
    fn defaults() {
        let s = Scheduling::default();
        assert_eq!(s.safety_factor, 1.5);
        assert_eq!(s.default_throughput, ByteSize(25 * 1024 * 1024));
        assert_eq!(s.grace, Duration::from_secs(900));
        assert_eq!(s.intent_hold, Duration::from_secs(900));
        let c =
            parse("windows:\n- {name: a, schedule: '0 8 * * *', duration: 1h, images: [nginx]}");
        let w = &c.windows[0];
        assert_eq!(
            (w.timezone, w.lead_time, w.priority, w.pin),
            (Tz::UTC, Duration::ZERO, 0, true)
        );
        assert!(w.node_selector.is_empty() && w.grace.is_none() && w.pacing.is_none());
        assert!(w.applies_to(&BTreeMap::new()));
        // Nothing about windows is written when they are not configured.
        assert!(!AgentConfig::default().to_yaml().contains("windows"));
        assert!(!AgentConfig::default().to_yaml().contains("scheduling"));
    }

    #[test]
    fn aks_integrations_example_parses() {
        let c = parse(include_str!("../../config/aks-integrations.yaml"));
        let names: Vec<&str> = c.windows.iter().map(|w| w.name.as_str()).collect();
        let want = [
            "erp-sync",
            "nightly-batch",
            "month-end-close",
            "partner-ftp-poll",
        ];
        assert_eq!(names, want);
        let erp = &c.windows[0];
        assert_eq!(erp.schedule.as_str(), "0 8 * * MON-FRI");
        assert_eq!(erp.timezone, chrono_tz::Europe::Amsterdam);
        assert_eq!(erp.duration, Duration::from_secs(3 * 3600));
        let pool = BTreeMap::from([(
            "kubernetes.azure.com/agentpool".to_owned(),
            "integrations".to_owned(),
        )]);
        assert!(c.windows.iter().all(|w| w.applies_to(&pool)));
        assert!(!erp.applies_to(&BTreeMap::new()));
        assert!(c
            .windows
            .iter()
            .flat_map(|w| &w.images)
            .all(|i| { i.image.registry == "myregistry.azurecr.io" }));
        assert_eq!(parse(&c.to_yaml()), c);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, fixture!("schedule-field-count.yaml")).unwrap();
        let err = AgentConfig::load(&path).unwrap_err();
        let want = format!(
            "{}: windows[2].schedule: expected 5 or 6 fields, got 4",
            path.display()
        );
        assert_eq!(err.to_string(), want);
        std::fs::write(&path, fixture!("duration-zero.yaml")).unwrap();
        let err = AgentConfig::load(&path).unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_str()),
            (ConfigErrorKind::Invalid, "windows[0].duration")
        );
    }

    #[test]
    fn schedule_compares_and_serializes_by_source() {
        let a: Schedule = "0 8 * * MON-FRI".parse().unwrap();
        let b: Schedule = "0 8 * * 1-5".parse().unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        assert_eq!(format!("{a:?}"), r#"Schedule("0 8 * * MON-FRI")"#);
        assert_eq!(a.to_string(), "0 8 * * MON-FRI");
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""0 8 * * MON-FRI""#);
        let back: Schedule = serde_json::from_str(r#""0 8 * * MON-FRI""#).unwrap();
        assert_eq!(back, a);
        let err = "@daily".parse::<Schedule>().unwrap_err();
        assert_eq!(err, ScheduleError::FieldCount(1));
    }

    fn next(schedule: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        let text = format!("{{name: a, schedule: '{schedule}', duration: 1h, images: [nginx]}}");
        let w: Window = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        w.next_start(after).unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// Standard cron semantics: 0 and 7 are Sunday, names in any case, and
    /// restricted day-of-month and day-of-week fields are ORed (Vixie).
    #[test]
    fn standard_cron_semantics() {
        let fri = utc(2026, 1, 2, 12, 0, 0); // Friday
        let sunday = utc(2026, 1, 4, 0, 0, 0);
        assert_eq!(next("0 0 * * 0", fri), sunday);
        assert_eq!(next("0 0 * * 7", fri), sunday);
        assert_eq!(next("0 0 * * sun", fri), sunday);
        assert_eq!(next("0 0 * jan SUN", fri), sunday);
        // 15th of the month OR a Monday: Monday the 5th comes first.
        assert_eq!(next("0 0 15 * MON", fri), utc(2026, 1, 5, 0, 0, 0));
        assert_eq!(next("0 0 15 * *", fri), utc(2026, 1, 15, 0, 0, 0));
        // Steps, ranges and lists.
        assert_eq!(next("*/20 9-10 * * *", fri), utc(2026, 1, 3, 9, 0, 0));
        assert_eq!(next("5,35 12 * * *", fri), utc(2026, 1, 2, 12, 5, 0));
        // Six fields: seconds first.
        assert_eq!(next("30 0 12 * * *", fri), utc(2026, 1, 2, 12, 0, 30));
    }

    #[test]
    fn validation_of_built_configs() {
        let mut c = parse(fixture!("valid.yaml"));
        c.scheduling.safety_factor = f64::NAN;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "scheduling.safetyFactor: must be at least 1"
        );
        c.scheduling.safety_factor = f64::INFINITY;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "scheduling.safetyFactor: must be finite"
        );
        let c = parse(fixture!("valid.yaml"));
        // The horizon is 5 years from the given instant.
        let feb29: Window = serde_yaml_ng::from_str(
            "{name: leap, schedule: '0 6 29 2 *', duration: 1h, images: [nginx]}",
        )
        .unwrap();
        validate_windows(
            std::slice::from_ref(&feb29),
            "windows",
            utc(2026, 3, 1, 0, 0, 0),
        )
        .unwrap();
        let windows = [c.windows[0].clone(), feb29];
        validate_windows(&windows, "windows", utc(2092, 3, 1, 0, 0, 0)).unwrap();
        let err = validate_windows(&windows, "windows", utc(2097, 3, 1, 0, 0, 0)).unwrap_err();
        assert_eq!(err.to_string(), "windows[1].schedule: never fires");
    }
}
