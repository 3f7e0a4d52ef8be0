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
    end_and_duration: "end-and-duration.yaml",
    end_never_fires: "end-never-fires.yaml",
    end_field_count: "end-field-count.yaml",
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
    start_jitter: "start-jitter.yaml",
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
    assert_eq!(c.scheduling.start_jitter, Duration::from_secs(30));
}

#[test]
fn defaults() {
    let s = Scheduling::default();
    assert_eq!(s.safety_factor, 1.5);
    assert_eq!(s.default_throughput, ByteSize(25 * 1024 * 1024));
    assert_eq!(s.grace, Duration::from_secs(900));
    assert_eq!(s.intent_hold, Duration::from_secs(900));
    assert_eq!(s.start_jitter, Duration::from_secs(120));
    let c = parse("windows:\n- {name: a, schedule: '0 8 * * *', duration: 1h, images: [nginx]}");
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
    assert_eq!(erp.duration, Some(Duration::from_secs(3 * 3600)));
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

/// `end:` instead of `duration:`: each occurrence ends at the first end
/// after its start, in the window's zone, and the field round-trips.
#[test]
fn end_schedule_ends_occurrences_at_the_next_end() {
    let c = parse(
        "windows:\n- {name: office, schedule: '0 8 * * MON-FRI', end: '0 18 * * MON-FRI', timezone: Europe/Amsterdam, images: [nginx]}",
    );
    let w = &c.windows[0];
    assert_eq!(w.duration, None);
    assert_eq!(w.end.as_ref().map(|e| e.as_str()), Some("0 18 * * MON-FRI"));
    // Friday 2026-01-02 08:00 CET until 18:00 CET.
    let start = utc(2026, 1, 2, 7, 0, 0);
    assert_eq!(w.next_start(utc(2026, 1, 2, 0, 0, 0)), Some(start));
    assert_eq!(w.end_of(start), Some(utc(2026, 1, 2, 17, 0, 0)));
    assert!(c.to_yaml().contains("end: 0 18 * * MON-FRI"));
    assert!(!c.to_yaml().contains("duration"));
    assert_eq!(parse(&c.to_yaml()), c);
    assert_eq!(w.source_name(), "config");
}
