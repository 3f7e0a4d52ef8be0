use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn sched(window: &str, registry: &str, start: i64, bps: u64, deadline: i64) -> PullSchedule {
    PullSchedule {
        window: window.into(),
        registry: registry.into(),
        start_unix: t(start).timestamp(),
        bytes_per_second: bps,
        late: false,
        deadline_unix: t(deadline).timestamp(),
    }
}

const MAX: Duration = Duration::from_secs(120);

#[test]
fn jitter_is_deterministic_within_bounds_and_spreads_nodes() {
    let a = jitter("node-1", "erp", t(3600), MAX);
    assert_eq!(a, jitter("node-1", "erp", t(3600), MAX), "same inputs");
    let all: Vec<Duration> = (0..500)
        .map(|i| jitter(&format!("node-{i}"), "erp", t(3600), MAX))
        .collect();
    assert!(all.iter().all(|j| *j < MAX));
    // 500 nodes over 120 s: spread over the range, not bunched.
    let distinct: BTreeSet<u64> = all.iter().map(|j| j.as_secs()).collect();
    assert!(
        distinct.len() > 90,
        "only {} distinct seconds",
        distinct.len()
    );
    let early = all.iter().filter(|j| j.as_secs() < 60).count();
    assert!(
        (180..=320).contains(&early),
        "{early} of 500 in the first half"
    );
    // Another occurrence or window moves it.
    let other: Vec<Duration> = (0..20)
        .map(|i| jitter(&format!("node-{i}"), "erp", t(7200), MAX))
        .collect();
    assert_ne!(&all[..20], &other[..]);
    assert_eq!(
        jitter("node-1", "erp", t(3600), Duration::ZERO),
        Duration::ZERO
    );
}

#[test]
fn without_a_schedule_the_local_plan_moves_earlier_by_the_jitter() {
    let starts = Starts {
        node: "node-1",
        max_jitter: MAX,
        schedules: &[],
    };
    let j = jitter("node-1", "erp", t(3600), MAX);
    let local = t(3000);
    let got = starts.image_start("erp", "r.example", t(3600), local);
    assert_eq!(got, local - TimeDelta::from_std(j).unwrap());
    assert!(got <= local && local - got < TimeDelta::seconds(120));
    assert_eq!(starts.cap("erp", "r.example", t(3600)), None);
    let regs: BTreeSet<String> = ["r.example".to_string()].into();
    assert_eq!(starts.warm_start("erp", t(3600), local, &regs), got);
    assert_eq!(
        starts.warm_start("erp", t(3600), local, &BTreeSet::new()),
        got
    );
}

#[test]
fn a_schedule_for_this_occurrence_sets_start_and_cap_per_registry() {
    let schedules = [
        sched("erp", "a.example", 2000, 5_000_000, 3600),
        sched("erp", "b.example", 3300, 0, 3600),
        // For an earlier occurrence: no longer applies.
        sched("erp", "c.example", 100, 1, 600),
    ];
    let starts = Starts {
        node: "node-1",
        max_jitter: MAX,
        schedules: &schedules,
    };
    let local = t(3000);
    // Later than the local plan: the budget wants this node to wait.
    assert_eq!(
        starts.image_start("erp", "b.example", t(3600), local),
        t(3300)
    );
    assert_eq!(
        starts.image_start("erp", "a.example", t(3600), local),
        t(2000)
    );
    assert_eq!(starts.cap("erp", "a.example", t(3600)), Some(5_000_000));
    assert_eq!(starts.cap("erp", "b.example", t(3600)), None, "0 = no cap");
    let stale = starts.image_start("erp", "c.example", t(3600), local);
    assert_eq!(stale, starts.jittered("erp", t(3600), local));
    assert_eq!(starts.cap("erp", "c.example", t(3600)), None);
    // The window warms from its earliest registry start still needed.
    let regs = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let ws = |r: &[&str]| starts.warm_start("erp", t(3600), local, &regs(r));
    assert_eq!(ws(&["a.example", "b.example"]), t(2000));
    assert_eq!(ws(&["b.example"]), t(3300));
    // Another window is not scheduled by erp's schedules.
    assert_eq!(
        starts.image_start("crm", "a.example", t(3600), local),
        starts.jittered("crm", t(3600), local)
    );
}
