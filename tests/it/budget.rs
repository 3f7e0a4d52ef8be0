//! The registry budget end to end on loopback: the real coordinator with
//! its budget loop, and agents' real link ends (simulated node reports)
//! over TLS. Two nodes that cannot pull at once inside the budget are
//! scheduled one after the other, one that cannot make it is reported late
//! before its window, and agents whose coordinator goes away drop their
//! schedules (falling back to their jittered local plans).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prewarm::agent::link::{self, LinkConfig, NodeReport};
use prewarm::coordinator::budget::{self, BudgetOptions};
use prewarm::plan::registry_budget::{Budgets, PlanOptions, RegistryBudget};
use prewarm::wire::v1::{IntentSet, PullSchedule, WindowState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::{serving_certificate, tls_coordinator, wait_for};

const MB: u64 = 1_000_000;
const REGISTRY: &str = "registry.example:5000";

/// A report of one window opening at `deadline` (unix) with `mb` MB still
/// missing from [`REGISTRY`], on a node that pulls 100 MB/s alone.
fn report(deadline: i64, mb: u64) -> NodeReport {
    let w = WindowState {
        name: "erp".into(),
        phase: "idle".into(),
        next_activation_unix: deadline,
        warm: false,
        source: "config".into(),
        missing: [(REGISTRY.to_string(), mb * MB)].into(),
    };
    NodeReport {
        windows: [("erp".to_string(), w)].into(),
        pin_supported: true,
        throughput_bytes_per_second: Some((100 * MB) as f64),
        ..Default::default()
    }
}

fn schedule(rx: &watch::Receiver<IntentSet>) -> Option<PullSchedule> {
    rx.borrow().schedules.first().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_budget_serializes_nodes_reports_late_ones_and_agents_fall_back() {
    let certs = serving_certificate();
    let d = certs.path();
    let coordinator_cancel = CancellationToken::new();
    let agents_cancel = CancellationToken::new();
    let coord = tls_coordinator(d, None, &coordinator_cancel).await;
    // 10 MB/s and one node at a time: 1 GB takes 100 s, so two cannot
    // share the registry; both can still finish within 1000 s.
    let opts = BudgetOptions {
        budgets: Budgets {
            registries: vec![RegistryBudget {
                host: REGISTRY.into(),
                bytes_per_sec: 10 * MB,
                max_nodes: 1,
            }],
        },
        plan: PlanOptions {
            default_node_rate: (25 * MB) as f64,
            safety_factor: 1.0,
            min_lead: Duration::ZERO,
        },
        tick: Duration::from_millis(200),
    };
    tokio::spawn(budget::run(
        coord.state.clone(),
        opts,
        coordinator_cancel.clone(),
    ));
    let now = Utc::now().timestamp();
    let nodes = [
        ("node-a", "tok-a", report(now + 1000, 1000)),
        ("node-b", "tok-b", report(now + 1000, 1000)),
        // 3 GB by 250 s at 10 MB/s: late whatever the plan.
        ("node-c", "tok-c", report(now + 250, 3000)),
    ];
    let mut intents = Vec::new();
    for (node, token, r) in nodes {
        let token_file = d.join(format!("{node}.token"));
        std::fs::write(&token_file, token).unwrap();
        let (tx, rx) = watch::channel(Arc::new(r));
        let (itx, irx) = watch::channel(IntentSet::default());
        let cfg = LinkConfig {
            endpoint: format!("https://127.0.0.1:{}", coord.grpc_addr.port()),
            token_file,
            ca_file: Some(d.join("ca.crt")),
            node: node.into(),
        };
        let c = agents_cancel.clone();
        tokio::spawn(async move {
            let _keep = tx;
            link::run(cfg, rx, itx, c).await;
        });
        intents.push(irx);
    }
    wait_for("every agent scheduled", 60, || {
        intents.iter().all(|rx| schedule(rx).is_some())
    })
    .await;
    let [a, b, c] = [0, 1, 2].map(|i| schedule(&intents[i]).unwrap());
    for s in [&a, &b, &c] {
        assert_eq!((s.window.as_str(), s.registry.as_str()), ("erp", REGISTRY));
    }
    // The second starts once the first is predicted to be done
    // (1 GB at the 10 MB/s cap), and still makes its window.
    let (first, second) = if a.start_unix <= b.start_unix {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(first.bytes_per_second, 10 * MB, "{first:?}");
    assert!(
        second.start_unix >= first.start_unix + 100,
        "{first:?} then {second:?}"
    );
    assert!(second.start_unix + 100 <= now + 1000, "{second:?}");
    assert!(!a.late && !b.late, "{a:?} {b:?}");
    // node-c is reported late, before its window opens.
    assert!(c.late, "{c:?}");
    let late = "prewarm_coordinator_budget_late_nodes{registry=\"registry.example:5000\",window=\"erp\"} 1";
    let metrics = coord.state.metrics.render();
    assert!(metrics.lines().any(|l| l == late), "{metrics}");
    assert!(
        Utc::now().timestamp() < c.deadline_unix,
        "reported only after the window"
    );

    // The coordinator goes away: every agent drops its schedules (its
    // reconcile loop then plans from its own, jittered, plan).
    coordinator_cancel.cancel();
    wait_for("schedules dropped", 30, || {
        intents.iter().all(|rx| rx.borrow().schedules.is_empty())
    })
    .await;
    agents_cancel.cancel();
    coord.join().await;
}
