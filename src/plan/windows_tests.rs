//! Scheduler tests: every `now` is a fixed instant; nothing sleeps or reads
//! the clock.

use super::*;
use chrono::{TimeZone, Timelike};
use chrono_tz::Europe::Amsterdam;
use chrono_tz::Tz;

const POOL: &str = "kubernetes.azure.com/agentpool";
const ORDERS: &str = "myregistry.azurecr.io/erp/orders-sync:1.4.2";
const INVOICE: &str = "myregistry.azurecr.io/erp/invoice-export:2.0.7";
const LEDGER: &str = "myregistry.azurecr.io/batch/ledger-import:3.2.0";

/// A window from YAML flow-mapping fields; name, duration and images default.
fn window(fields: &str) -> Window {
    let text = format!("{{{fields}}}");
    let mut map: serde_yaml_ng::Mapping =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let images = serde_yaml_ng::Value::Sequence(vec![ORDERS.into()]);
    for (key, value) in [
        ("name", "w".into()),
        ("duration", "1h".into()),
        ("images", images),
    ] {
        map.entry(key.into()).or_insert(value);
    }
    serde_yaml_ng::from_value(map.into()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// A wall clock time in `tz` that exists exactly once.
fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Owned inputs behind a [`NodeView`].
struct Node {
    labels: BTreeMap<String, String>,
    missing: BTreeMap<String, u64>,
    warm: BTreeSet<String>,
    throughput: Option<f64>,
}

impl Node {
    /// An integrations-pool node holding nothing, with unknown sizes.
    fn cold() -> Node {
        Node {
            labels: BTreeMap::from([(POOL.to_owned(), "integrations".to_owned())]),
            missing: BTreeMap::new(),
            warm: BTreeSet::new(),
            throughput: None,
        }
    }

    fn warm(mut self, images: &[&str]) -> Node {
        self.warm.extend(images.iter().map(|i| i.to_string()));
        self
    }

    fn missing(mut self, image: &str, bytes: u64) -> Node {
        self.missing.insert(image.to_owned(), bytes);
        self
    }

    fn plan(&self, windows: &[Window], now: DateTime<Utc>) -> WindowPlan {
        self.plan_with(windows, &Scheduling::default(), now)
    }

    fn plan_with(&self, windows: &[Window], sched: &Scheduling, now: DateTime<Utc>) -> WindowPlan {
        let view = NodeView {
            labels: &self.labels,
            missing_bytes: &self.missing,
            warm: &self.warm,
            throughput: self.throughput,
        };
        plan_windows(windows, sched, &view, now)
    }
}

fn desired_names(plan: &WindowPlan) -> Vec<(&str, bool, bool, i64)> {
    let d = plan.desired.iter();
    d.map(|d| (d.name.as_str(), d.pin, d.pull, d.priority))
        .collect()
}

// ---- activations and DST ------------------------------------------------

/// 2026-03-29 in Amsterdam: 02:00 CET jumps to 03:00 CEST. A daily 02:30
/// start falls into the gap and runs at the first valid instant, 03:00.
#[test]
fn spring_forward_fixed_time_runs_after_the_gap() {
    let w = window("schedule: '30 2 * * *', timezone: Europe/Amsterdam");
    let starts = activations(&w, utc(2026, 3, 28, 0, 0), 3);
    let want = [
        local(Amsterdam, 2026, 3, 28, 2, 30), // 01:30Z (CET)
        local(Amsterdam, 2026, 3, 29, 3, 0),  // 01:00Z, right after the gap
        local(Amsterdam, 2026, 3, 30, 2, 30), // 00:30Z (CEST)
    ];
    assert_eq!(starts, want);
    assert_eq!(starts[1], utc(2026, 3, 29, 1, 0));
    // Seen from inside that shifted occurrence (03:30 CEST), it is active.
    let plan = Node::cold()
        .warm(&[ORDERS])
        .plan(&[w], utc(2026, 3, 29, 1, 30));
    let occ = (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0));
    assert_eq!(plan.windows[0].phase, Phase::Active);
    assert_eq!(plan.windows[0].occurrence, Some(occ));
}

/// An hourly schedule simply has no 02:00 that day: starts stay one real
/// hour apart.
#[test]
fn spring_forward_hourly_skips_the_missing_hour() {
    let w = window("schedule: '0 * * * *', timezone: Europe/Amsterdam");
    let starts = activations(&w, utc(2026, 3, 28, 23, 30), 3);
    let want = [
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 2, 0),
    ];
    assert_eq!(starts, want);
    let wall: Vec<u32> = starts
        .iter()
        .map(|s| s.with_timezone(&Amsterdam).hour())
        .collect();
    assert_eq!(wall, [1, 3, 4]);
}

/// 2026-10-25 in Amsterdam: 03:00 CEST goes back to 02:00 CET, so 02:30
/// happens twice. A fixed-time start runs once, at the earlier instant.
#[test]
fn fall_back_fixed_time_runs_once() {
    let w = window("schedule: '30 2 * * *', timezone: Europe/Amsterdam");
    let starts = activations(&w, utc(2026, 10, 24, 12, 0), 2);
    assert_eq!(starts, [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]);
    // At the second 02:30 (01:30Z) the 1h occurrence has just ended: the
    // window is in grace, not active a second time.
    let plan = Node::cold().plan(&[w], utc(2026, 10, 25, 1, 30));
    assert_eq!(plan.windows[0].phase, Phase::Grace);
    let occ = (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30));
    assert_eq!(plan.windows[0].occurrence, Some(occ));
}

/// An hourly schedule runs at both 02:00s.
#[test]
fn fall_back_hourly_runs_on_both_instants() {
    let w = window("schedule: '0 * * * *', timezone: Europe/Amsterdam");
    let starts = activations(&w, utc(2026, 10, 24, 23, 30), 4);
    let want = [
        utc(2026, 10, 25, 0, 0), // 02:00 CEST
        utc(2026, 10, 25, 1, 0), // 02:00 CET
        utc(2026, 10, 25, 2, 0),
        utc(2026, 10, 25, 3, 0),
    ];
    assert_eq!(starts, want);
    let wall: Vec<u32> = starts
        .iter()
        .map(|s| s.with_timezone(&Amsterdam).hour())
        .collect();
    assert_eq!(wall, [2, 2, 3, 4]);
}

/// Durations are real elapsed time: 3h from 01:00 CEST on fall-back day
/// ends at 02:00Z, which the wall clock shows as 03:00 CET.
#[test]
fn durations_are_real_time_across_fall_back() {
    let w = window("schedule: '0 1 * * *', timezone: Europe/Amsterdam, duration: 3h");
    let plan = Node::cold().plan(&[w], utc(2026, 10, 25, 1, 30));
    let (start, end) = plan.windows[0].occurrence.unwrap();
    assert_eq!(
        (start, end),
        (utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 2, 0))
    );
    assert_eq!(end.with_timezone(&Amsterdam).hour(), 3);
    assert_eq!(plan.windows[0].phase, Phase::Late);
}

/// Starts are computed on Amsterdam's wall clock, so their UTC hour moves
/// with daylight saving time.
#[test]
fn activations_follow_the_window_time_zone() {
    let w = window("schedule: '0 8 * * MON-FRI', timezone: Europe/Amsterdam");
    let starts = activations(&w, utc(2026, 3, 26, 12, 0), 3);
    let want = [
        utc(2026, 3, 27, 7, 0),
        utc(2026, 3, 30, 6, 0),
        utc(2026, 3, 31, 6, 0),
    ];
    assert_eq!(starts, want);
    let utc_window = window("schedule: '0 8 * * MON-FRI'");
    assert_eq!(
        activations(&utc_window, utc(2026, 3, 26, 12, 0), 1),
        [utc(2026, 3, 27, 8, 0)]
    );
    assert!(activations(&w, utc(2026, 3, 26, 12, 0), 0).is_empty());
}

#[test]
fn february_29_waits_for_a_leap_year() {
    let w = window("schedule: '0 6 29 2 *'");
    let starts = activations(&w, utc(2026, 1, 1, 0, 0), 2);
    assert_eq!(starts, [utc(2028, 2, 29, 6, 0), utc(2032, 2, 29, 6, 0)]);
}

#[test]
fn six_field_schedule_has_seconds_first() {
    let w = window("schedule: '30 0 8 * * *', leadTime: 10s");
    let start = Utc.with_ymd_and_hms(2026, 5, 4, 8, 0, 30).unwrap();
    assert_eq!(activations(&w, utc(2026, 5, 4, 7, 0), 1), [start]);
    let plan = Node::cold().plan(&[w], Utc.with_ymd_and_hms(2026, 5, 4, 8, 0, 29).unwrap());
    assert_eq!(plan.windows[0].phase, Phase::Warming);
    assert_eq!(plan.windows[0].next_activation, start);
}

// ---- phases -------------------------------------------------------------

/// 22:00 + 4h in Amsterdam (CET in January), seen at 23:30 and at 01:00.
#[test]
fn window_crossing_midnight() {
    let w = window("schedule: '0 22 * * *', timezone: Europe/Amsterdam, duration: 4h");
    let node = Node::cold().warm(&[ORDERS]);
    let occ = (
        local(Amsterdam, 2026, 1, 14, 22, 0),
        local(Amsterdam, 2026, 1, 15, 2, 0),
    );
    for now in [
        local(Amsterdam, 2026, 1, 14, 23, 30),
        local(Amsterdam, 2026, 1, 15, 1, 0),
    ] {
        let plan = node.plan(std::slice::from_ref(&w), now);
        let status = &plan.windows[0];
        assert_eq!(
            (status.phase, status.occurrence),
            (Phase::Active, Some(occ)),
            "{now}"
        );
        assert_eq!(status.next_activation, local(Amsterdam, 2026, 1, 15, 22, 0));
        assert_eq!(desired_names(&plan), [(ORDERS, true, true, 0)]);
        assert_eq!(plan.next_wakeup, Some(occ.1));
    }
    let after = node.plan(&[w], local(Amsterdam, 2026, 1, 15, 2, 10));
    assert_eq!(after.windows[0].phase, Phase::Grace);
    assert_eq!(after.next_wakeup, Some(occ.1 + TimeDelta::minutes(15)));
}

#[test]
fn idle_then_warming_then_active() {
    let w = window("schedule: '0 8 * * *', leadTime: 10m");
    let node = Node::cold().warm(&[ORDERS]);
    let idle = node.plan(std::slice::from_ref(&w), utc(2026, 6, 1, 7, 0));
    let status = &idle.windows[0];
    assert_eq!((status.phase, status.occurrence), (Phase::Idle, None));
    assert_eq!(status.warm_start, utc(2026, 6, 1, 7, 50));
    assert!(idle.desired.is_empty());
    assert_eq!(idle.next_wakeup, Some(utc(2026, 6, 1, 7, 50)));

    let warming = node.plan(std::slice::from_ref(&w), utc(2026, 6, 1, 7, 50));
    let occ = (utc(2026, 6, 1, 8, 0), utc(2026, 6, 1, 9, 0));
    assert_eq!(warming.windows[0].phase, Phase::Warming);
    assert_eq!(warming.windows[0].occurrence, Some(occ));
    assert_eq!(desired_names(&warming), [(ORDERS, true, true, 0)]);
    assert_eq!(warming.next_wakeup, Some(occ.0));

    // A start is active from its first instant.
    let active = node.plan(&[w], occ.0);
    assert_eq!(active.windows[0].phase, Phase::Active);
    assert_eq!(active.windows[0].next_activation, utc(2026, 6, 2, 8, 0));
    assert_eq!(active.next_wakeup, Some(occ.1));
}

/// An agent (or node) that starts mid-window wants the images at once, and
/// since the plan is a pure function a restart yields the very same plan.
#[test]
fn start_or_restart_mid_window() {
    let windows = [window(
        "schedule: '0 8 * * MON-FRI', timezone: Europe/Amsterdam, duration: 3h, priority: 100",
    )];
    let node = Node::cold().missing(ORDERS, 800 << 20);
    let now = local(Amsterdam, 2026, 6, 2, 9, 45);
    let first = node.plan(&windows, now);
    assert_eq!(first.windows[0].phase, Phase::Late);
    assert_eq!(
        desired_names(&first),
        [(ORDERS, true, true, LATE_PRIORITY + 100)]
    );
    assert_eq!(node.plan(&windows, now), first);
    // Later in the same occurrence, once warm: same image, still one pin.
    let later = node
        .warm(&[ORDERS])
        .plan(&windows, now + TimeDelta::minutes(30));
    assert_eq!(later.windows[0].phase, Phase::Active);
    assert_eq!(desired_names(&later), [(ORDERS, true, true, 100)]);
}

#[test]
fn grace_keeps_the_pin_without_pulling_then_releases() {
    let w = window("schedule: '0 8 * * *', grace: 30m");
    let node = Node::cold().warm(&[ORDERS]);
    let grace = node.plan(std::slice::from_ref(&w), utc(2026, 6, 1, 9, 10));
    assert_eq!(grace.windows[0].phase, Phase::Grace);
    assert_eq!(desired_names(&grace), [(ORDERS, true, false, 0)]);
    assert_eq!(grace.next_wakeup, Some(utc(2026, 6, 1, 9, 30)));
    // The grace end is exclusive; after it nothing is desired, so the agent unpins.
    let after = node.plan(std::slice::from_ref(&w), utc(2026, 6, 1, 9, 30));
    assert_eq!(after.windows[0].phase, Phase::Idle);
    assert!(after.desired.is_empty());
    assert_eq!(after.next_wakeup, Some(utc(2026, 6, 2, 8, 0)));
    // An unpinned window has nothing to hold in grace.
    let unpinned = Window { pin: false, ..w };
    let plan = node.plan(&[unpinned], utc(2026, 6, 1, 9, 10));
    assert_eq!(plan.windows[0].phase, Phase::Grace);
    assert!(plan.desired.is_empty());
}

/// An entry's own `pin` overrides its window's: unpinned images are
/// pulled while the window needs them but get no pin and no grace.
#[test]
fn entry_pin_overrides_the_window() {
    let images = format!("images: [{ORDERS}, {{image: {INVOICE}, pin: false}}]");
    let pinned = window(&format!("schedule: '0 8 * * *', grace: 30m, {images}"));
    let node = Node::cold().warm(&[ORDERS, INVOICE]);
    let active = node.plan(std::slice::from_ref(&pinned), utc(2026, 6, 1, 8, 10));
    assert_eq!(active.windows[0].phase, Phase::Active);
    let want = [(INVOICE, false, true, 0), (ORDERS, true, true, 0)];
    assert_eq!(desired_names(&active), want);
    let grace = node.plan(std::slice::from_ref(&pinned), utc(2026, 6, 1, 9, 10));
    assert_eq!(desired_names(&grace), [(ORDERS, true, false, 0)]);
    // An unpinned window with one pinned entry holds just that one.
    let images = format!("images: [{ORDERS}, {{image: {INVOICE}, pin: true}}]");
    let unpinned = window(&format!("schedule: '0 8 * * *', pin: false, {images}"));
    let active = node.plan(std::slice::from_ref(&unpinned), utc(2026, 6, 1, 8, 10));
    let want = [(INVOICE, true, true, 0), (ORDERS, false, true, 0)];
    assert_eq!(desired_names(&active), want);
    let grace = node.plan(&[unpinned], utc(2026, 6, 1, 9, 10));
    assert_eq!(desired_names(&grace), [(INVOICE, true, false, 0)]);
}

/// Shortening the duration of a running window moves it to grace (or idle
/// once the grace is over too) at once.
#[test]
fn config_changed_mid_window() {
    let long = window("schedule: '0 8 * * *', duration: 3h, grace: 1h");
    let node = Node::cold().warm(&[ORDERS]);
    let now = utc(2026, 6, 1, 9, 30);
    assert_eq!(
        node.plan(std::slice::from_ref(&long), now).windows[0].phase,
        Phase::Active
    );
    let short = Window {
        duration: Some(mins(60)),
        ..long.clone()
    };
    let plan = node.plan(std::slice::from_ref(&short), now);
    assert_eq!(plan.windows[0].phase, Phase::Grace);
    assert_eq!(desired_names(&plan), [(ORDERS, true, false, 0)]);
    let shorter = Window {
        duration: Some(mins(20)),
        grace: Some(mins(15)),
        ..short
    };
    let plan = node.plan(&[shorter], now);
    assert_eq!(plan.windows[0].phase, Phase::Idle);
    assert!(plan.desired.is_empty());
}

/// Warming for the next occurrence outranks the previous one's grace.
#[test]
fn warming_outranks_grace() {
    let w = window("schedule: '0 * * * *', duration: 50m, leadTime: 10m");
    let plan = Node::cold()
        .warm(&[ORDERS])
        .plan(&[w], utc(2026, 6, 1, 8, 55));
    let status = &plan.windows[0];
    assert_eq!(status.phase, Phase::Warming);
    assert_eq!(
        status.occurrence,
        Some((utc(2026, 6, 1, 9, 0), utc(2026, 6, 1, 9, 50)))
    );
    assert_eq!(desired_names(&plan), [(ORDERS, true, true, 0)]);
    // The earliest of: this grace's end (09:05) and the next start (09:00).
    assert_eq!(plan.next_wakeup, Some(utc(2026, 6, 1, 9, 0)));
}

#[test]
fn overlapping_windows_share_one_entry() {
    let erp = window(&format!(
        "name: erp, schedule: '0 8 * * *', duration: 3h, priority: 100, pin: false, images: ['{ORDERS}', '{INVOICE}']"
    ));
    let batch = window(&format!(
        "name: batch, schedule: '0 9 * * *', duration: 3h, priority: 50, images: ['{INVOICE}', '{LEDGER}']"
    ));
    let node = Node::cold().warm(&[ORDERS, INVOICE, LEDGER]);
    let plan = node.plan(&[erp, batch], utc(2026, 6, 1, 10, 0));
    let want = [
        (INVOICE, true, true, 100),
        (ORDERS, false, true, 100),
        (LEDGER, true, true, 50),
    ];
    assert_eq!(desired_names(&plan), want);
    assert_eq!(plan.desired[0].windows, ["erp", "batch"]);
    assert_eq!(plan.desired[0].image, INVOICE.parse().unwrap());
    assert_eq!(plan.next_wakeup, Some(utc(2026, 6, 1, 11, 0)));
}

/// An active window whose images are not warm is late and goes first, even
/// before a warming window of higher priority.
#[test]
fn late_window_gets_top_priority() {
    let late = window(&format!(
        "name: late, schedule: '0 8 * * *', priority: 1, images: ['{LEDGER}']"
    ));
    let next = window("name: next, schedule: '0 9 * * *', leadTime: 2h, priority: 1000");
    let node = Node::cold().warm(&[ORDERS]);
    let plan = node.plan(&[next, late], utc(2026, 6, 1, 8, 30));
    let phases: Vec<Phase> = plan.windows.iter().map(|w| w.phase).collect();
    assert_eq!(phases, [Phase::Warming, Phase::Late]);
    assert!(!plan.windows[1].all_warm && plan.windows[0].all_warm);
    let want = [
        (LEDGER, true, true, LATE_PRIORITY + 1),
        (ORDERS, true, true, 1000),
    ];
    assert_eq!(desired_names(&plan), want);
}

// ---- lead time ----------------------------------------------------------

#[test]
fn lead_time_from_estimate_when_it_is_longer() {
    let w = window(&format!(
        "schedule: '0 8 * * *', leadTime: 10m, images: ['{ORDERS}', '{INVOICE}']"
    ));
    let start = utc(2026, 6, 1, 8, 0);
    let now = utc(2026, 6, 1, 6, 0);
    // 30 GiB at the default 25 MiB/s is 1228.8 s, × 1.5 = 1843.2 s → 1844 s.
    let mut node = Node::cold()
        .missing(ORDERS, 30 << 30)
        .missing(INVOICE, 5 << 30)
        .warm(&[INVOICE]);
    let status = node.plan(std::slice::from_ref(&w), now).windows.remove(0);
    assert_eq!(status.missing_bytes, Some(30 << 30));
    assert_eq!(status.estimated_pull, Duration::from_secs(1844));
    assert_eq!(status.warm_start, start - TimeDelta::seconds(1844));
    // Measured 128 MiB/s: 240 s × 1.5 = 360 s, under the 10m lead.
    node.throughput = Some(128.0 * 1024.0 * 1024.0);
    let status = node.plan(std::slice::from_ref(&w), now).windows.remove(0);
    assert_eq!(status.estimated_pull, Duration::from_secs(360));
    assert_eq!(status.warm_start, start - TimeDelta::minutes(10));
    // A bigger safety factor pushes the estimate over the lead time again.
    let sched = Scheduling {
        safety_factor: 3.0,
        ..Scheduling::default()
    };
    let status = node
        .plan_with(std::slice::from_ref(&w), &sched, now)
        .windows
        .remove(0);
    assert_eq!(status.warm_start, start - TimeDelta::seconds(720));
}

#[test]
fn unknown_sizes_still_honour_lead_time() {
    let w = window(&format!(
        "schedule: '0 8 * * *', leadTime: 45m, images: ['{ORDERS}', '{INVOICE}']"
    ));
    let node = Node::cold().missing(ORDERS, 1 << 30);
    let status = node.plan(&[w], utc(2026, 6, 1, 6, 0)).windows.remove(0);
    assert_eq!(status.missing_bytes, None);
    // Only the known 1 GiB counts: 40.96 s × 1.5 → 62 s.
    assert_eq!(status.estimated_pull, Duration::from_secs(62));
    assert_eq!(status.warm_start, utc(2026, 6, 1, 7, 15));
}

#[test]
fn estimate_edge_cases() {
    let s = Scheduling::default();
    assert_eq!(estimate_pull(0, None, &s), Duration::ZERO);
    // A nonsensical measurement falls back to the default throughput.
    let fallback = estimate_pull(25 << 20, None, &s);
    assert_eq!(fallback, Duration::from_secs(2));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(estimate_pull(25 << 20, Some(bad), &s), fallback, "{bad}");
    }
    assert_eq!(estimate_pull(u64::MAX, Some(1.0), &s), MAX_ESTIMATE);
    let broken = Scheduling {
        safety_factor: f64::NAN,
        default_throughput: crate::config::ByteSize(0),
        ..s
    };
    assert_eq!(estimate_pull(1, None, &broken), MAX_ESTIMATE);
}

// ---- selection and robustness -------------------------------------------

#[test]
fn node_selector_mismatch_contributes_nothing() {
    let w = window(&format!(
        "schedule: '0 8 * * *', nodeSelector: {{'{POOL}': integrations}}"
    ));
    let mut node = Node::cold();
    node.labels.insert(POOL.to_owned(), "system".to_owned());
    let plan = node.plan(std::slice::from_ref(&w), utc(2026, 6, 1, 8, 30));
    let status = &plan.windows[0];
    assert!(!status.applies);
    assert_eq!((status.phase, status.occurrence), (Phase::Idle, None));
    assert_eq!(status.next_activation, utc(2026, 6, 2, 8, 0));
    assert!(plan.desired.is_empty() && plan.next_wakeup.is_none());
    let plan = Node::cold().plan(&[w], utc(2026, 6, 1, 8, 30));
    assert!(plan.windows[0].applies);
    assert_eq!(plan.windows[0].phase, Phase::Late);
}

/// The planner never panics, even on a schedule validation would reject.
#[test]
fn never_firing_schedule_is_idle_without_wakeup() {
    let w = window("schedule: '0 0 30 2 *'");
    let plan = Node::cold().plan(std::slice::from_ref(&w), utc(2026, 6, 1, 0, 0));
    let status = &plan.windows[0];
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(status.next_activation, DateTime::<Utc>::MAX_UTC);
    assert!(plan.next_wakeup.is_none() && plan.desired.is_empty());
    assert!(activations(&w, utc(2026, 6, 1, 0, 0), 3).is_empty());
    assert_eq!(
        WindowPlan::default(),
        Node::cold().plan(&[], utc(2026, 6, 1, 0, 0))
    );
}

#[test]
fn cri_names() {
    let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cases = [
        ("nginx", "docker.io/library/nginx:latest".to_owned()),
        (ORDERS, ORDERS.to_owned()),
        (
            &format!("redis:7@sha256:{hex}"),
            format!("docker.io/library/redis@sha256:{hex}"),
        ),
    ];
    for (input, want) in cases {
        let image: ImageRef = input.parse().unwrap();
        assert_eq!(image.cri_name(), want);
    }
    let bare = ImageRef {
        tag: None,
        ..ORDERS.parse().unwrap()
    };
    assert_eq!(
        bare.cri_name(),
        "myregistry.azurecr.io/erp/orders-sync:latest"
    );
    assert_eq!(Phase::Late.to_string(), "late");
}

/// The shipped AKS example behaves as documented on a Monday morning.
#[test]
fn aks_example_on_a_monday_morning() {
    let text = include_str!("../../config/aks-integrations.yaml");
    let config = crate::config::AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
    let node = Node::cold().warm(&[INVOICE]);
    let now = local(Amsterdam, 2026, 6, 1, 7, 55);
    let plan = node.plan_with(&config.windows, &config.scheduling, now);
    let phases: Vec<(&str, Phase)> = plan
        .windows
        .iter()
        .map(|w| (w.name.as_str(), w.phase))
        .collect();
    let want = [
        ("erp-sync", Phase::Warming),
        ("nightly-batch", Phase::Idle),
        ("month-end-close", Phase::Late),
        ("partner-ftp-poll", Phase::Idle),
    ];
    assert_eq!(phases, want);
    let first = &plan.desired[0];
    assert_eq!(
        (first.name.as_str(), first.priority),
        (
            "myregistry.azurecr.io/finance/close-runner:5.0.1",
            LATE_PRIORITY + 10
        )
    );
}

// ---- registry budget inputs ----------------------------------------------

/// Issue 13: what a window still lacks, per registry host, over its images
/// not warm (unmeasured ones count 0); and a warm start moved by
/// [`WarmStarts`] while the local one stays visible.
#[test]
fn missing_bytes_by_registry_and_moved_warm_starts() {
    let other = "docker.io/library/redis:7";
    let w = window(&format!(
        "schedule: '0 8 * * *', leadTime: 10m, images: ['{ORDERS}', '{INVOICE}', '{LEDGER}', '{other}']"
    ));
    let node = Node::cold()
        .warm(&[LEDGER])
        .missing(ORDERS, 300)
        .missing(INVOICE, 200)
        .missing(LEDGER, 999);
    let now = utc(2026, 11, 23, 6, 0);
    let st = &node.plan(std::slice::from_ref(&w), now).windows[0];
    let expect: BTreeMap<String, u64> = [
        ("myregistry.azurecr.io".to_string(), 500),
        ("docker.io".to_string(), 0),
    ]
    .into();
    assert_eq!(st.missing_by_registry, expect);
    assert_eq!(st.local_warm_start, utc(2026, 11, 23, 7, 50));

    struct Earlier;
    impl WarmStarts for Earlier {
        fn warm_start(
            &self,
            _: &str,
            _: DateTime<Utc>,
            local: DateTime<Utc>,
            cold: &BTreeSet<String>,
        ) -> DateTime<Utc> {
            assert_eq!(cold.len(), 2, "{cold:?}");
            local - chrono::TimeDelta::minutes(100)
        }
    }
    let view = NodeView {
        labels: &node.labels,
        missing_bytes: &node.missing,
        warm: &node.warm,
        throughput: node.throughput,
    };
    let plan = plan_windows_with(&[w], &Scheduling::default(), &view, &Earlier, now);
    let st = &plan.windows[0];
    assert_eq!(st.warm_start, utc(2026, 11, 23, 6, 10));
    assert_eq!(st.local_warm_start, utc(2026, 11, 23, 7, 50));
    assert_eq!(st.phase, Phase::Idle);
    assert_eq!(plan.next_wakeup, Some(utc(2026, 11, 23, 6, 10)));
}
