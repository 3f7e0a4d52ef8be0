//! Pins held past their intent, and what `prewarm status` lists, end to end
//! on loopback: the real coordinator, real agents on real containerd.

use std::time::Duration;

use prewarm::coordinator::Coordinator;
use prewarm::node::containerd::Containerd;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::wire::v1::Intent;
use tokio_util::sync::CancellationToken;

use crate::common::{Upstream, MIB};
use crate::link::{coordinator, real_agent, status, wait_for, wait_present};

const HOLD_LABEL: &str = "prewarm.dev/hold-until";

fn intent(id: &str, image: &str, nodes: &[&str]) -> Intent {
    Intent {
        id: id.into(),
        images: vec![image.to_string()],
        reason: "new_replica_set_incomplete".into(),
        priority: 10,
        deadline_unix: chrono::Utc::now().timestamp() + 3600,
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// Waits until every node in `nodes` reports `image` (in any phase): its
/// agent has reconciled with the intents that name it, and reported after.
async fn wait_reported(coord: &Coordinator, nodes: &[&str], image: &str) {
    let state = coord.state.clone();
    wait_for(&format!("{nodes:?} to report {image}"), 60, || {
        let v = state.view();
        nodes
            .iter()
            .all(|n| v.node(n).is_some_and(|r| r.images.contains_key(image)))
    })
    .await;
}

async fn pinned(store: &Containerd, image: &str) -> bool {
    store
        .image_status(image)
        .await
        .unwrap()
        .is_some_and(|i| i.pinned)
}

/// Two real agents warm a rollout intent; the rollout completes (the
/// intent ends). `prewarm status` must still list the image, warm on both
/// of the pool's nodes, and say what the table covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_intent_images_after_their_intents_end() {
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd_a = TestContainerd::start(Version::V2).await.unwrap();
    let ctd_b = TestContainerd::start(Version::V2).await.unwrap();
    let cancel = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &cancel).await;
    let endpoint = format!("http://{}", coord.grpc_addr);
    let dir = tempfile::tempdir().unwrap();
    let a = real_agent(
        &ctd_a,
        dir.path(),
        &endpoint,
        "node-a",
        "tok-a",
        "",
        &cancel,
    )
    .await;
    let b = real_agent(
        &ctd_b,
        dir.path(),
        &endpoint,
        "node-b",
        "tok-b",
        "",
        &cancel,
    )
    .await;
    let state = coord.state.clone();
    wait_for("both agents linked", 30, || state.view().connected() == 2).await;

    let image = up.image("shapes/docker");
    coord.set_intents(vec![intent(
        "Deployment/erp/orders-sync@1",
        &image,
        &["node-a", "node-b"],
    )]);
    let img = image.clone();
    wait_for("both nodes warm", 60, || {
        let v = state.view();
        ["node-a", "node-b"]
            .iter()
            .all(|n| v.node(n).is_some_and(|r| r.is_warm(&img)))
    })
    .await;

    // The rollout completes: its intent ends, another rollout starts.
    // Once both agents report the new one, they have dropped the old.
    let next = up.image("shapes/zstd");
    coord.set_intents(vec![intent(
        "Deployment/erp/invoice-export@1",
        &next,
        &["node-a", "node-b"],
    )]);
    wait_reported(&coord, &["node-a", "node-b"], &next).await;

    let text = status(coord.http_addr);
    assert!(text.contains("2 of 2 agents connected"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&image))
        .unwrap_or_else(|| panic!("the ended intent's image is not listed:\n{text}"));
    assert!(row.contains("integrations") && row.contains("2/2"), "{row}");
    assert!(
        text.contains("held after their intent"),
        "the table does not say what it covers:\n{text}"
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        a.join().await;
        b.join().await;
    })
    .await;
}

/// An intent's image stays pinned after the intent ends, through an agent
/// restart (the hold lives in a containerd label), and is unpinned once
/// the hold has passed; another image's hold is untouched.
async fn an_intent_pin_survives_the_intent_and_an_agent_restart(v: Version) {
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd = TestContainerd::start(v).await.unwrap();
    let cancel = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &cancel).await;
    let endpoint = format!("http://{}", coord.grpc_addr);
    let dir = tempfile::tempdir().unwrap();
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    let first = cancel.child_token();
    let agent = real_agent(&ctd, dir.path(), &endpoint, "node-a", "tok-a", "", &first).await;
    let state = coord.state.clone();
    wait_for("the agent linked", 30, || state.view().connected() == 1).await;

    let image = up.image("shapes/docker");
    let next = up.image("shapes/zstd");
    coord.set_intents(vec![intent("Gate/erp/orders-sync-0", &image, &["node-a"])]);
    wait_present(&store, &image, "the intent was not warmed").await;
    let img = image.clone();
    wait_for("node-a reported warm", 60, || {
        state.view().node("node-a").is_some_and(|n| n.is_warm(&img))
    })
    .await;
    assert!(
        pinned(&store, &image).await,
        "the intent's image is not pinned"
    );

    // The intent ends; the agent has acted on that once it reports `next`.
    coord.set_intents(vec![intent("Gate/erp/orders-sync-1", &next, &["node-a"])]);
    wait_reported(&coord, &["node-a"], &next).await;
    assert!(
        pinned(&store, &image).await,
        "unpinned the moment its intent ended"
    );
    let now = chrono::Utc::now();
    let st = store.image_status(&image).await.unwrap().unwrap();
    let records = store.records_for(&st).await.unwrap();
    assert!(records.len() >= 3, "{records:?}");
    for r in &records {
        let until = r
            .labels
            .get(HOLD_LABEL)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .unwrap_or_else(|| panic!("no hold label on {}: {:?}", r.name, r.labels));
        let left = until.signed_duration_since(now).num_seconds();
        // The default hold is 15m, renewed before less than that is left.
        assert!((14 * 60..=23 * 60).contains(&left), "{}: {left}s", r.name);
    }
    wait_present(&store, &next, "the second intent was not warmed").await;
    let nxt = next.clone();
    wait_for("node-a reported the second image warm", 60, || {
        state.view().node("node-a").is_some_and(|n| n.is_warm(&nxt))
    })
    .await;
    coord.set_intents(vec![]);

    // Restart the agent: it keeps nothing but what containerd holds.
    first.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
    wait_for("node-a unlinked", 30, || {
        state.view().node("node-a").is_some_and(|n| !n.connected)
    })
    .await;
    let agent = real_agent(&ctd, dir.path(), &endpoint, "node-a", "tok-a", "", &cancel).await;
    // It links only after its first reconcile has acted.
    wait_for("node-a linked again", 30, || state.view().connected() == 1).await;
    assert!(
        pinned(&store, &image).await,
        "a restarted agent dropped the hold"
    );
    assert!(pinned(&store, &next).await);

    // The hold passes (as containerd records it): the pin goes, the image stays.
    for r in store.records_for(&st).await.unwrap() {
        store
            .set_labels(&r.name, &[(HOLD_LABEL, Some("2000-01-01T00:00:00Z"))])
            .await
            .unwrap();
    }
    for _ in 0..300 {
        if !pinned(&store, &image).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = store.image_status(&image).await.unwrap();
    let after = after.expect("unpinned images are never deleted");
    assert!(!after.pinned, "not unpinned once the hold had passed");
    for r in store.records_for(&after).await.unwrap() {
        assert!(
            !r.labels.keys().any(|k| k.starts_with("prewarm.dev/")),
            "{}: {:?}",
            r.name,
            r.labels
        );
    }
    assert!(pinned(&store, &next).await, "another image's hold was lost");
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
}
crate::on_both!(an_intent_pin_survives_the_intent_and_an_agent_restart);
