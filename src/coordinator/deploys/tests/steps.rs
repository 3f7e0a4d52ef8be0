//! Adoption, a full step and failures.

use super::*;
use crate::wire::deploygroup::GroupPhase;

// ---- adoption ----

/// Unpaused members seen for the first time are paused once each, get a
/// Normal `Adopted` Event and their current templates become the baseline.
#[tokio::test]
async fn members_are_adopted_paused_with_their_templates_as_baseline() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, false));
    api.put(DEPLOYMENTS, deployment("billing", BILLING_1, false));
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders"}, {"deployment": "billing"}]),
            json!({}),
        ),
    );
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[])]);
    let st = wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    let (orders, billing) = (
        hash_of(&template("orders", ORDERS_1)),
        hash_of(&template("billing", BILLING_1)),
    );
    assert_eq!(
        st,
        json!({"phase": "Idle", "message": "idle: all 2 members deployed",
               "observedGeneration": 1,
               "deployed": {"orders": orders, "billing": billing}, "results": []})
    );
    // Settled: nothing more is written once both are paused.
    let more = api
        .wait_for(QUIET, |r| {
            r.iter().filter(|r| r.method != "GET").count() > 5
        })
        .await;
    assert!(!more, "writes after adoption: {:#?}", api.writes());

    let reqs = api.requests();
    assert_eq!(
        member_writes(&reqs),
        vec![pause("orders"), pause("billing")]
    );
    let ws: Vec<(String, String)> = api
        .writes()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let event = (
        "POST".to_string(),
        format!("/api/v1/namespaces/{NS}/events"),
    );
    assert_eq!(
        ws,
        vec![
            ("PATCH".to_string(), deployment_path("orders")),
            event.clone(),
            ("PATCH".to_string(), deployment_path("billing")),
            event,
            ("PATCH".to_string(), status_path(GROUP_NAME)),
        ]
    );
    let status_write = writes_to(&reqs, &status_path(GROUP_NAME)).remove(0);
    assert_eq!(status_write.content_type, JSON_PATCH);
    // Guarded by the resourceVersion the decision was made from.
    let body = status_write.body.unwrap();
    assert_eq!(body[0]["op"], "test");
    assert_eq!(body[0]["path"], "/metadata/resourceVersion");
    assert!(
        body[0]["value"].as_str().is_some_and(|v| !v.is_empty()),
        "{body}"
    );
    assert_eq!(
        body[1],
        json!({"op": "add", "path": "/status", "value": st})
    );
    assert_eq!(body.as_array().unwrap().len(), 2);
    let evs = events(&reqs, "Adopted");
    assert_eq!(evs.len(), 2, "{evs:#?}");
    for (e, (name, hash)) in evs.iter().zip([("orders", &orders), ("billing", &billing)]) {
        assert_eq!(e["type"], "Normal");
        assert_eq!(
            e["message"],
            format!("adopted {name} at template {hash} as its deployed baseline")
        );
        assert_eq!(
            e["involvedObject"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                   "namespace": NS, "uid": format!("uid-{name}")})
        );
    }
    for name in ["orders", "billing"] {
        let d = api.object(DEPLOYMENTS, NS, name).unwrap();
        assert_eq!(d["spec"]["paused"], true, "{name}");
    }
    // The coordinator's HTTP view has the group too.
    let rows = h.state.deploys.read().unwrap().clone();
    let row = &rows[&format!("{NS}/{GROUP_NAME}")];
    assert_eq!(row.members, vec!["orders", "billing"]);
    assert_eq!(row.status.phase, GroupPhase::Idle);
    assert!(h.state.intents.borrow().is_empty());
    h.stop().await;
}

// ---- a full step ----

/// A two-member group where only the first member changes: its new image
/// is warmed on the eligible nodes first (a warm intent, nothing unpaused
/// while cold), then its ScaledObject is paused, it is unpaused, rolls
/// out, passes its HTTP check, quiesces and is paused again with KEDA
/// resumed. The second member and its ScaledObject are never written.
#[tokio::test]
async fn a_changed_member_warms_rolls_validates_and_pauses_with_keda_paused() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(DEPLOYMENTS, deployment("billing", BILLING_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    api.put(SCALED, scaled_object(NS, "billing-so", "billing"));
    let ep = Endpoint::start(200).await;
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": ep.url, "interval": "200ms"}},
                   {"deployment": "billing"}]),
            json!({"quiesce": "1s"}),
        ),
    );
    roll_unpaused(&api);
    // n3 holds the new image but is in another pool: not eligible.
    let h = Harness::start(
        &api,
        true,
        vec![
            snap("n1", "apps", &[]),
            snap("n2", "apps", &[ORDERS_1]),
            snap("n3", "batch", &[ORDERS_2]),
        ],
    );
    wait_status(&api, GROUP_NAME, "adopted", |s| {
        s["deployed"].as_object().is_some_and(|d| d.len() == 2)
    })
    .await;
    assert!(member_writes(&api.requests()).is_empty());

    set_image(&api, "orders", ORDERS_2);
    let intents = h.wait_intents(|i| !i.is_empty()).await;
    assert_eq!(intents.len(), 1, "{intents:#?}");
    let i = &intents[0];
    assert_eq!(
        i.id,
        format!(
            "DeployGroup/{NS}/{GROUP_NAME}/orders@{}",
            images_hash(&[ORDERS_2.to_string()])
        )
    );
    assert_eq!(i.images, vec![ORDERS_2.to_string()]);
    assert_eq!(i.nodes, vec!["n1", "n2"]);
    assert_eq!(i.priority, 500);
    assert_eq!(i.reason, "deploy-group-step");
    let now = Utc::now().timestamp();
    assert!((now + 590..=now + 600).contains(&i.deadline_unix), "{i:?}");

    // Cold: the step waits in Warming; only KEDA is paused so far.
    let unpaused = api
        .wait_for(QUIET, |r| r.iter().any(|r| is_unpause_of(r, "orders")))
        .await;
    assert!(!unpaused, "unpaused while cold: {:#?}", api.writes());
    let st = status(&api, GROUP_NAME);
    assert_eq!(st["phase"], "Stepping", "{st:#}");
    assert_eq!(st["message"], "stepping orders: warming");
    assert_eq!(st["step"]["stage"], "Warming");
    assert_eq!(st["step"]["kedaPaused"], "orders-so");
    assert_eq!(
        member_writes(&api.requests()),
        vec![keda("orders-so", true)]
    );
    let step_started = st["step"]["started"].clone();

    h.report(snap("n2", "apps", &[ORDERS_2]));
    let st = wait_status(&api, GROUP_NAME, "the step succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await;

    let (h1, h2) = (
        hash_of(&template("orders", ORDERS_1)),
        hash_of(&template("orders", ORDERS_2)),
    );
    let billing = hash_of(&template("billing", BILLING_1));
    assert_eq!(st["phase"], "Idle", "{st:#}");
    assert_eq!(st["message"], "idle: all 2 members deployed");
    assert!(st.get("step").is_none(), "{st:#}");
    assert_eq!(st["deployed"], json!({"orders": h2, "billing": billing}));
    let r = result_of(&st, "orders");
    assert_eq!(st["results"].as_array().unwrap().len(), 1);
    assert_eq!(r["templateHash"], h2);
    assert_eq!(r["reason"], "ready; HTTP check passed");
    assert_eq!(r["started"], step_started);
    assert!(timestamp(&r["finished"]) > timestamp(&r["started"]));
    // Warming lasted at least the cold wait above.
    assert!(seconds(&r["warmSeconds"]) >= 1.4, "{r}");
    assert!(seconds(&r["rollSeconds"]) >= 0.0, "{r}");
    assert!(seconds(&r["validateSeconds"]) >= 0.0, "{r}");

    // Exactly these writes to orders and its ScaledObject, in this order.
    let reqs = api.requests();
    assert_eq!(
        member_writes(&reqs),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    let ws = writes_to(&reqs, &deployment_path("orders"));
    let (unpaused_at, paused_at) = (ws[0].at, ws[1].at);
    let hit = ep.first_hit().expect("the HTTP check ran");
    assert!(
        unpaused_at < hit && hit < paused_at,
        "check between the unpause and the pause"
    );
    assert!(
        paused_at.duration_since(hit) >= Duration::from_millis(950),
        "paused again only after the 1s quiesce"
    );
    assert!(ep.hits() >= 1);
    let so = api.object(SCALED, NS, "orders-so").unwrap();
    assert!(so["metadata"]
        .get("annotations")
        .is_none_or(|a| a.get(PAUSED_ANNOTATION).is_none()));
    let d = api.object(DEPLOYMENTS, NS, "orders").unwrap();
    assert_eq!(d["spec"]["paused"], true);
    let b = api.object(DEPLOYMENTS, NS, "billing").unwrap();
    assert_eq!(b["spec"]["paused"], true);
    assert_eq!(b["metadata"]["generation"], 1);

    assert_deployment_event(
        &api,
        "orders",
        false,
        "StepStarted",
        &format!("orders: stepping from template {h1} to {h2}"),
    );
    let done = events(&reqs, "StepSucceeded");
    assert_eq!(done.len(), 1, "{done:#?}");
    let message = done[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("orders: template {h2} deployed (warm ")),
        "{message}"
    );
    assert!(events(&reqs, "CheckFailed").is_empty());
    // The intent is withdrawn once warming ends.
    h.wait_intents(|i| i.is_empty()).await;
    let m = &h.state.metrics;
    let count = |result: &str| {
        m.deploy_steps
            .with_label_values(&[NS, GROUP_NAME, result])
            .get()
    };
    assert_eq!(count("succeeded"), 1);
    assert_eq!(count("failed"), 0);
    h.stop().await;
}

// ---- failures ----

/// An HTTP check that keeps failing past `validationTimeout` halts the
/// group: the member is paused, KEDA resumed, a Warning `StepFailed` names
/// the member and the failure, and a later changed member never starts.
#[tokio::test]
async fn a_failing_http_check_halts_the_group_and_later_members_wait() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(DEPLOYMENTS, deployment("billing", BILLING_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    let ep = Endpoint::start(503).await;
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": ep.url, "interval": "200ms"}},
                   {"deployment": "billing"}]),
            json!({"validationTimeout": "2s"}),
        ),
    );
    roll_unpaused(&api);
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[ORDERS_2, BILLING_2])]);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    set_image(&api, "billing", BILLING_2);

    let st = wait_status(&api, GROUP_NAME, "halted", |s| s["phase"] == "Halted").await;
    let url = &ep.url;
    let reason = format!(
        "validation timed out after 2s: HTTP check {url} failed: \
         GET {url}: HTTP 503 Service Unavailable"
    );
    assert_eq!(st["message"], format!("halted: orders: {reason}"));
    assert_eq!(st["halted"], "orders");
    assert!(st.get("step").is_none(), "{st:#}");
    let r = result_of(&st, "orders");
    assert_eq!(r["result"], "Failed");
    assert_eq!(r["reason"], reason);
    assert_eq!(r["templateHash"], hash_of(&template("orders", ORDERS_2)));
    assert!(seconds(&r["warmSeconds"]) >= 0.0, "{r}");
    assert!(seconds(&r["rollSeconds"]) >= 0.0, "{r}");
    // The baseline stays the old template.
    assert_eq!(
        st["deployed"]["orders"],
        hash_of(&template("orders", ORDERS_1))
    );
    assert!(ep.hits() >= 2, "the check is retried: {} hits", ep.hits());

    // Halted: billing, changed too, is never unpaused.
    let unpaused = api
        .wait_for(QUIET, |r| r.iter().any(|r| is_unpause_of(r, "billing")))
        .await;
    assert!(!unpaused, "billing unpaused: {:#?}", api.writes());
    let reqs = api.requests();
    assert_eq!(
        member_writes(&reqs),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    assert_deployment_event(
        &api,
        "orders",
        true,
        "StepFailed",
        &format!("orders: {reason}"),
    );
    assert_deployment_event(
        &api,
        "orders",
        true,
        "CheckFailed",
        &format!(
            "orders: HTTP check {url} failed: GET {url}: HTTP 503 Service Unavailable; retrying"
        ),
    );
    assert!(events(&reqs, "StepStarted")
        .iter()
        .all(|e| e["involvedObject"]["name"] == "orders"));
    let st = status(&api, GROUP_NAME);
    assert_eq!(st["phase"], "Halted", "still halted: {st:#}");
    assert_eq!(
        api.object(DEPLOYMENTS, NS, "billing").unwrap()["spec"]["paused"],
        true
    );
    h.stop().await;
}

/// With `rollback: true` a failed member is restored to the template of
/// its own previous ReplicaSet (without `pod-template-hash`) by one JSON
/// patch, rolled out, paused again and the group halts as RolledBack.
#[tokio::test]
async fn a_failed_member_is_rolled_back_to_its_previous_replicaset_template() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    let rs = |name: &str, owner_uid: &str, image: &str, hash: &str| {
        let mut t = template("orders", image);
        t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": name, "namespace": NS,
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                "name": "orders", "uid": owner_uid, "controller": true}]},
               "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "orders"}},
                        "template": t}})
    };
    // The old ReplicaSet is listed after the new one (added below): the
    // template is found by its hash, not by list order.
    api.put(
        REPLICASETS,
        rs("orders-b7f6e5d4c", "uid-orders", ORDERS_1, "b7f6e5d4c"),
    );
    // Another Deployment's ReplicaSet of another template.
    let mut other = rs("billing-5d4c3b2a1", "uid-billing", BILLING_1, "5d4c3b2a1");
    other["metadata"]["ownerReferences"][0]["name"] = json!("billing");
    api.put(REPLICASETS, other);
    let ep = Endpoint::start(503).await;
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": ep.url, "interval": "200ms"}}]),
            json!({"validationTimeout": "2s", "rollback": true}),
        ),
    );
    roll_unpaused(&api);
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[ORDERS_2])]);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    api.put(
        REPLICASETS,
        rs("orders-a9b8c7d6e", "uid-orders", ORDERS_2, "a9b8c7d6e"),
    );

    let st = wait_status(&api, GROUP_NAME, "rolled back", |s| {
        result_of(s, "orders")["result"] == "RolledBack"
    })
    .await;
    let (h1, h2) = (
        hash_of(&template("orders", ORDERS_1)),
        hash_of(&template("orders", ORDERS_2)),
    );
    let url = &ep.url;
    let reason = format!(
        "validation timed out after 2s: HTTP check {url} failed: \
         GET {url}: HTTP 503 Service Unavailable"
    );
    assert_eq!(st["phase"], "Halted", "{st:#}");
    assert_eq!(
        st["message"],
        format!("halted: orders: {reason} (rolled back)")
    );
    assert_eq!(st["deployed"]["orders"], h1);
    let r = result_of(&st, "orders");
    assert_eq!(r["templateHash"], h2);
    assert_eq!(r["reason"], reason);

    let reqs = api.requests();
    let rollback = (
        deployment_path("orders"),
        JSON_PATCH.to_string(),
        json!([{"op": "replace", "path": "/spec/template", "value": template("orders", ORDERS_1)}]),
    );
    assert_eq!(
        member_writes(&reqs),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            rollback,
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    let d = api.object(DEPLOYMENTS, NS, "orders").unwrap();
    assert_eq!(d["spec"]["template"], template("orders", ORDERS_1));
    assert_eq!(d["spec"]["paused"], true);
    assert_deployment_event(
        &api,
        "orders",
        true,
        "StepFailed",
        &format!("orders: {reason}; rolling back to template {h1}"),
    );
    assert_deployment_event(
        &api,
        "orders",
        false,
        "RolledBack",
        &format!("orders: rolled back to template {h1}; group halted"),
    );
    assert!(events(&reqs, "RollbackImpossible").is_empty());
    // Halted for good: no more writes to the member.
    let more = api.wait_for(QUIET, |r| member_writes(r).len() > 5).await;
    assert!(!more, "{:#?}", member_writes(&api.requests()));
    let m = &h.state.metrics;
    assert_eq!(
        m.deploy_steps
            .with_label_values(&[NS, GROUP_NAME, "rolled_back"])
            .get(),
        1
    );
    h.stop().await;
}

/// The README's setup: a Deployment created paused, so its adopted
/// template never had a ReplicaSet. A failed step with `rollback: true`
/// halts at once (it used to wait out rolloutTimeout in RollingBack and end
/// `RollbackIncomplete` with KEDA resumed on the failed image): the member
/// stays paused, its ScaledObject stays paused, and one StepFailed Event
/// and the status say the same thing.
#[tokio::test]
async fn a_rollback_without_a_replicaset_to_restore_halts_at_once() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    let ep = Endpoint::start(503).await;
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": ep.url, "interval": "200ms"}}]),
            json!({"validationTimeout": "2s", "rolloutTimeout": "1m", "rollback": true}),
        ),
    );
    roll_unpaused(&api);
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[ORDERS_2])]);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "halted", |s| s["phase"] == "Halted").await;
    let (h1, h2) = (
        hash_of(&template("orders", ORDERS_1)),
        hash_of(&template("orders", ORDERS_2)),
    );
    let url = &ep.url;
    let reason = format!(
        "validation timed out after 2s: HTTP check {url} failed: \
         GET {url}: HTTP 503 Service Unavailable; cannot roll back: \
         no ReplicaSet of orders holds the deployed template {h1}"
    );
    assert_eq!(st["message"], format!("halted: orders: {reason}"), "{st:#}");
    assert_eq!(st["kedaHeld"], "orders-so");
    let r = result_of(&st, "orders");
    assert_eq!(
        (r["result"].as_str(), r["templateHash"].as_str()),
        (Some("Failed"), Some(h2.as_str()))
    );
    assert_eq!(r["reason"], reason);
    assert_deployment_event(
        &api,
        "orders",
        true,
        "StepFailed",
        &format!(
            "orders: {reason}; group halted with orders paused on template {h2} and its \
             ScaledObject orders-so kept paused until a new template is set"
        ),
    );
    let reqs = api.requests();
    assert_eq!(events(&reqs, "StepFailed").len(), 1);
    for other in ["RollbackImpossible", "RollbackIncomplete", "RolledBack"] {
        assert!(events(&reqs, other).is_empty(), "{other}");
    }
    // Paused again, KEDA not resumed, nothing more written.
    assert_eq!(
        member_writes(&reqs),
        vec![keda("orders-so", true), unpause("orders"), pause("orders")]
    );
    let more = api.wait_for(QUIET, |r| member_writes(r).len() > 3).await;
    assert!(!more, "{:#?}", member_writes(&api.requests()));
    let so = api.object(SCALED, NS, "orders-so").unwrap();
    assert_eq!(
        so["metadata"]["annotations"]["autoscaling.keda.sh/paused"],
        "true"
    );
    h.stop().await;
}
