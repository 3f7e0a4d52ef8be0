//! Holding for a warming node, and cold-faster releases: a pod is held
//! while a node pulling its images is predicted warm sooner than a cold
//! start; a pod nothing is warming for goes at once, and a pod held for a
//! pull that stalls goes as soon as the stall shows.

use super::*;

/// `s` pulling `image` at 10 MiB/s, 90 of 100 MiB done: warm in about
/// 1 s against a 10 s cold start, so worth holding for.
pub(super) fn pulling(mut s: Snapshot, image: &str) -> Snapshot {
    s.images.push(ImageState {
        name: image.into(),
        phase: Phase::Pulling as i32,
        bytes_done: 90 << 20,
        bytes_total: 100 << 20,
        ..Default::default()
    });
    s.throughput_bytes_per_second = Some((10u64 << 20) as f64);
    s
}

#[tokio::test]
async fn a_pod_held_for_a_pulling_node_waits_with_an_urgent_intent_until_a_node_warms() {
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![
            snap("n1", "apps", &[]),
            pulling(snap("n2", "apps", &[]), APP),
            snap("n3", "batch", &[APP]),
            snap("n4", "apps", &[SIDECAR]),
        ],
    );
    let before = Utc::now().timestamp();
    h.api
        .put(PODS, app_pod(json!({"nodeSelector": {POOL_LABEL: "apps"}})));
    let intents = h.wait_intents(|i| !i.is_empty()).await;
    let after = Utc::now().timestamp();
    assert_eq!(intents.len(), 1, "{intents:#?}");
    let i = &intents[0];
    assert_eq!(
        i.id,
        format!(
            "Gate/erp/ReplicaSet/app-7d9@{}",
            images_hash(&[APP.to_string()])
        )
    );
    assert_eq!(i.images, vec![APP.to_string()]);
    assert_eq!(i.reason, INTENT_REASON);
    assert_eq!(i.reason, "gated-pods");
    assert_eq!(i.priority, 1000);
    // Eligible candidates by node name: the apps pool, not n3 in batch.
    assert_eq!(i.nodes, vec!["n1", "n2", "n4"]);
    assert!(i.node_selector.is_empty());
    assert!(
        (before + 900..=after + 900).contains(&i.deadline_unix),
        "deadline {} not in {}..={}",
        i.deadline_unix,
        before + 900,
        after + 900
    );
    h.assert_no_writes().await;
    assert!(h.pod("erp", "app-7d9-a")["spec"].get("affinity").is_none());

    h.view(|v| v.apply_snapshot(snap("n2", "apps", &[APP]), Utc::now()));
    let ps = h.wait_patches(1).await;
    assert_eq!(ps.len(), 1);
    assert_patch(&ps[0], "erp", "app-7d9-a", &release_ops(0, &["host-n2"]));
    let pod = h.pod("erp", "app-7d9-a");
    assert_eq!(pod["spec"]["schedulingGates"], json!([]));
    assert_eq!(pod["spec"]["affinity"], narrowed_affinity(&["host-n2"]));
    h.wait_intents(|i| i.is_empty()).await;
    h.assert_quiet_after(1).await;
    h.stop().await;
}

const COLD_FASTER: &str = "WarmGateColdFaster";

/// A Normal Event about the pod with this reason; returns its message.
fn normal_event(r: &Recorded, ns: &str, name: &str, reason: &str) -> String {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/api/v1/namespaces/{ns}/events"));
    let b = r.body.as_ref().expect("event body");
    assert_eq!(b["type"], "Normal");
    assert_eq!(b["reason"], reason);
    assert_eq!(b["involvedObject"]["name"], name);
    b["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn a_pod_nothing_is_pulling_for_is_released_cold_at_once_without_an_intent() {
    // n3 (another pool) pulls the image: it tells its size, 100 MiB, which
    // n1 would pull at the default 25 MiB/s.
    let mut other = pulling(snap("n3", "batch", &[]), APP);
    other.images[0].bytes_done = 10 << 20;
    let h = Harness::start(
        opts(Duration::from_secs(600)),
        true,
        vec![
            snap("n1", "apps", &[]),
            snap("n2", "apps", &[SIDECAR]),
            other,
        ],
    );
    let intents = h.state.intents.subscribe();
    h.api.put(
        PODS,
        app_pod(json!({"nodeSelector": {POOL_LABEL: "apps"},
                "schedulingGates": [{"name": GATE}, {"name": "example.com/quota"}]})),
    );
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "app-7d9-a", &Value::Array(ungate_ops(0)));
    let pod = h.pod("erp", "app-7d9-a");
    assert_eq!(
        pod["spec"]["schedulingGates"],
        json!([{"name": "example.com/quota"}])
    );
    assert!(
        pod["spec"].get("affinity").is_none(),
        "not narrowed: {pod:#}"
    );
    let ev = h.wait_event(COLD_FASTER).await;
    assert_eq!(
        normal_event(&ev, "erp", "app-7d9-a", COLD_FASTER),
        format!(
            "no eligible node warm for images {APP}: no eligible node is pulling them; \
             a cold start (about 4.0s on n1) is sooner than warming first; released unwarmed"
        )
    );
    h.assert_quiet_after(2).await;
    // Never an urgent intent: no agent competes with the kubelet's pull.
    assert!(!intents.has_changed().unwrap(), "intents were published");
    let m = &h.state.metrics;
    assert_eq!(m.gate_released.with_label_values(&["cold_faster"]).get(), 1);
    assert_eq!(m.gate_released.with_label_values(&["unwarmed"]).get(), 0);
    assert_eq!(m.gate_timeouts.with_label_values(&["fail-open"]).get(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_held_pod_whose_pull_stalls_is_released_cold_without_any_view_change() {
    let mut o = opts(Duration::from_secs(600));
    o.cfg.estimate.stall_after = Duration::from_secs(1);
    let h = Harness::start(o, true, vec![pulling(snap("n1", "apps", &[]), APP)]);
    h.api.put(PODS, app_pod(json!({})));
    // Held for n1 first, warming it urgently.
    let held = h.wait_intents(|i| !i.is_empty()).await;
    assert_eq!(held[0].nodes, vec!["n1"]);
    assert!(
        patches(&h.api.requests()).is_empty(),
        "released before the stall"
    );
    // n1 never reports again: only the gate's own re-evaluation can see it.
    let ps = h.wait_patches(1).await;
    assert_patch(&ps[0], "erp", "app-7d9-a", &Value::Array(ungate_ops(0)));
    let ev = h.wait_event(COLD_FASTER).await;
    let message = normal_event(&ev, "erp", "app-7d9-a", COLD_FASTER);
    let head = format!(
        "no eligible node warm for images {APP}: the pull of {APP} on n1 has not moved for "
    );
    let tail = "s; a cold start (about 10.0s on n1) is sooner than waiting; released unwarmed";
    let still: f64 = message
        .strip_prefix(&head)
        .and_then(|m| m.strip_suffix(tail))
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    assert!(still >= 1.0, "released after {still}s without progress");
    h.wait_intents(|i| i.is_empty()).await;
    h.assert_quiet_after(2).await;
    let m = &h.state.metrics;
    assert_eq!(m.gate_released.with_label_values(&["cold_faster"]).get(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_pod_released_cold_is_kept_off_nodes_already_pulling_its_image() {
    // n1 has just started: waiting for it does not pay, and a kubelet
    // there would download the image again beside its agent.
    let mut early = pulling(snap("n1", "apps", &[]), APP);
    early.images[0].bytes_done = 10 << 20;
    let mut free = snap("n2", "apps", &[]);
    free.throughput_bytes_per_second = Some((10u64 << 20) as f64);
    let h = Harness::start(opts(Duration::from_secs(600)), true, vec![early, free]);
    let intents = h.state.intents.subscribe();
    h.api.put(PODS, app_pod(json!({})));
    let ps = h.wait_patches(1).await;
    let not_in = json!({"key": HOSTNAME_LABEL, "operator": "NotIn", "values": ["host-n1"]});
    let mut ops = ungate_ops(0);
    ops.push(
        json!({"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [not_in]}]}}}}),
    );
    assert_patch(&ps[0], "erp", "app-7d9-a", &Value::Array(ops));
    let pod = h.pod("erp", "app-7d9-a");
    assert_eq!(pod["spec"]["schedulingGates"], json!([]));
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["operator"],
        "NotIn"
    );
    let ev = h.wait_event(COLD_FASTER).await;
    assert_eq!(
        normal_event(&ev, "erp", "app-7d9-a", COLD_FASTER),
        format!(
            "no eligible node warm for images {APP}: n1 would be warm in about 9.0s plus 0.5s \
             to release, not 20% sooner than a cold start (about 10.0s on n2); released \
             unwarmed, kept off nodes already pulling them: n1"
        )
    );
    h.assert_quiet_after(2).await;
    assert!(!intents.has_changed().unwrap(), "intents were published");
    let m = &h.state.metrics;
    assert_eq!(m.gate_released.with_label_values(&["cold_faster"]).get(), 1);
    h.stop().await;
}
