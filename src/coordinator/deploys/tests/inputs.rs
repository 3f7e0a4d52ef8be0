//! Bad input, members unpaused out of turn, restarts and leadership.

use super::*;

// ---- bad input ----

/// Groups that cannot work get phase Invalid with a message naming the
/// problem and a Warning Event, and no Deployment of theirs is touched; a
/// malformed group does not keep a valid one from being adopted.
#[tokio::test]
async fn bad_groups_are_invalid_with_a_clear_message_and_touch_nothing() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, false));
    api.put(DEPLOYMENTS, deployment("billing", BILLING_1, false));
    api.put(DEPLOYMENTS, deployment("web", WEB_1, false));
    api.put(
        GROUPS,
        group(
            "unknown",
            json!([{"deployment": "orders"}, {"deployment": "ghost"}]),
            json!({}),
        ),
    );
    api.put(
        GROUPS,
        group(
            "duplicate",
            json!([{"deployment": "orders"}, {"deployment": "billing"}, {"deployment": "orders"}]),
            json!({}),
        ),
    );
    api.put(
        GROUPS,
        group(
            "malformed",
            json!([{"deployment": "billing"}]),
            json!({"quiesce": "soon"}),
        ),
    );
    api.put(
        GROUPS,
        group("valid", json!([{"deployment": "web"}]), json!({})),
    );
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[])]);

    let cases = [
        (
            "unknown",
            "member ghost: no Deployment ghost in this namespace".to_string(),
        ),
        (
            "duplicate",
            "member orders appears at positions 1 and 3; \
             a deploy order must name each Deployment once"
                .to_string(),
        ),
    ];
    for (name, message) in &cases {
        let st = wait_status(&api, name, name, |s| s["phase"] == "Invalid").await;
        assert_eq!(
            st,
            json!({"phase": "Invalid", "message": message, "observedGeneration": 1,
                   "deployed": {}, "results": []}),
            "{name}"
        );
    }
    let malformed = "DeployGroup erp/malformed is malformed: spec.quiesce: \
                     invalid duration \"soon\": expected numbers with units h, m, s or ms, \
                     like \"90s\", \"10m\", \"1h\" or \"1h30m\"";
    let st = wait_status(&api, "malformed", "malformed", |s| s["phase"] == "Invalid").await;
    assert_eq!(
        st,
        json!({"phase": "Invalid", "message": malformed, "observedGeneration": 1})
    );
    let st = wait_status(&api, "valid", "valid adopted", |s| s["phase"] == "Idle").await;
    assert_eq!(
        st["deployed"],
        json!({"web": hash_of(&template("web", WEB_1))})
    );

    // Settled: one status write each, no more.
    let more = api
        .wait_for(QUIET, |r| {
            r.iter()
                .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
                .count()
                > 4
        })
        .await;
    assert!(!more, "status rewritten: {:#?}", api.writes());
    let reqs = api.requests();
    for name in ["unknown", "duplicate", "malformed", "valid"] {
        assert_eq!(writes_to(&reqs, &status_path(name)).len(), 1, "{name}");
    }
    // Only the valid group's member was written.
    assert_eq!(member_writes(&reqs), vec![pause("web")]);
    for name in ["orders", "billing"] {
        let d = api.object(DEPLOYMENTS, NS, name).unwrap();
        assert_eq!(d["spec"]["paused"], false, "{name}");
    }
    for (name, message) in &cases {
        assert_group_event(&api, name, "Invalid", message);
    }
    assert_group_event(&api, "malformed", "Invalid", malformed);
    let m = &h.state.metrics;
    assert_eq!(
        m.deploy_phase
            .with_label_values(&[NS, "unknown", "Invalid"])
            .get(),
        1
    );
    h.stop().await;
}

// ---- keeping members paused ----

/// A member unpaused by someone outside its step is paused again, with a
/// Warning `NotPaused` Event.
#[tokio::test]
async fn a_member_unpaused_out_of_turn_is_paused_again() {
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
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    let ok = api.wait_for(WAIT, |r| member_writes(r).len() == 2).await;
    assert!(ok);
    let settled = api.writes().len();

    api.update(DEPLOYMENTS, NS, "billing", |d| {
        d["spec"]["paused"] = json!(false);
    })
    .unwrap();
    let repaused = api
        .wait_for(WAIT, |r| {
            writes_to(r, &deployment_path("billing")).len() == 2
        })
        .await;
    assert!(repaused, "billing not paused again: {:#?}", api.writes());
    // Then quiet: no status change, nothing else.
    let more = api
        .wait_for(QUIET, |r| {
            r.iter().filter(|r| r.method != "GET").count() > settled + 2
        })
        .await;
    assert!(!more, "{:#?}", api.writes());
    let reqs = api.requests();
    assert_eq!(
        member_writes(&reqs),
        vec![pause("orders"), pause("billing"), pause("billing")]
    );
    let after: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.method != "GET")
        .skip(settled)
        .collect();
    assert_eq!(after[0].path, deployment_path("billing"));
    assert_eq!(after[1].path, format!("/api/v1/namespaces/{NS}/events"));
    assert_deployment_event(
        &api,
        "billing",
        true,
        "NotPaused",
        "Deployment billing was unpaused outside its step; paused again",
    );
    assert_eq!(
        api.object(DEPLOYMENTS, NS, "billing").unwrap()["spec"]["paused"],
        true
    );
    assert_eq!(status(&api, GROUP_NAME)["phase"], "Idle");
    h.stop().await;
}

/// Without a ScaledObject for the member the step still runs, with a
/// Warning `NoScaledObject` Event and no write to any ScaledObject.
#[tokio::test]
async fn a_member_without_a_scaled_object_steps_without_keda() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    // Neither is orders' own: another Deployment's, and another namespace's.
    api.put(SCALED, scaled_object(NS, "web-so", "web"));
    api.put(SCALED, scaled_object("staging", "orders-so", "orders"));
    api.put(
        GROUPS,
        group(GROUP_NAME, json!([{"deployment": "orders"}]), json!({})),
    );
    roll_unpaused(&api);
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[ORDERS_2])]);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    assert_eq!(result_of(&st, "orders")["reason"], "ready");
    let reqs = api.requests();
    assert_eq!(
        member_writes(&reqs),
        vec![unpause("orders"), pause("orders")]
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.method != "GET" && r.path.contains("/scaledobjects")),
        "{:#?}",
        api.writes()
    );
    assert_deployment_event(
        &api,
        "orders",
        true,
        "NoScaledObject",
        "orders: no ScaledObject found; autoscaling is not paused during the step",
    );
    for so in [(NS, "web-so"), ("staging", "orders-so")] {
        let o = api.object(SCALED, so.0, so.1).unwrap();
        assert!(o["metadata"].get("annotations").is_none(), "{o:#}");
    }
    h.stop().await;
}

// ---- restarts and leadership ----

/// A coordinator restarted mid-step resumes the step from the status: it
/// is not started again (same `started`, one StepStarted Event, one KEDA
/// pause, one unpause) and finishes once the check passes.
#[tokio::test]
async fn a_restarted_effector_resumes_the_step_where_it_stood() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    let ep = Endpoint::start(503).await;
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": ep.url, "interval": "200ms"}}]),
            json!({"validationTimeout": "30s"}),
        ),
    );
    roll_unpaused(&api);
    let nodes = || vec![snap("n1", "apps", &[ORDERS_2])];
    let first = Harness::start(&api, true, nodes());
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "validating", |s| {
        s["step"]["stage"] == "Validating" && s["step"]["failure"].is_string()
    })
    .await;
    let started = st["step"]["started"].clone();
    assert!(started.is_string(), "{st:#}");
    first.stop().await;
    let writes_before = api.writes().len();

    let second = Harness::start(&api, true, nodes());
    // The new effector checks again (still failing) before the fix.
    let hits = ep.hits();
    let ok = api.wait_for(WAIT, |_| ep.hits() >= hits + 2).await;
    assert!(ok, "the restarted effector never checked");
    assert_eq!(status(&api, GROUP_NAME)["step"]["started"], started);
    ep.set(200);
    let st = wait_status(&api, GROUP_NAME, "succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    let r = result_of(&st, "orders");
    assert_eq!(r["started"], started, "the step was not restarted");
    assert_eq!(r["reason"], "ready; HTTP check passed");
    assert!(writes_to(&api.requests(), &status_path(GROUP_NAME)).len() > 1);

    let reqs = api.requests();
    // Every status written with a step, before and after the restart,
    // carries the same step start.
    for w in writes_to(&reqs, &status_path(GROUP_NAME)) {
        let step = &w.body.as_ref().unwrap().as_array().unwrap().last().unwrap()["value"]["step"];
        if !step.is_null() {
            assert_eq!(step["started"], started, "{step:#}");
            assert_eq!(step["templateHash"], hash_of(&template("orders", ORDERS_2)));
        }
    }
    assert_eq!(
        member_writes(&reqs),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    assert_eq!(events(&reqs, "StepStarted").len(), 1);
    let after: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.method != "GET")
        .skip(writes_before)
        .collect();
    assert!(
        !after.iter().any(|r| r.body.as_ref()
            == Some(&json!({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}}))),
        "KEDA paused again after the restart"
    );
    second.stop().await;
}

/// A replica that is not the leader writes nothing; once it leads, it acts.
#[tokio::test]
async fn a_follower_writes_nothing_until_it_leads() {
    let api = api();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, false));
    api.put(
        GROUPS,
        group(GROUP_NAME, json!([{"deployment": "orders"}]), json!({})),
    );
    let h = Harness::start(&api, false, vec![snap("n1", "apps", &[])]);
    // It does watch the groups.
    let watched = api
        .wait_for(WAIT, |r| {
            r.iter().any(|r| r.path.ends_with("/deploygroups"))
        })
        .await;
    assert!(watched);
    let wrote = api
        .wait_for(QUIET, |r| r.iter().any(|r| r.method != "GET"))
        .await;
    assert!(!wrote, "a follower wrote: {:#?}", api.writes());
    assert!(status(&api, GROUP_NAME).is_null());
    assert!(h.state.intents.borrow().is_empty());
    assert!(h.state.deploys.read().unwrap().is_empty());

    h.leader.send(true).unwrap();
    let st = wait_status(&api, GROUP_NAME, "adopted once leading", |s| {
        s["phase"] == "Idle"
    })
    .await;
    assert_eq!(
        st["deployed"],
        json!({"orders": hash_of(&template("orders", ORDERS_1))})
    );
    assert_eq!(member_writes(&api.requests()), vec![pause("orders")]);
    h.stop().await;
}

/// Regression: a reconcile must not decide from a watched copy of the
/// group older than the status it just wrote. A resync (or a check's
/// poke) landing between our status write and the watch delivering it used
/// to start the step a second time; the second start found the
/// ScaledObject paused (by the first) and took it for someone else's, so
/// KEDA stayed paused after the step. A 1 ms resync puts a resync in that
/// window often; repeated to make sure.
#[tokio::test]
async fn a_step_is_never_decided_from_a_copy_older_than_our_own_write() {
    let opts = DeployOptions {
        resync: Duration::from_millis(1),
        ..opts()
    };
    for round in 0..20 {
        let api = api();
        api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
        api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
        api.put(
            GROUPS,
            group(GROUP_NAME, json!([{"deployment": "orders"}]), json!({})),
        );
        roll_unpaused(&api);
        let nodes = vec![snap("n1", "apps", &[ORDERS_2])];
        let h = Harness::start_with(&api, opts.clone(), true, nodes);
        wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
        set_image(&api, "orders", ORDERS_2);
        let st = wait_status(&api, GROUP_NAME, "succeeded", |s| {
            result_of(s, "orders")["result"] == "Succeeded"
        })
        .await;
        h.stop().await;
        let reqs = api.requests();
        assert_eq!(
            member_writes(&reqs),
            vec![
                keda("orders-so", true),
                unpause("orders"),
                pause("orders"),
                keda("orders-so", false),
            ],
            "round {round}"
        );
        let starts: Vec<Value> = writes_to(&reqs, &status_path(GROUP_NAME))
            .iter()
            .map(|w| {
                w.body.as_ref().unwrap().as_array().unwrap().last().unwrap()["value"]["step"]
                    ["started"]
                    .clone()
            })
            .filter(|s| !s.is_null())
            .collect();
        assert!(
            starts.windows(2).all(|w| w[0] == w[1]),
            "round {round}: the step was started again: {starts:?}"
        );
        assert_eq!(result_of(&st, "orders")["started"], starts[0]);
    }
}
