use super::*;
use proptest::prelude::*;

const T0: i64 = 1_800_000_000;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(T0 + s, 0).unwrap()
}

fn budget(host: &str, bps: u64, nodes: u32) -> Budgets {
    Budgets {
        registries: vec![RegistryBudget {
            host: host.into(),
            bytes_per_sec: bps,
            max_nodes: nodes,
        }],
    }
}

fn demand(node: &str, bytes: u64, rate: f64, deadline: i64) -> Demand {
    Demand {
        node: node.into(),
        window: "w".into(),
        registry: "reg".into(),
        missing_bytes: bytes,
        node_rate: Some(rate),
        deadline: t(deadline),
        started: None,
    }
}

fn opts() -> PlanOptions {
    PlanOptions {
        default_node_rate: 10.0,
        safety_factor: 1.0,
        min_lead: Duration::ZERO,
    }
}

fn secs(a: &Assignment) -> (i64, i64) {
    (a.start.timestamp() - T0, a.finish.timestamp() - T0)
}

/// Independent check of the contract's capacity rule: at every instant from
/// `now` on, at most `max_nodes` pulls and caps summing to at most
/// `bytes_per_sec`, unless more pulls were started than `max_nodes` (or
/// `bytes_per_sec` bytes) and only those pull (they are never moved).
/// Also: every budgeted pull has a cap when the rate is limited.
fn assert_within(b: &RegistryBudget, demands: &[Demand], plan: &[Assignment], now: DateTime<Utc>) {
    let pulling: Vec<(&Demand, &Assignment)> = demands
        .iter()
        .zip(plan)
        .filter(|(d, a)| d.missing_bytes > 0 && a.finish > a.start && a.finish > now)
        .filter(|(d, _)| d.registry.eq_ignore_ascii_case(&b.host) || b.host == "*")
        .collect();
    let mut instants: Vec<DateTime<Utc>> = vec![now];
    for (_, a) in &pulling {
        instants.extend([a.start.max(now), a.finish]);
        if b.bytes_per_sec > 0 {
            assert!(
                a.bytes_per_sec > 0,
                "uncapped pull under a rate budget: {a:?}"
            );
        }
    }
    for at in instants {
        let live: Vec<&(&Demand, &Assignment)> = pulling
            .iter()
            .filter(|(_, a)| a.start.max(now) <= at && at < a.finish)
            .collect();
        let rate: u128 = live.iter().map(|(_, a)| u128::from(a.bytes_per_sec)).sum();
        let over = (b.max_nodes > 0 && live.len() > b.max_nodes as usize)
            || (b.bytes_per_sec > 0 && rate > u128::from(b.bytes_per_sec));
        if over {
            // Only when more pulls were started than the budget allows nodes.
            let started = pulling.iter().filter(|(d, _)| d.started.is_some()).count();
            let nodes = if b.max_nodes > 0 {
                u64::from(b.max_nodes)
            } else {
                u64::MAX
            };
            let lanes = nodes.min(if b.bytes_per_sec > 0 {
                b.bytes_per_sec
            } else {
                u64::MAX
            });
            assert!(
                started as u64 > lanes && live.iter().all(|(d, _)| d.started.is_some()),
                "budget {b:?} exceeded at {at} by new pulls: {} nodes, {rate} B/s",
                live.len()
            );
        }
    }
}

#[test]
fn never_exceeds_rate_or_nodes() {
    let b = budget("reg", 1_000, 4);
    let demands: Vec<Demand> = (0..50)
        .map(|i| {
            demand(
                &format!("n{i:02}"),
                10_000 + i * 100,
                200.0 + i as f64,
                3_600,
            )
        })
        .collect();
    let plan = plan(&b, &demands, &opts(), t(0));
    assert_eq!(plan.len(), 50);
    assert_within(&b.registries[0], &demands, &plan, t(0));
    assert_eq!(planned_peak(&plan, "reg"), 1_000, "4 lanes of 250 B/s");
    assert!(plan.iter().all(|a| a.bytes_per_sec == 250));
}

#[test]
fn every_node_on_time_when_feasible_and_as_late_as_allowed() {
    // 2 lanes of 100 B/s, 6 pulls of 100 s each, deadline at 300 s: exactly feasible.
    let b = budget("reg", 200, 2);
    let demands: Vec<Demand> = (0..6)
        .map(|i| demand(&format!("n{i}"), 10_000, 100.0, 300))
        .collect();
    let plan = plan(&b, &demands, &opts(), t(0));
    assert!(plan.iter().all(|a| !a.late), "{plan:?}");
    let mut spans: Vec<(i64, i64)> = plan.iter().map(secs).collect();
    spans.sort();
    assert_eq!(
        spans,
        vec![
            (0, 100),
            (0, 100),
            (100, 200),
            (100, 200),
            (200, 300),
            (200, 300)
        ]
    );
    assert_within(&b.registries[0], &demands, &plan, t(0));
}

#[test]
fn staggered_deadlines_start_as_late_as_possible() {
    let b = budget("reg", 100, 1);
    let demands = vec![
        demand("a", 5_000, 100.0, 1_000),
        demand("b", 5_000, 100.0, 2_000),
    ];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert_eq!(secs(&plan[0]), (950, 1_000));
    assert_eq!(secs(&plan[1]), (1_950, 2_000));
}

#[test]
fn infeasible_are_late_and_scheduled_as_early_as_possible() {
    // One lane; two 100 s pulls due at 150 s: one fits, the other is late.
    let b = budget("reg", 100, 1);
    let demands = vec![
        demand("a", 10_000, 100.0, 150),
        demand("b", 10_000, 100.0, 150),
    ];
    let plan = plan(&b, &demands, &opts(), t(0));
    let late: Vec<&Assignment> = plan.iter().filter(|a| a.late).collect();
    assert_eq!(late.len(), 1, "{plan:?}");
    let on_time = plan.iter().find(|a| !a.late).unwrap();
    assert_eq!(secs(on_time), (50, 150));
    // ASAP without pushing the on-time pull: the 50 s in front is too short.
    assert_eq!(secs(late[0]), (150, 250));
    assert!(late[0].finish > t(150));
}

#[test]
fn a_pull_longer_than_the_time_left_starts_now() {
    let b = budget("reg", 100, 1);
    let plan = plan(&b, &[demand("a", 100_000, 100.0, 60)], &opts(), t(0));
    assert!(plan[0].late);
    assert_eq!(secs(&plan[0]), (0, 1_000));
}

#[test]
fn late_ones_use_the_gap_before_a_later_window() {
    // a is due at 5000 and sits at [4900, 5000); b (due at 50, needs 100 s) is
    // late and goes into the gap in front of a instead of after it.
    let b = budget("reg", 100, 1);
    let demands = vec![
        demand("a", 10_000, 100.0, 5_000),
        demand("b", 10_000, 100.0, 50),
    ];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert!(!plan[0].late);
    assert_eq!(secs(&plan[0]), (4_900, 5_000));
    assert!(plan[1].late);
    assert_eq!(secs(&plan[1]), (0, 100));
}

#[test]
fn started_demands_keep_their_start_and_lane() {
    let b = budget("reg", 100, 1);
    let mut running = demand("a", 5_000, 100.0, 1_000);
    running.started = Some(t(-30));
    let demands = vec![running, demand("b", 10_000, 100.0, 120)];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert_eq!(
        secs(&plan[0]),
        (-30, 50),
        "start kept, finish from what is missing"
    );
    assert!(!plan[0].late);
    // b would like [20, 120) but the lane is busy until 50: b cannot finish
    // by 120, so it is late and starts right after a.
    assert!(plan[1].late);
    assert_eq!(secs(&plan[1]), (50, 150));
    assert_within(&b.registries[0], &demands, &plan, t(0));
}

#[test]
fn more_started_than_lanes_delays_new_pulls_until_they_end() {
    let b = budget("reg", 200, 2);
    let mut demands: Vec<Demand> = (0..3)
        .map(|i| {
            let mut d = demand(&format!("s{i}"), 10_000 * (i + 1), 100.0, 10_000);
            d.started = Some(t(-1));
            d
        })
        .collect();
    demands.push(demand("new", 1_000, 100.0, 10));
    let plan = plan(&b, &demands, &opts(), t(0));
    for (i, a) in plan.iter().take(3).enumerate() {
        assert_eq!(a.start, t(-1), "started {i} is never moved");
    }
    // Lanes: s2 alone until 300; s1 and s0 share the other until 200.
    assert_eq!(secs(&plan[3]), (200, 210));
    assert!(plan[3].late);
    assert_within(&b.registries[0], &demands, &plan, t(0));
}

#[test]
fn unknown_throughput_uses_the_default() {
    let b = budget("reg", 1_000, 1);
    let mut d = demand("a", 1_000, 0.0, 1_000);
    d.node_rate = None;
    let known = demand("b", 1_000, 10.0, 1_000);
    for bad in [None, Some(f64::NAN), Some(-5.0), Some(f64::INFINITY)] {
        d.node_rate = bad;
        let got = plan(&b, std::slice::from_ref(&d), &opts(), t(0));
        let want = plan(&b, std::slice::from_ref(&known), &opts(), t(0));
        assert_eq!(
            secs(&got[0]),
            (900, 1_000),
            "{bad:?}: 1000 B at the default 10 B/s"
        );
        assert_eq!(secs(&got[0]), secs(&want[0]));
    }
}

#[test]
fn no_budget_is_todays_local_plan() {
    let o = PlanOptions {
        default_node_rate: 10.0,
        safety_factor: 1.5,
        min_lead: Duration::from_secs(60),
    };
    let long = demand("a", 1_000, 10.0, 1_000); // 150 s with the factor
    let short = demand("b", 100, 10.0, 1_000); // 15 s, min lead wins
    let cases = [
        Budgets::default(),
        budget("other", 100, 1),
        budget("reg", 0, 0),
        budget("*", 0, 0),
    ];
    for b in cases {
        let plan = plan(&b, &[long.clone(), short.clone()], &o, t(0));
        assert_eq!(secs(&plan[0]), (850, 1_000), "{b:?}");
        assert_eq!(secs(&plan[1]), (940, 955), "{b:?}");
        assert!(plan.iter().all(|a| a.bytes_per_sec == 0 && !a.late));
    }
}

#[test]
fn no_budget_late_when_the_local_lead_is_already_past() {
    let plan = plan(
        &Budgets::default(),
        &[demand("a", 1_000, 10.0, 50)],
        &opts(),
        t(0),
    );
    assert_eq!(
        plan[0].start,
        t(-50),
        "today's start, in the past: the agent starts now"
    );
    assert_eq!(plan[0].finish, t(100));
    assert!(plan[0].late);
}

#[test]
fn min_lead_caps_the_start() {
    let o = PlanOptions {
        min_lead: Duration::from_secs(600),
        ..opts()
    };
    let b = budget("reg", 100, 1);
    let plan = plan(&b, &[demand("a", 1_000, 100.0, 1_000)], &o, t(0));
    assert_eq!(secs(&plan[0]), (400, 410));
    // Too close to honour the lead, but still in time: starts now, not late.
    let plan2 = super::plan(&b, &[demand("a", 1_000, 100.0, 300)], &o, t(0));
    assert_eq!(secs(&plan2[0]), (0, 10));
    assert!(!plan2[0].late);
}

#[test]
fn deterministic_and_independent_of_input_order() {
    let b = budget("reg", 300, 2);
    let demands: Vec<Demand> = (0..40)
        .map(|i| {
            demand(
                &format!("n{}", (i * 7) % 40),
                1_000 * (i % 5 + 1),
                50.0 + (i % 3) as f64 * 25.0,
                200 + (i as i64 % 4) * 50,
            )
        })
        .collect();
    let a = plan(&b, &demands, &opts(), t(0));
    assert_eq!(a, plan(&b, &demands, &opts(), t(0)));
    let mut rev = demands.clone();
    rev.reverse();
    let mut r = plan(&b, &rev, &opts(), t(0));
    r.reverse();
    assert_eq!(a, r);
}

#[test]
fn ties_go_by_node_name() {
    let b = budget("reg", 100, 1);
    let demands = vec![
        demand("b", 1_000, 100.0, 100),
        demand("a", 1_000, 100.0, 100),
    ];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert_eq!(secs(&plan[1]), (80, 90), "a first");
    assert_eq!(secs(&plan[0]), (90, 100));
}

#[test]
fn empty_input_plans_nothing() {
    assert!(plan(&budget("*", 1, 1), &[], &opts(), t(0)).is_empty());
}

#[test]
fn zero_bytes_take_no_lane_and_are_never_late() {
    let b = budget("reg", 100, 1);
    let demands = vec![demand("a", 0, 100.0, -10), demand("b", 10_000, 100.0, 100)];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert!(!plan[0].late);
    assert_eq!(plan[0].start, plan[0].finish);
    assert_eq!(plan[0].bytes_per_sec, 0);
    assert_eq!(secs(&plan[1]), (0, 100));
    assert!(!plan[1].late);
}

#[test]
fn deadlines_in_the_past_are_late_and_start_now() {
    let b = budget("reg", 100, 2);
    let plan = plan(&b, &[demand("a", 1_000, 100.0, -100)], &opts(), t(0));
    assert!(plan[0].late);
    assert_eq!(secs(&plan[0]), (0, 10));
}

#[test]
fn sub_second_now_rounds_up() {
    let b = budget("reg", 100, 1);
    let now = t(0) + chrono::TimeDelta::milliseconds(200);
    let plan = plan(&b, &[demand("a", 100_000, 100.0, 5)], &opts(), now);
    assert_eq!(secs(&plan[0]), (1, 1_001));
}

#[test]
fn huge_numbers_neither_overflow_nor_panic() {
    let huge = Budgets {
        registries: vec![
            RegistryBudget {
                host: "reg".into(),
                bytes_per_sec: u64::MAX,
                max_nodes: u32::MAX,
            },
            RegistryBudget {
                host: "tiny".into(),
                bytes_per_sec: 1,
                max_nodes: 1,
            },
        ],
    };
    let o = PlanOptions {
        default_node_rate: f64::MAX,
        safety_factor: f64::INFINITY,
        min_lead: Duration::MAX,
    };
    let mut demands = Vec::new();
    for (reg, bytes, rate, deadline) in [
        ("reg", u64::MAX, Some(1e-300), DateTime::<Utc>::MAX_UTC),
        ("reg", u64::MAX, Some(f64::MAX), DateTime::<Utc>::MIN_UTC),
        ("tiny", u64::MAX, None, DateTime::<Utc>::MAX_UTC),
        ("tiny", 1, Some(1.0), DateTime::<Utc>::MIN_UTC),
        ("none", u64::MAX, Some(1.0), DateTime::<Utc>::MIN_UTC),
    ] {
        demands.push(Demand {
            registry: reg.into(),
            node_rate: rate,
            deadline,
            ..demand("n", bytes, 1.0, 0)
        });
    }
    demands[1].started = Some(DateTime::<Utc>::MIN_UTC);
    for now in [t(0), DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
        let plan = plan(&huge, &demands, &o, now);
        assert_eq!(plan.len(), demands.len());
        for a in &plan {
            assert!(a.finish >= a.start, "{a:?}");
        }
        assert_within(&huge.registries[1], &demands, &plan, now);
    }
}

#[test]
fn host_lookup_exact_then_default() {
    let b = Budgets {
        registries: vec![
            RegistryBudget {
                host: "*".into(),
                bytes_per_sec: 1,
                max_nodes: 0,
            },
            RegistryBudget {
                host: "Registry.Example:5000".into(),
                bytes_per_sec: 2,
                max_nodes: 0,
            },
        ],
    };
    assert_eq!(
        b.for_host("registry.example:5000").unwrap().bytes_per_sec,
        2
    );
    assert_eq!(b.for_host("registry.example").unwrap().bytes_per_sec, 1);
    assert_eq!(budget("a", 1, 1).for_host("b"), None);
    assert!(Budgets::default().is_unlimited());
    assert!(budget("*", 0, 0).is_unlimited());
    assert!(!budget("*", 0, 3).is_unlimited());
}

#[test]
fn the_default_budget_applies_to_each_host_separately() {
    let b = budget("*", 100, 1);
    let mut other = demand("b", 10_000, 100.0, 100);
    other.registry = "other".into();
    let plan = plan(&b, &[demand("a", 10_000, 100.0, 100), other], &opts(), t(0));
    assert_eq!(secs(&plan[0]), (0, 100));
    assert_eq!(secs(&plan[1]), (0, 100));
    assert!(plan.iter().all(|a| !a.late));
}

#[test]
fn registry_names_group_case_insensitively() {
    let b = budget("reg", 100, 1);
    let mut upper = demand("b", 10_000, 100.0, 200);
    upper.registry = "REG".into();
    let demands = vec![demand("a", 10_000, 100.0, 200), upper];
    let plan = plan(&b, &demands, &opts(), t(0));
    assert_eq!(secs(&plan[0]), (0, 100));
    assert_eq!(secs(&plan[1]), (100, 200));
    assert_eq!(plan[1].registry, "REG");
}

#[test]
fn nodes_only_budget_leaves_rates_uncapped() {
    let b = budget("reg", 0, 2);
    let demands: Vec<Demand> = (0..4)
        .map(|i| demand(&format!("n{i}"), 1_000, 10.0, 200))
        .collect();
    let plan = plan(&b, &demands, &opts(), t(0));
    assert!(plan.iter().all(|a| a.bytes_per_sec == 0 && !a.late));
    let mut spans: Vec<(i64, i64)> = plan.iter().map(secs).collect();
    spans.sort();
    assert_eq!(spans, vec![(0, 100), (0, 100), (100, 200), (100, 200)]);
    assert_within(&b.registries[0], &demands, &plan, t(0));
}

#[test]
fn slow_nodes_get_lanes_at_least_their_rate() {
    // 1000 B/s, no node limit, nodes at 100 B/s: 10 lanes of 100 B/s.
    let b = budget("reg", 1_000, 0);
    let demands: Vec<Demand> = (0..30)
        .map(|i| demand(&format!("n{i}"), 1_000, 100.0, 100))
        .collect();
    let plan = plan(&b, &demands, &opts(), t(0));
    assert!(plan.iter().all(|a| a.bytes_per_sec == 100 && !a.late));
    assert_eq!(planned_peak(&plan, "reg"), 1_000);
}

#[test]
fn planned_peak_sums_overlapping_caps_only() {
    let a = |s: i64, f: i64, bps: u64| Assignment {
        node: "n".into(),
        window: "w".into(),
        registry: "reg".into(),
        start: t(s),
        bytes_per_sec: bps,
        finish: t(f),
        late: false,
    };
    let plan = vec![a(0, 10, 5), a(10, 20, 7), a(5, 15, 1), a(0, 30, 0)];
    assert_eq!(planned_peak(&plan, "REG"), 8);
    assert_eq!(planned_peak(&plan, "other"), 0);
}

fn arb_demand() -> impl Strategy<Value = Demand> {
    (
        0u8..6,
        0u64..50_000,
        prop_oneof![Just(None), (1.0f64..500.0).prop_map(Some)],
        -200i64..3_000,
        prop_oneof![4 => Just(None), 1 => (-100i64..=0).prop_map(Some)],
        0u8..2,
    )
        .prop_map(|(n, bytes, rate, deadline, started, reg)| Demand {
            node: format!("n{n}"),
            window: "w".into(),
            registry: if reg == 0 {
                "reg".into()
            } else {
                "other".into()
            },
            missing_bytes: bytes,
            node_rate: rate,
            deadline: t(deadline),
            started: started.map(t),
        })
}

proptest! {
    #[test]
    fn invariants_hold_on_random_inputs(
        demands in proptest::collection::vec(arb_demand(), 0..40),
        bps in 0u64..2_000,
        nodes in 0u32..6,
        lead in 0u64..300,
        factor in 1.0f64..2.0,
    ) {
        let b = Budgets { registries: vec![RegistryBudget { host: "reg".into(), bytes_per_sec: bps, max_nodes: nodes }] };
        let o = PlanOptions { default_node_rate: 40.0, safety_factor: factor, min_lead: Duration::from_secs(lead) };
        let now = t(0);
        let plan = plan(&b, &demands, &o, now);
        prop_assert_eq!(plan.len(), demands.len());
        assert_within(&b.registries[0], &demands, &plan, now);
        for (d, a) in demands.iter().zip(&plan) {
            prop_assert_eq!(&a.node, &d.node);
            prop_assert!(a.finish >= a.start);
            if d.missing_bytes == 0 {
                prop_assert!(!a.late);
                continue;
            }
            prop_assert_eq!(a.late, a.finish > d.deadline, "{:?}", a);
            let budgeted = d.registry == "reg" && (bps > 0 || nodes > 0);
            if let Some(s) = d.started {
                prop_assert_eq!(a.start, s, "started demands are never moved");
            } else if budgeted {
                prop_assert!(a.start >= now, "{:?}", a);
                let latest = d.deadline - chrono::TimeDelta::seconds(lead as i64);
                // Later than the lead allows only right after another pull
                // frees its lane (it could not start earlier).
                let lane_busy = demands
                    .iter()
                    .zip(&plan)
                    .any(|(o, p)| o.missing_bytes > 0 && o.registry == "reg" && p.finish == a.start);
                prop_assert!(a.late || a.start <= latest.max(now) || lane_busy, "{:?} lead {}", a, lead);
            }
            // Enough time at the predicted rate: the node's own, under its cap.
            let rate = d.node_rate.unwrap_or(40.0);
            let rate = if a.bytes_per_sec > 0 { rate.min(a.bytes_per_sec as f64) } else { rate };
            let need = (d.missing_bytes as f64 * factor / rate).ceil() as i64;
            let from = if d.started.is_some() || a.start < now { now } else { a.start };
            prop_assert_eq!((a.finish - from).num_seconds(), need, "{:?}", a);
        }
        let mut rev = demands.clone();
        rev.reverse();
        let mut again = super::plan(&b, &rev, &o, now);
        again.reverse();
        prop_assert_eq!(plan, again);
    }

    /// Equal pulls on K lanes from now: feasible exactly when the i-th
    /// earliest deadline leaves room for ⌊i/K⌋ + 1 pulls; then nobody is late.
    #[test]
    fn nobody_late_when_equal_pulls_are_feasible(
        deadlines in proptest::collection::vec(1i64..20, 1..30),
        lanes in 1u32..5,
    ) {
        let b = budget("reg", 100 * u64::from(lanes), lanes);
        let demands: Vec<Demand> = deadlines
            .iter()
            .enumerate()
            .map(|(i, &k)| demand(&format!("n{i:02}"), 1_000, 100.0, k * 10))
            .collect();
        let mut sorted = deadlines.clone();
        sorted.sort();
        let feasible = sorted.iter().enumerate().all(|(i, &k)| k * 10 >= (i as i64 / i64::from(lanes) + 1) * 10);
        let plan = plan(&b, &demands, &opts(), t(0));
        let late = plan.iter().filter(|a| a.late).count();
        if feasible {
            prop_assert_eq!(late, 0, "{:?}", plan);
        } else {
            prop_assert!(late > 0);
        }
        assert_within(&b.registries[0], &demands, &plan, t(0));
    }
}

#[test]
fn started_pulls_share_the_rate_budget_when_lanes_shrink() {
    // A re-plan after the slow nodes finished: the five still pulling are
    // faster than the budget splits five ways, but the budget can still
    // hold five nodes (max 10), so their caps must sum to at most 1000 B/s.
    let b = budget("reg", 1_000, 10);
    let demands: Vec<Demand> = (0..5)
        .map(|i| Demand {
            started: Some(t(-10)),
            ..demand(&format!("s{i}"), 10_000, 500.0, 1_000)
        })
        .collect();
    let plan = plan(&b, &demands, &opts(), t(0));
    let caps: u64 = plan.iter().map(|a| a.bytes_per_sec).sum();
    assert!(
        caps <= 1_000,
        "started pulls capped at {caps} B/s in total: {plan:?}"
    );
    assert!(plan.iter().all(|a| a.bytes_per_sec == 200));
}
