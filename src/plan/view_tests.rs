//! Tests of the cluster view.

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn img(name: &str, phase: Phase, done: u64, total: u64) -> ImageState {
    ImageState {
        name: name.into(),
        phase: phase as i32,
        pinned: phase == Phase::Warm,
        bytes_done: done,
        bytes_total: total,
        error: String::new(),
    }
}

fn snap(node: &str, pool: &str, images: Vec<ImageState>) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [(POOL_LABEL.to_string(), pool.to_string())]
            .into_iter()
            .collect(),
        images,
        seq: 1,
        pin_supported: true,
        ..Default::default()
    }
}

#[test]
fn snapshot_then_deltas() {
    let mut v = ClusterView::default();
    v.apply_snapshot(
        snap(
            "n1",
            "integrations",
            vec![img("r/a:1", Phase::Pulling, 10, 100)],
        ),
        t(0),
    );
    assert!(!v.node("n1").unwrap().is_warm("r/a:1"));
    let d = Delta {
        seq: 2,
        upserted: vec![img("r/a:1", Phase::Warm, 100, 100)],
        ..Default::default()
    };
    v.apply_delta("n1", d, t(1)).unwrap();
    assert!(v.node("n1").unwrap().is_warm("r/a:1"));
    let stale = Delta {
        seq: 2,
        ..Default::default()
    };
    assert_eq!(
        v.apply_delta("n1", stale, t(2)),
        Err(ViewError::OutOfOrder {
            node: "n1".into(),
            got: 2,
            last: 2
        })
    );
    assert_eq!(
        v.apply_delta("n9", Delta::default(), t(2)),
        Err(ViewError::NoSnapshot("n9".into()))
    );
    let rm = Delta {
        seq: 3,
        removed: vec!["r/a:1".into()],
        ..Default::default()
    };
    v.apply_delta("n1", rm, t(3)).unwrap();
    assert!(v.node("n1").unwrap().images.is_empty());
}

#[test]
fn restart_rebuilds_from_snapshots() {
    let mut v = ClusterView::default();
    v.apply_snapshot(snap("n1", "p", vec![img("r/a:1", Phase::Warm, 5, 5)]), t(0));
    v.disconnect("n1");
    assert_eq!(v.connected(), 0);
    assert!(v.node("n1").unwrap().is_warm("r/a:1"), "last state is kept");
    // A reconnecting agent restarts its sequence with a new snapshot.
    v.apply_snapshot(snap("n1", "p", vec![]), t(5));
    assert_eq!(v.connected(), 1);
    assert!(v.node("n1").unwrap().images.is_empty());
}

#[test]
fn image_by_pool_table() {
    let mut v = ClusterView::default();
    v.apply_snapshot(
        snap(
            "n1",
            "integrations",
            vec![img("r/a:1", Phase::Warm, 100, 100)],
        ),
        t(0),
    );
    v.apply_snapshot(
        snap(
            "n2",
            "integrations",
            vec![img("r/a:1", Phase::Pulling, 40, 100)],
        ),
        t(0),
    );
    v.apply_snapshot(snap("n3", "integrations", vec![]), t(0));
    v.apply_snapshot(snap("s1", "system", vec![]), t(0));
    let row = |warm, nodes, pulling, pending, pool: &str| ImagePoolRow {
        image: "r/a:1".into(),
        pool: pool.into(),
        warm_nodes: warm,
        nodes,
        pulling_nodes: pulling,
        bytes_pending: pending,
    };
    assert_eq!(
        v.image_pools(&[], t(9)),
        vec![row(1, 2, 1, 60, "integrations")]
    );
    // Deltas and re-snapshots keep the counts exact.
    let d = Delta {
        seq: 2,
        upserted: vec![img("r/a:1", Phase::Warm, 100, 100)],
        ..Default::default()
    };
    v.apply_delta("n2", d, t(1)).unwrap();
    assert_eq!(
        v.image_pools(&[], t(9)),
        vec![row(2, 2, 0, 0, "integrations")]
    );
    v.apply_snapshot(snap("n1", "integrations", vec![]), t(2));
    assert_eq!(
        v.image_pools(&[], t(9)),
        vec![row(1, 1, 0, 0, "integrations")]
    );
    let moved = Delta {
        seq: 3,
        labels: [(POOL_LABEL.to_string(), "batch".to_string())]
            .into_iter()
            .collect(),
        labels_changed: true,
        ..Default::default()
    };
    v.apply_delta("n2", moved, t(3)).unwrap();
    assert_eq!(v.image_pools(&[], t(9)), vec![row(1, 1, 0, 0, "batch")]);
    let gone = Delta {
        seq: 4,
        removed: vec!["r/a:1".into()],
        ..Default::default()
    };
    v.apply_delta("n2", gone, t(4)).unwrap();
    assert!(v.image_pools(&[], t(9)).is_empty());
}

#[test]
fn disconnected_nodes_leave_the_table_until_they_resync() {
    let mut v = ClusterView::default();
    let warm = || vec![img("r/a:1", Phase::Warm, 5, 5)];
    v.apply_snapshot(snap("n1", "p", warm()), t(0));
    v.apply_snapshot(snap("n2", "p", warm()), t(0));
    assert_eq!(v.image_pools(&[], t(1))[0].nodes, 2);
    v.disconnect("n2");
    v.disconnect("n2");
    let rows = v.image_pools(&[], t(1));
    assert_eq!((rows[0].warm_nodes, rows[0].nodes), (1, 1));
    // A resync counts it again, once; so does a delta (a stale stream).
    v.apply_snapshot(snap("n2", "p", warm()), t(2));
    assert_eq!(v.image_pools(&[], t(2))[0].nodes, 2);
    v.disconnect("n1");
    let d = Delta {
        seq: 2,
        free_disk_bytes: Some(1),
        ..Default::default()
    };
    v.apply_delta("n1", d, t(3)).unwrap();
    let rows = v.image_pools(&[], t(3));
    assert_eq!((rows[0].warm_nodes, rows[0].nodes), (2, 2));
    v.disconnect("n1");
    v.disconnect("n2");
    assert!(v.image_pools(&[], t(4)).is_empty());
}

#[test]
fn nodes_an_intent_targets_count_before_they_report() {
    let mut v = ClusterView::default();
    let a = "docker.io/library/nginx:1.25";
    v.apply_snapshot(snap("n1", "p", vec![img(a, Phase::Warm, 5, 5)]), t(0));
    v.apply_snapshot(snap("n2", "p", vec![]), t(0));
    v.apply_snapshot(snap("n3", "q", vec![]), t(0));
    v.apply_snapshot(snap("n4", "p", vec![]), t(0));
    v.disconnect("n4");
    let intent = |id: &str, nodes: &[&str], deadline: i64| Intent {
        id: id.into(),
        // As the pod spec names it; agents report the CRI name.
        images: vec!["nginx:1.25".into(), "Bad Ref".into()],
        deadline_unix: deadline,
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let row = |pool: &str, warm, nodes| ImagePoolRow {
        image: a.into(),
        pool: pool.into(),
        warm_nodes: warm,
        nodes,
        pulling_nodes: 0,
        bytes_pending: 0,
    };
    // Two intents name n2 (counted once); n4 is not linked.
    let intents = [
        intent("x", &["n1", "n2", "n4"], 0),
        intent("y", &["n2"], t(100).timestamp()),
    ];
    assert_eq!(v.image_pools(&intents, t(10)), vec![row("p", 1, 2)]);
    // By selector (no node names): every matching linked node.
    let mut sel = intent("z", &[], 0);
    sel.node_selector
        .insert(POOL_LABEL.to_string(), "q".to_string());
    assert_eq!(
        v.image_pools(&[sel], t(10)),
        vec![row("p", 1, 1), row("q", 0, 1)]
    );
    // An expired intent wants nothing.
    assert_eq!(
        v.image_pools(&[intent("y", &["n2"], t(5).timestamp())], t(10)),
        vec![row("p", 1, 1)]
    );
}

#[test]
fn progress_times_follow_moving_bytes_and_survive_a_reconnect() {
    let mut v = ClusterView::default();
    let pulling = |done| img("r/a:1", Phase::Pulling, done, 100);
    v.apply_snapshot(snap("n1", "p", vec![pulling(10)]), t(0));
    let at = |v: &ClusterView| v.node("n1").unwrap().progress_at("r/a:1");
    assert_eq!(at(&v), Some(t(0)), "first reported");
    let delta = |seq, images| Delta {
        seq,
        upserted: images,
        ..Default::default()
    };
    v.apply_delta("n1", delta(2, vec![pulling(40)]), t(3))
        .unwrap();
    assert_eq!(at(&v), Some(t(3)), "bytes moved");
    v.apply_delta("n1", delta(3, vec![pulling(40)]), t(9))
        .unwrap();
    assert_eq!(at(&v), Some(t(3)), "bytes stood still");
    // Reconnected with the same bytes: still standing since t(3).
    v.apply_snapshot(snap("n1", "p", vec![pulling(40)]), t(12));
    assert_eq!(at(&v), Some(t(3)));
    v.apply_delta("n1", delta(2, vec![img("r/a:1", Phase::Warm, 0, 0)]), t(13))
        .unwrap();
    assert_eq!(at(&v), None, "warm: not pulling");
    v.apply_delta("n1", delta(3, vec![pulling(0)]), t(14))
        .unwrap();
    assert_eq!(at(&v), Some(t(14)), "a new pull");
    let rm = Delta {
        seq: 4,
        removed: vec!["r/a:1".into()],
        ..Default::default()
    };
    v.apply_delta("n1", rm, t(15)).unwrap();
    assert_eq!(at(&v), None, "removed: no progress kept");
    assert!(v.node("n1").unwrap().images.is_empty());
}

#[test]
fn throughput_is_kept_from_snapshots_and_deltas_and_nonsense_is_unknown() {
    let mut v = ClusterView::default();
    let tp = |v: &ClusterView| v.node("n1").unwrap().throughput_bytes_per_second;
    v.apply_snapshot(snap("n1", "p", vec![]), t(0));
    assert_eq!(tp(&v), None, "not measured yet");
    let d = |seq, t: Option<f64>| Delta {
        seq,
        throughput_bytes_per_second: t,
        ..Default::default()
    };
    v.apply_delta("n1", d(2, Some(30e6)), t(1)).unwrap();
    assert_eq!(tp(&v), Some(30e6));
    v.apply_delta("n1", d(3, None), t(2)).unwrap();
    assert_eq!(tp(&v), Some(30e6), "a delta without it changes nothing");
    for bad in [f64::NAN, f64::INFINITY, 0.0, -5.0] {
        let mut s = snap("n2", "p", vec![]);
        s.throughput_bytes_per_second = Some(bad);
        v.apply_snapshot(s, t(3));
        assert_eq!(v.node("n2").unwrap().throughput_bytes_per_second, None);
    }
    let mut s = snap("n1", "p", vec![]);
    s.throughput_bytes_per_second = Some(50e6);
    v.apply_snapshot(s, t(4));
    assert_eq!(tp(&v), Some(50e6));
}

#[test]
fn lag_counts_connected_nodes_only() {
    let mut v = ClusterView::default();
    v.apply_snapshot(snap("n1", "p", vec![]), t(0));
    v.apply_snapshot(snap("n2", "p", vec![]), t(0));
    v.disconnect("n2");
    assert_eq!(v.report_lag(t(3)), vec![3.0]);
}

#[test]
fn forgotten_nodes_leave_the_records_and_the_counts() {
    use crate::plan::forget::{Retention, Why};
    let ret = Retention {
        silent_ttl: std::time::Duration::from_secs(60),
    };
    let facts = |n: &str| NodeFacts {
        name: n.into(),
        labels: Default::default(),
        taints: vec![],
        unschedulable: false,
        ready: true,
    };
    let mut v = ClusterView::default();
    let warm = || vec![img("r/a:1", Phase::Warm, 5, 5)];
    for n in ["n1", "n2", "n3"] {
        v.apply_snapshot(snap(n, "p", warm()), t(0));
    }
    // Before Nodes are listed, only the TTL applies.
    v.disconnect("n1");
    assert!(v.forget(&ret, t(30), None).is_empty());
    v.set_api_nodes([facts("n2"), facts("n3")]);
    // n1 is gone from the API and disconnected; n2 is connected.
    assert_eq!(
        v.forget(&ret, t(31), None),
        vec![("n1".into(), Why::Deleted)]
    );
    v.remove_api_node("n2");
    assert!(
        v.forget(&ret, t(32), None).is_empty(),
        "n2 still holds a stream"
    );
    v.disconnect("n2");
    assert_eq!(
        v.forget(&ret, t(33), Some("n3")),
        vec![],
        "only n3 looked at"
    );
    assert_eq!(
        v.forget(&ret, t(33), Some("n2")),
        vec![("n2".into(), Why::Deleted)]
    );
    v.disconnect("n3");
    assert!(v.forget(&ret, t(60), None).is_empty());
    assert_eq!(
        v.forget(&ret, t(61), None),
        vec![("n3".into(), Why::Silent)]
    );
    assert_eq!(v.nodes().count(), 0);
    assert!(v.image_pools(&[], t(61)).is_empty());
    assert!(v.reported.is_empty() && v.agg.is_empty());
    // A node that comes back is a new record.
    v.apply_snapshot(snap("n1", "p", warm()), t(70));
    assert_eq!(v.image_pools(&[], t(70))[0].nodes, 1);
}
