//! Hold or release cold, on hand-built views: every branch of the estimate
//! and how [`decide`] applies it. Sizes are whole MiB and throughputs MiB/s,
//! so predicted durations are exact.

use std::collections::BTreeMap;

use chrono::TimeZone;
use serde_json::{json, Value};

use super::*;
use crate::plan::gate::{
    avoid_patch, decide, ungate_patch, Decision, GateConfig, GatedPod, TimeoutPolicy, GATE,
};
use crate::plan::view::ClusterView;
use crate::wire::v1::{ImageState, Snapshot};

const APP: &str = "myregistry.azurecr.io/erp/app:1.0";
const SIDE: &str = "myregistry.azurecr.io/erp/sidecar:2.1";
const MIB: u64 = 1 << 20;

fn t(secs: f64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, 8, 0, 0).unwrap()
        + chrono::Duration::milliseconds((secs * 1000.0) as i64)
}

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// What a node reports for one image.
#[derive(Clone, Copy)]
enum St {
    Warm,
    /// MiB done, MiB missing when the pull started.
    Pulling(u64, u64),
}

/// A node of pool `pool`, with its learned throughput in MiB/s (None: not
/// measured yet).
fn node(name: &str, pool: &str, images: &[(&str, St)], mib_s: Option<u64>) -> Snapshot {
    Snapshot {
        node: name.into(),
        labels: [("pool".to_string(), pool.to_string())].into(),
        images: images
            .iter()
            .map(|(i, st)| {
                let (phase, done, total) = match st {
                    St::Warm => (Phase::Warm, 0, 0),
                    St::Pulling(d, t) => (Phase::Pulling, d * MIB, t * MIB),
                };
                ImageState {
                    name: i.to_string(),
                    phase: phase as i32,
                    bytes_done: done,
                    bytes_total: total,
                    ..Default::default()
                }
            })
            .collect(),
        seq: 1,
        throughput_bytes_per_second: mib_s.map(|m| (m * MIB) as f64),
        ..Default::default()
    }
}

/// The view with every snapshot reported at `at`.
fn view(at: f64, snaps: Vec<Snapshot>) -> ClusterView {
    let mut v = ClusterView::default();
    for s in snaps {
        v.apply_snapshot(s, t(at));
    }
    v
}

/// A fail-open gated pod in pool `apps`, created at t(0).
fn pod(images: &[&str]) -> GatedPod {
    let containers: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, img)| json!({"name": format!("c{i}"), "image": img}))
        .collect();
    GatedPod {
        namespace: "erp".into(),
        name: "app-0".into(),
        uid: "u-1".into(),
        created: t(0.0),
        spec: serde_json::from_value(json!({
            "containers": containers,
            "schedulingGates": [{"name": GATE}],
            "nodeSelector": {"pool": "apps"},
        }))
        .unwrap(),
        annotations: BTreeMap::new(),
        owner: None,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn est(
    v: &ClusterView,
    images: &[&str],
    nodes: &[&str],
    cfg: &EstimateConfig,
    now: f64,
) -> Estimate {
    estimate(&strings(images), &strings(nodes), v, cfg, t(now)).expect("eligible nodes")
}

/// The decision must be a cold release without narrowing; returns its
/// estimate and reason.
fn released_cold(d: Decision, p: &GatedPod) -> (Estimate, String) {
    released_cold_off(d, p, &[])
}

/// The decision must be a cold release that keeps the pod off `avoid`
/// (none: no narrowing); returns its estimate and reason.
fn released_cold_off(d: Decision, p: &GatedPod, avoid: &[&str]) -> (Estimate, String) {
    match d {
        Decision::ReleaseCold {
            patch,
            reason,
            estimate,
        } => {
            let expected = if avoid.is_empty() {
                ungate_patch(p)
            } else {
                avoid_patch(p, &strings(avoid))
            };
            assert_eq!(patch, expected);
            (estimate, reason)
        }
        other => panic!("expected a cold release, got {other:?}"),
    }
}

/// The decision must be a wait on an estimate; returns it.
fn held(d: Decision) -> Estimate {
    match d {
        Decision::Wait {
            estimate: Some(e), ..
        } => e,
        other => panic!("expected a hold on an estimate, got {other:?}"),
    }
}

fn cold_reason(images: &str, why: &str) -> String {
    format!("no eligible node warm for images {images}: {why}; released unwarmed")
}

/// Like [`cold_reason`], kept off the nodes pulling already.
fn cold_reason_off(images: &str, why: &str, off: &str) -> String {
    format!(
        "no eligible node warm for images {images}: {why}; released unwarmed, \
         kept off nodes already pulling them: {off}"
    )
}

/// A node of pool `apps` pulling [`APP`] at 10 MiB/s.
fn pulling(name: &str, done: u64) -> Snapshot {
    node(name, "apps", &[(APP, St::Pulling(done, 100))], Some(10))
}

/// An idle node of pool `apps` at 10 MiB/s.
fn idle(name: &str) -> Snapshot {
    node(name, "apps", &[], Some(10))
}

// ---- nothing to wait for ----

#[test]
fn nothing_pulling_releases_cold_at_once_without_narrowing() {
    // n2 pulls another image; n3 pulls this one but is not eligible
    // (another pool): it only tells the size.
    let v = view(
        0.0,
        vec![
            idle("n1"),
            node("n2", "apps", &[(SIDE, St::Pulling(1, 9))], Some(20)),
            node("n3", "batch", &[(APP, St::Pulling(5, 100))], Some(10)),
        ],
    );
    let p = pod(&[APP]);
    let (e, reason) = released_cold(decide(&p, &v, &GateConfig::default(), t(1.0)).decision, &p);
    assert_eq!(
        e,
        Estimate {
            hold: None,
            cold: Some(("n2".into(), s(5.0))),
            competing: vec![],
            stalled: None,
            hold_wins: false,
        }
    );
    assert_eq!(
        reason,
        cold_reason(
            APP,
            "no eligible node is pulling them; a cold start (about 5.0s on n2) is sooner than warming first"
        )
    );
}

#[test]
fn with_no_size_known_anywhere_the_cold_start_is_not_given_a_duration() {
    let v = view(0.0, vec![node("n1", "apps", &[], None)]);
    let p = pod(&[APP]);
    let (e, reason) = released_cold(decide(&p, &v, &GateConfig::default(), t(0.0)).decision, &p);
    assert_eq!(e.cold, Some(("n1".into(), Duration::ZERO)));
    assert_eq!(
        reason,
        cold_reason(
            APP,
            "no eligible node is pulling them; a cold start on n1 is sooner than warming first"
        )
    );
}

// ---- a pull in progress ----

#[test]
fn a_node_90_percent_done_holds_the_pod() {
    let v = view(0.0, vec![pulling("n1", 90), idle("n2")]);
    let p = pod(&[APP]);
    match decide(&p, &v, &GateConfig::default(), t(1.0)).decision {
        Decision::Wait {
            candidates,
            images,
            waited,
            estimate,
            ..
        } => {
            assert_eq!(candidates, strings(&["n1", "n2"]));
            assert_eq!(images, strings(&[APP]));
            assert_eq!(waited, s(1.0));
            // n2 would pull the 100 MiB n1 started out missing; n1, pulling,
            // is no place for a cold start.
            assert_eq!(
                estimate,
                Some(Estimate {
                    hold: Some(("n1".into(), s(1.0))),
                    cold: Some(("n2".into(), s(10.0))),
                    competing: strings(&["n1"]),
                    stalled: None,
                    hold_wins: true,
                })
            );
        }
        other => panic!("expected a hold, got {other:?}"),
    }
}

#[test]
fn a_pull_that_just_started_is_not_worth_waiting_for_and_the_pod_is_kept_off_it() {
    let v = view(0.0, vec![pulling("n1", 10), idle("n2")]);
    let p = pod(&[APP]);
    let d = decide(&p, &v, &GateConfig::default(), t(0.5)).decision;
    // A kubelet on n1 would download the image again beside its agent.
    let (e, reason) = released_cold_off(d, &p, &["n1"]);
    assert_eq!(e.hold, Some(("n1".into(), s(9.0))));
    assert_eq!(e.competing, strings(&["n1"]));
    assert_eq!(
        reason,
        cold_reason_off(
            APP,
            "n1 would be warm in about 9.0s plus 0.5s to release, not 20% sooner than \
             a cold start (about 10.0s on n2)",
            "n1"
        )
    );
}

#[test]
fn with_every_eligible_node_pulling_the_pod_waits_rather_than_share_a_link() {
    let v = view(0.0, vec![pulling("n1", 5), pulling("n2", 1)]);
    let e = held(decide(&pod(&[APP]), &v, &GateConfig::default(), t(0.5)).decision);
    assert_eq!(e.hold, Some(("n1".into(), s(9.5))));
    assert_eq!(e.cold, None);
    assert_eq!(e.competing, strings(&["n1", "n2"]));
}

#[test]
fn the_margin_and_the_release_overhead_decide_close_calls() {
    let with = |done| view(0.0, vec![pulling("n1", done), idle("n2")]);
    let nodes = ["n1", "n2"];
    let cfg = EstimateConfig::default();
    // Cold on n2: 10 s; holding must come in by 8 s, overhead included.
    assert!(
        est(&with(26), &[APP], &nodes, &cfg, 0.0).hold_wins,
        "7.4 s + 0.5 s"
    );
    assert!(
        !est(&with(24), &[APP], &nodes, &cfg, 0.0).hold_wins,
        "7.6 s + 0.5 s"
    );
    let free_release = EstimateConfig {
        release_overhead: Duration::ZERO,
        ..cfg.clone()
    };
    assert!(est(&with(24), &[APP], &nodes, &free_release, 0.0).hold_wins);
    let wide = EstimateConfig {
        hold_margin: 0.5,
        ..cfg.clone()
    };
    assert!(!est(&with(26), &[APP], &nodes, &wide, 0.0).hold_wins);
    assert!(
        est(&with(60), &[APP], &nodes, &wide, 0.0).hold_wins,
        "4 s + 0.5 s ≤ 5 s"
    );
}

// ---- stalls ----

#[test]
fn a_stalled_pull_releases_the_pod_cold() {
    let mut v = view(0.0, vec![pulling("n1", 90)]);
    let p = pod(&[APP]);
    let cfg = GateConfig::default();
    // Not moved for 5 s: still within stall_after.
    held(decide(&p, &v, &cfg, t(5.0)).decision);
    // Stalled, it moves no bytes: n1 is then a place for a cold start.
    let (e, reason) = released_cold(decide(&p, &v, &cfg, t(6.0)).decision, &p);
    assert_eq!((e.hold, e.competing.len()), (None, 0));
    assert_eq!(e.stalled, Some(("n1".into(), APP.into(), s(6.0))));
    assert_eq!(
        reason,
        cold_reason(
            APP,
            &format!(
                "the pull of {APP} on n1 has not moved for 6.0s; a cold start (about 10.0s on n1) \
                 is sooner than waiting"
            )
        )
    );
    // The same bytes again are no progress; more bytes are.
    bump(&mut v, 2, 90, 5.5);
    released_cold(decide(&p, &v, &cfg, t(6.0)).decision, &p);
    bump(&mut v, 3, 95, 5.5);
    assert_eq!(
        held(decide(&p, &v, &cfg, t(6.0)).decision).hold,
        Some(("n1".into(), s(0.5)))
    );
}

/// n1 reports `done` MiB of [`APP`] at `at`.
fn bump(v: &mut ClusterView, seq: u64, done: u64, at: f64) {
    let mut img = v.node("n1").unwrap().images.state(APP).unwrap();
    img.bytes_done = done * MIB;
    let d = crate::wire::v1::Delta {
        seq,
        upserted: vec![img],
        ..Default::default()
    };
    v.apply_delta("n1", d, t(at)).unwrap();
}

#[test]
fn an_unpacking_pull_is_stalled_only_after_the_whole_pull_should_have_taken() {
    // Every byte is in: CRI is unpacking, which reports no progress.
    let v = view(0.0, vec![pulling("n1", 100)]);
    let cfg = EstimateConfig::default();
    let e = est(&v, &[APP], &["n1"], &cfg, 9.0);
    assert_eq!(
        (e.hold, e.hold_wins),
        (Some(("n1".into(), Duration::ZERO)), true)
    );
    let e = est(&v, &[APP], &["n1"], &cfg, 10.5);
    assert_eq!(e.stalled, Some(("n1".into(), APP.into(), s(10.5))));
    assert!(!e.hold_wins);
    // A small image unpacks quickly, but stall_after still applies.
    let small = view(
        0.0,
        vec![node("n1", "apps", &[(APP, St::Pulling(10, 10))], Some(10))],
    );
    assert!(est(&small, &[APP], &["n1"], &cfg, 4.0).hold_wins);
    assert!(!est(&small, &[APP], &["n1"], &cfg, 5.5).hold_wins);
}

#[test]
fn a_pull_of_unknown_size_cannot_be_waited_for_but_still_competes() {
    // Pulling, not resolved yet: nothing says how long it will take.
    let unresolved = node("n1", "apps", &[(APP, St::Pulling(0, 0))], Some(10));
    let v = view(0.0, vec![unresolved.clone(), idle("n2")]);
    let p = pod(&[APP]);
    let d = decide(&p, &v, &GateConfig::default(), t(0.0)).decision;
    let (e, _) = released_cold_off(d, &p, &["n1"]);
    assert_eq!((e.hold, e.stalled), (None, None));
    // Alone, it leaves nowhere else to go: released as it is.
    let v = view(0.0, vec![unresolved]);
    let (e, _) = released_cold(decide(&p, &v, &GateConfig::default(), t(0.0)).decision, &p);
    assert_eq!((e.hold, e.cold), (None, None));
}

// ---- throughput ----

#[test]
fn unknown_throughput_uses_the_configured_default() {
    let v = view(
        0.0,
        vec![
            node("n1", "apps", &[(APP, St::Pulling(90, 100))], None),
            node("n2", "apps", &[], None),
        ],
    );
    let cfg = EstimateConfig {
        default_throughput: (20 * MIB) as f64,
        ..EstimateConfig::default()
    };
    let e = est(&v, &[APP], &["n1", "n2"], &cfg, 0.0);
    assert_eq!(e.hold, Some(("n1".into(), s(0.5))));
    assert_eq!(e.cold, Some(("n2".into(), s(5.0))));
    assert!(e.hold_wins);
    // A node known to be fast makes the cold start sooner than waiting
    // for one assumed slow.
    let v = view(
        0.0,
        vec![
            node("n1", "apps", &[(APP, St::Pulling(90, 100))], None),
            node("n2", "apps", &[], Some(100)),
        ],
    );
    let slow = EstimateConfig {
        default_throughput: (2 * MIB) as f64,
        ..EstimateConfig::default()
    };
    let e = est(&v, &[APP], &["n1", "n2"], &slow, 0.0);
    assert_eq!(e.hold, Some(("n1".into(), s(5.0))));
    assert_eq!(e.cold, Some(("n2".into(), s(1.0))));
    assert!(!e.hold_wins);
}

#[test]
fn the_default_default_throughput_is_the_agents() {
    let v = view(
        0.0,
        vec![node("n1", "apps", &[(APP, St::Pulling(75, 100))], None)],
    );
    let e = est(&v, &[APP], &["n1"], &EstimateConfig::default(), 0.0);
    assert_eq!(e.hold, Some(("n1".into(), s(1.0))), "25 MiB at 25 MiB/s");
}

// ---- several nodes and images ----

#[test]
fn several_candidates_wait_for_the_soonest_against_the_fastest_free_node() {
    let both = vec![
        pulling("n1", 50),
        node("n2", "apps", &[(APP, St::Pulling(80, 100))], Some(5)),
    ];
    let v = view(0.0, both.clone());
    let e = est(&v, &[APP], &["n1", "n2"], &EstimateConfig::default(), 0.0);
    assert_eq!(e.hold, Some(("n2".into(), s(4.0))), "n1 needs 5 s");
    assert_eq!(e.cold, None, "both pull: no node for a cold start");
    assert!(e.hold_wins);
    // A fast idle node pulls cold in 2 s: sooner than anyone warm.
    let mut all = both;
    all.push(node("n3", "apps", &[], Some(50)));
    let v = view(0.0, all);
    let p = pod(&[APP]);
    let d = decide(&p, &v, &GateConfig::default(), t(0.0)).decision;
    let (e, reason) = released_cold_off(d, &p, &["n1", "n2"]);
    assert_eq!(e.cold, Some(("n3".into(), s(2.0))));
    assert_eq!(
        reason,
        cold_reason_off(
            APP,
            "n2 would be warm in about 4.0s plus 0.5s to release, not 20% sooner than \
             a cold start (about 2.0s on n3)",
            "n1, n2"
        )
    );
}

#[test]
fn a_stalled_node_does_not_keep_a_moving_one_from_holding() {
    let mut v = view(0.0, vec![pulling("n1", 95)]);
    v.apply_snapshot(pulling("n2", 50), t(20.0));
    let e = est(&v, &[APP], &["n1", "n2"], &EstimateConfig::default(), 21.0);
    assert_eq!(e.hold, Some(("n2".into(), s(5.0))));
    assert_eq!(e.stalled, Some(("n1".into(), APP.into(), s(21.0))));
    // Its pull stalled, n1 moves no bytes: a place for a cold start.
    assert_eq!(e.cold, Some(("n1".into(), s(10.0))));
    assert_eq!(e.competing, strings(&["n2"]));
    assert!(e.hold_wins);
}

#[test]
fn a_pod_with_several_images_waits_only_for_a_node_bringing_all_of_them() {
    let v = view(
        0.0,
        vec![
            node(
                "n1",
                "apps",
                &[(APP, St::Warm), (SIDE, St::Pulling(40, 50))],
                Some(10),
            ),
            // Pulls one of the two: it would still need a fresh pull.
            node("n2", "apps", &[(APP, St::Pulling(99, 100))], Some(10)),
            idle("n3"),
        ],
    );
    let images = [APP, SIDE];
    let e = est(
        &v,
        &images,
        &["n1", "n2", "n3"],
        &EstimateConfig::default(),
        0.0,
    );
    assert_eq!(e.hold, Some(("n1".into(), s(1.0))));
    // Only n3 is free for a cold start: 100 MiB + a 50 MiB sidecar.
    assert_eq!(e.cold, Some(("n3".into(), s(15.0))));
    assert_eq!(e.competing, strings(&["n1", "n2"]));
    assert!(e.hold_wins);
    let e = est(&v, &images, &["n2", "n3"], &EstimateConfig::default(), 0.0);
    assert_eq!((e.hold, e.hold_wins), (None, false));
    assert_eq!(e.cold, Some(("n3".into(), s(15.0))));
    // Pulling one image of two, alone: not waitable, nowhere else to go.
    let only = view(
        0.0,
        vec![node("n2", "apps", &[(APP, St::Pulling(99, 100))], Some(10))],
    );
    let p = pod(&images);
    let (e, reason) = released_cold(
        decide(&p, &only, &GateConfig::default(), t(0.0)).decision,
        &p,
    );
    assert_eq!((e.hold, e.cold), (None, None));
    assert_eq!(
        reason,
        cold_reason(
            &format!("{APP}, {SIDE}"),
            "no eligible node is pulling all of them; a cold start is sooner than warming first"
        )
    );
}

#[test]
fn no_eligible_node_gives_no_estimate() {
    assert_eq!(
        estimate(
            &strings(&[APP]),
            &[],
            &ClusterView::default(),
            &EstimateConfig::default(),
            t(0.0)
        ),
        None
    );
}

// ---- the patch ----

#[test]
fn the_avoid_patch_keeps_the_pod_off_nodes_in_every_required_term() {
    let mut p = pod(&[APP]);
    let term =
        |v: &str| json!({"matchExpressions": [{"key": "pool", "operator": "In", "values": [v]}]});
    p.spec = serde_json::from_value(json!({
        "containers": [{"name": "c0", "image": APP}],
        "schedulingGates": [{"name": GATE}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [term("a"), term("b")]}}},
    }))
    .unwrap();
    let not_in =
        json!({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n1", "n2"]});
    let path = |j: usize| {
        format!(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution\
             /nodeSelectorTerms/{j}/matchExpressions/-"
        )
    };
    let mut expected = ungate_patch(&p).as_array().unwrap().clone();
    expected.push(json!({"op": "add", "path": path(0), "value": not_in}));
    expected.push(json!({"op": "add", "path": path(1), "value": not_in}));
    assert_eq!(
        avoid_patch(&p, &strings(&["n2", "n1", "n2"])),
        Value::Array(expected)
    );
    // Kept off by the hostname label, as the warm release narrows.
    let mut labelled = pulling("n1", 10);
    labelled
        .labels
        .insert("kubernetes.io/hostname".into(), "host-one".into());
    let v = view(0.0, vec![labelled, idle("n2")]);
    let p = pod(&[APP]);
    match decide(&p, &v, &GateConfig::default(), t(0.0)).decision {
        Decision::ReleaseCold { patch, .. } => {
            assert_eq!(patch, avoid_patch(&p, &strings(&["host-one"])))
        }
        other => panic!("expected a cold release, got {other:?}"),
    }
}

// ---- policies ----

#[test]
fn fail_closed_pods_are_never_released_cold() {
    let v = view(0.0, vec![node("n1", "apps", &[], Some(10))]);
    let cfg = GateConfig {
        policy: TimeoutPolicy::FailClosed,
        ..GateConfig::default()
    };
    match decide(&pod(&[APP]), &v, &cfg, t(1.0)).decision {
        Decision::Wait {
            candidates,
            estimate,
            ..
        } => {
            assert_eq!(candidates, strings(&["n1"]));
            assert_eq!(estimate, None);
        }
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn no_connected_eligible_node_waits_without_an_estimate() {
    let mut v = view(0.0, vec![node("n1", "apps", &[], Some(10))]);
    v.disconnect("n1");
    match decide(&pod(&[APP]), &v, &GateConfig::default(), t(1.0)).decision {
        Decision::Wait {
            candidates,
            estimate,
            ..
        } => assert_eq!((candidates, estimate), (vec![], None)),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn a_pod_held_for_a_moving_pull_still_times_out_exactly_at_the_timeout() {
    let cfg = GateConfig::default();
    // Slow but moving: reported a second before each decision.
    let v = |at| {
        view(
            at,
            vec![node("n1", "apps", &[(APP, St::Pulling(90, 100))], Some(10))],
        )
    };
    let p = pod(&[APP]);
    match decide(&p, &v(598.0), &cfg, t(599.0)).decision {
        Decision::Wait {
            waited,
            estimate: Some(e),
            ..
        } => assert_eq!((waited, e.hold_wins), (s(599.0), true)),
        other => panic!("expected a hold, got {other:?}"),
    }
    assert_eq!(
        decide(&p, &v(599.0), &cfg, t(600.0)).decision,
        Decision::ReleaseUnwarmed {
            patch: ungate_patch(&p),
            reason: format!(
                "no eligible node warm for images {APP} after 10m0s; released unwarmed (fail-open)"
            ),
            timed_out: true,
        }
    );
}

#[test]
fn a_held_pod_created_in_the_future_has_waited_for_nothing() {
    let v = view(
        -61.0,
        vec![node("n1", "apps", &[(APP, St::Pulling(90, 100))], Some(10))],
    );
    match decide(&pod(&[APP]), &v, &GateConfig::default(), t(-60.0)).decision {
        Decision::Wait {
            waited,
            estimate: Some(_),
            ..
        } => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a hold, got {other:?}"),
    }
}

#[test]
fn a_held_pod_warms_on_every_eligible_node() {
    // Eligible: n1 (pulling) and n2 in pool apps, not n3 in batch.
    let v = view(
        29.0,
        vec![
            node(
                "n1",
                "apps",
                &[(SIDE, St::Warm), (APP, St::Pulling(90, 100))],
                None,
            ),
            node("n2", "apps", &[], None),
            node("n3", "batch", &[(APP, St::Warm), (SIDE, St::Warm)], None),
        ],
    );
    match decide(&pod(&[APP, SIDE]), &v, &GateConfig::default(), t(30.0)).decision {
        Decision::Wait {
            candidates,
            images,
            timeout,
            estimate: Some(e),
            ..
        } => {
            assert_eq!(candidates, strings(&["n1", "n2"]));
            assert_eq!(images, strings(&[APP, SIDE]));
            assert_eq!(timeout, Duration::from_secs(600));
            assert_eq!(e.hold.map(|h| h.0), Some("n1".to_string()));
        }
        other => panic!("expected a hold, got {other:?}"),
    }
}
