//! Activation windows per node pool, from what the connected agents
//! report: how many of a pool's nodes are in each phase of a window, how
//! many hold it warm, and its earliest next activation there. Feeds the
//! coordinator's window metrics (the agents' own metrics carry no pool).

use std::collections::BTreeMap;

use crate::plan::view::NodeRecord;

/// Phases an agent reports; anything else is counted as `unknown`, so a
/// misbehaving agent cannot grow the metric's label set.
pub const PHASES: [&str; 6] = ["idle", "warming", "active", "late", "grace", "unknown"];

/// One window in one pool, over the connected nodes it applies to (agents
/// report only the windows whose selector matches their node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPoolRow {
    pub window: String,
    pub pool: String,
    /// Nodes per entry of [`PHASES`], in that order.
    pub phases: [usize; PHASES.len()],
    pub warm_nodes: usize,
    /// Earliest next activation the pool's nodes report (Unix seconds).
    pub next_activation_unix: i64,
}

impl WindowPoolRow {
    pub fn nodes(&self) -> usize {
        self.phases.iter().sum()
    }

    /// Share of the nodes that hold every image of the window.
    pub fn warm_fraction(&self) -> f64 {
        match self.nodes() {
            0 => 0.0,
            n => self.warm_nodes as f64 / n as f64,
        }
    }
}

fn phase_index(phase: &str) -> usize {
    PHASES
        .iter()
        .position(|p| *p == phase)
        .unwrap_or(PHASES.len() - 1)
}

/// Rows for every (window, pool) a connected node reports, sorted by
/// window then pool. Disconnected nodes' last states are left out.
pub fn window_pools<'a>(nodes: impl IntoIterator<Item = &'a NodeRecord>) -> Vec<WindowPoolRow> {
    let mut rows: BTreeMap<(String, String), WindowPoolRow> = BTreeMap::new();
    for rec in nodes.into_iter().filter(|r| r.connected) {
        for w in rec.windows.values() {
            let key = (w.name.clone(), rec.pool().to_string());
            let row = rows.entry(key).or_insert_with(|| WindowPoolRow {
                window: w.name.clone(),
                pool: rec.pool().to_string(),
                phases: [0; PHASES.len()],
                warm_nodes: 0,
                next_activation_unix: w.next_activation_unix,
            });
            row.phases[phase_index(&w.phase)] += 1;
            row.warm_nodes += usize::from(w.warm);
            row.next_activation_unix = row.next_activation_unix.min(w.next_activation_unix);
        }
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::view::{ClusterView, POOL_LABEL};
    use crate::wire::v1::{Snapshot, WindowState};
    use chrono::DateTime;

    // `..Default::default()` keeps this literal valid as WindowState gains
    // fields (the KEDA windows add `source`).
    #[allow(clippy::needless_update)]
    fn win(name: &str, phase: &str, next: i64, warm: bool) -> WindowState {
        WindowState {
            name: name.into(),
            phase: phase.into(),
            next_activation_unix: next,
            warm,
            ..Default::default()
        }
    }

    fn snap(node: &str, pool: &str, windows: Vec<WindowState>) -> Snapshot {
        Snapshot {
            node: node.into(),
            labels: [(POOL_LABEL.to_string(), pool.to_string())].into(),
            windows,
            seq: 1,
            ..Default::default()
        }
    }

    #[test]
    fn counts_phases_warmth_and_the_earliest_activation_per_pool() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut v = ClusterView::default();
        let w = |phase, next, warm| vec![win("erp", phase, next, warm)];
        v.apply_snapshot(snap("n1", "int", w("warming", 200, true)), now);
        v.apply_snapshot(snap("n2", "int", w("late", 100, false)), now);
        v.apply_snapshot(snap("n3", "int", w("bogus", 300, false)), now);
        v.apply_snapshot(snap("n4", "sys", w("active", 400, true)), now);
        v.apply_snapshot(snap("n5", "int", w("active", 50, true)), now);
        v.disconnect("n5");
        let rows = window_pools(v.nodes());
        assert_eq!(
            rows,
            vec![
                WindowPoolRow {
                    window: "erp".into(),
                    pool: "int".into(),
                    phases: [0, 1, 0, 1, 0, 1],
                    warm_nodes: 1,
                    next_activation_unix: 100,
                },
                WindowPoolRow {
                    window: "erp".into(),
                    pool: "sys".into(),
                    phases: [0, 0, 1, 0, 0, 0],
                    warm_nodes: 1,
                    next_activation_unix: 400,
                },
            ]
        );
        assert!((rows[0].warm_fraction() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(rows[1].warm_fraction(), 1.0);
    }

    #[test]
    fn no_connected_node_no_rows() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut v = ClusterView::default();
        v.apply_snapshot(snap("n1", "int", vec![win("erp", "idle", 1, false)]), now);
        v.disconnect("n1");
        assert!(window_pools(v.nodes()).is_empty());
    }
}
