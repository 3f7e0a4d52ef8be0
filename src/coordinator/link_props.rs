//! Property tests of the coordinator's handling of agent reports: any
//! snapshot or delta is either refused with an error naming its field, or
//! applied without corrupting the view (its image × pool counts always
//! equal a count from scratch over the connected nodes' records).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::{validate_delta, validate_snapshot};
use crate::plan::view::{ClusterView, ImagePoolRow, POOL_LABEL};
use crate::wire::v1::{image_state::Phase, Delta, ImageState, Snapshot, Taint, WindowState};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&["r/a:1", "r/b:1", "r/c:1"][..]).prop_map(str::to_string),
        1 => "[a-z]{1,3}(/[a-z]{1,3})?:[0-9]",
        1 => Just(String::new()),
        1 => "\\PC{0,40}",
        1 => (1_020usize..1_030).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1_000,
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        any::<u64>()
    ]
}

fn image() -> impl Strategy<Value = ImageState> {
    (
        text(),
        0i32..5,
        any::<bool>(),
        number(),
        number(),
        "\\PC{0,8}",
    )
        .prop_map(
            |(name, phase, pinned, bytes_done, bytes_total, error)| ImageState {
                name,
                phase,
                pinned,
                bytes_done,
                bytes_total,
                error,
            },
        )
}

fn labels() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
    prop::collection::hash_map(
        prop_oneof![Just(POOL_LABEL.to_string()), text()],
        prop_oneof![Just("p1".to_string()), Just("p2".to_string()), text()],
        0..3,
    )
}

fn throughput() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![
        Just(f64::NAN),
        Just(-1.0),
        Just(0.0),
        1.0f64..1e9,
        any::<f64>()
    ])
}

fn window() -> impl Strategy<Value = WindowState> {
    (text(), text(), any::<i64>(), any::<bool>()).prop_map(|(name, phase, next, warm)| {
        WindowState {
            name,
            phase,
            next_activation_unix: next,
            warm,
            source: String::new(),
            missing: Default::default(),
        }
    })
}

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        prop_oneof![4 => prop::sample::select(&NODES[..]).prop_map(str::to_string), 1 => text()],
        labels(),
        prop::collection::vec((text(), text(), text()), 0..2),
        prop::collection::vec(image(), 0..6),
        prop::collection::vec(window(), 0..2),
        number(),
        any::<bool>(),
        number(),
        throughput(),
    )
        .prop_map(
            |(node, labels, taints, images, windows, free, pin, seq, tp)| Snapshot {
                node,
                labels,
                taints: taints
                    .into_iter()
                    .map(|(key, value, effect)| Taint { key, value, effect })
                    .collect(),
                images,
                windows,
                free_disk_bytes: free,
                pin_supported: pin,
                seq,
                throughput_bytes_per_second: tp,
            },
        )
}

fn delta() -> impl Strategy<Value = Delta> {
    (
        number(),
        prop::collection::vec(image(), 0..4),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(window(), 0..2),
        prop::option::of(number()),
        labels(),
        any::<bool>(),
        throughput(),
    )
        .prop_map(
            |(seq, upserted, removed, windows, free, labels, changed, tp)| Delta {
                seq,
                upserted,
                removed,
                windows,
                free_disk_bytes: free,
                labels,
                labels_changed: changed,
                throughput_bytes_per_second: tp,
            },
        )
}

#[derive(Debug, Clone)]
enum Report {
    Snapshot(Snapshot),
    Delta(usize, Delta),
    Disconnect(usize),
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        2 => snapshot().prop_map(Report::Snapshot),
        3 => (0..NODES.len(), delta()).prop_map(|(n, d)| Report::Delta(n, d)),
        1 => (0..NODES.len()).prop_map(Report::Disconnect),
    ]
}

/// The image × pool rows counted from scratch over connected records.
fn recount(v: &ClusterView) -> Vec<ImagePoolRow> {
    let mut rows: BTreeMap<(String, String), ImagePoolRow> = BTreeMap::new();
    let mut pending: BTreeMap<(String, String), u128> = BTreeMap::new();
    for rec in v.nodes().filter(|r| r.connected) {
        for (name, i) in rec.images.iter() {
            let key = (name.to_string(), rec.pool().to_string());
            let row = rows.entry(key.clone()).or_insert_with(|| ImagePoolRow {
                image: key.0.clone(),
                pool: key.1.clone(),
                warm_nodes: 0,
                nodes: 0,
                pulling_nodes: 0,
                bytes_pending: 0,
            });
            row.nodes += 1;
            if i.phase == Phase::Warm as i32 {
                row.warm_nodes += 1;
            } else {
                row.pulling_nodes += (i.phase == Phase::Pulling as i32) as usize;
                *pending.entry(key).or_default() +=
                    i.bytes_total.saturating_sub(i.bytes_done) as u128;
            }
        }
    }
    for (k, p) in pending {
        if let Some(r) = rows.get_mut(&k) {
            r.bytes_pending = u64::try_from(p).unwrap_or(u64::MAX);
        }
    }
    rows.into_values().collect()
}

/// A refusal names the message and a field of it.
fn names_a_field(msg: &str, e: &str) {
    let fields = [
        "node",
        "images",
        "windows",
        "labels",
        "taints",
        "upserted",
        "removed",
        "throughput_bytes_per_second",
    ];
    assert!(e.starts_with(&format!("{msg}.")), "{e}");
    let field = e[msg.len() + 1..]
        .split(['[', ':', ' ', '.'])
        .next()
        .unwrap_or_default();
    assert!(fields.contains(&field), "{e}");
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reports_are_refused_by_field_or_keep_the_view_exact(reports in prop::collection::vec(report(), 1..12)) {
        let mut v = ClusterView::default();
        for r in reports {
            match r {
                Report::Snapshot(s) => match validate_snapshot(&s) {
                    Ok(()) => v.apply_snapshot(s, now()),
                    Err(e) => names_a_field("snapshot", &e),
                },
                Report::Delta(n, d) => match validate_delta(&d) {
                    // Out of order or before a snapshot: refused, view unchanged.
                    Ok(()) => { let _ = v.apply_delta(NODES[n], d, now()); }
                    Err(e) => names_a_field("delta", &e),
                },
                Report::Disconnect(n) => v.disconnect(NODES[n]),
            }
            prop_assert_eq!(v.image_pools(&[], now()), recount(&v));
        }
    }
}
