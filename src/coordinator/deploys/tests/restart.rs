//! The coordinator killed in the middle of a deploy step: the group's
//! status in the cluster is the state, so a fresh coordinator (new
//! in-memory state, same API server) continues the step where it stood:
//! not from the start, and not past its validation.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::coordinator::process_tests::Process;

/// A coordinator process running the deploy effector as leader.
fn coordinator(api: &MockApi, nodes: Vec<Snapshot>) -> Process {
    let cancel = CancellationToken::new();
    let state = LinkState::with_nodes(nodes, cancel.clone());
    let api = api.clone();
    Process::start(move || async move {
        let (_leader, rx) = watch::channel(true);
        run(api.coordinator_client(), state, opts(), rx, cancel).await;
    })
}

/// orders (HTTP-checked at `url`) and billing, both adopted; n1 already
/// holds orders' next image, so its step does not wait in Warming.
async fn adopted_group(api: &MockApi, url: &str) -> Vec<Snapshot> {
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(DEPLOYMENTS, deployment("billing", BILLING_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": url, "interval": "200ms"}},
                   {"deployment": "billing"}]),
            json!({"quiesce": "1s"}),
        ),
    );
    roll_unpaused(api);
    vec![snap("n1", "apps", &[ORDERS_2, BILLING_1])]
}

async fn succeeded(api: &MockApi) -> Value {
    wait_status(api, GROUP_NAME, "the step succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await
}

/// The step finished as one step: started once, at `started`, with the
/// writes of one step and orders' new template deployed.
fn assert_one_step(api: &MockApi, st: &Value, started: &Value) {
    assert_eq!(st["phase"], "Idle", "{st:#}");
    let r = result_of(st, "orders");
    assert_eq!(&r["started"], started, "the step kept its start: {st:#}");
    assert_eq!(r["reason"], "ready; HTTP check passed");
    assert_eq!(st["results"].as_array().unwrap().len(), 1, "{st:#}");
    let h2 = hash_of(&template("orders", ORDERS_2));
    assert_eq!(st["deployed"]["orders"], h2);
    let reqs = api.requests();
    assert_eq!(
        events(&reqs, "StepStarted").len(),
        1,
        "the step was started again"
    );
    assert_eq!(events(&reqs, "StepSucceeded").len(), 1);
    let mut writes = member_writes(&reqs);
    // Re-sending the same merge patch is harmless; anything else is not.
    writes.dedup();
    assert_eq!(
        writes,
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    let d = api.object(DEPLOYMENTS, NS, "orders").unwrap();
    assert_eq!(d["spec"]["paused"], true);
    let b = api.object(DEPLOYMENTS, NS, "billing").unwrap();
    assert_eq!(b["metadata"]["generation"], 1, "billing untouched");
    let refused = api.forbidden();
    assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
}

/// Killed right after the step's first action reached the server (KEDA
/// paused for orders), before the next status write: the next coordinator
/// rolls on, still validates, and resumes the KEDA pause the step made.
#[tokio::test]
async fn killed_after_the_steps_first_action_the_next_coordinator_finishes_the_step() {
    let api = api();
    let ep = Endpoint::start(200).await;
    let nodes = adopted_group(&api, &ep.url).await;
    let first = coordinator(&api, nodes.clone());
    wait_status(&api, GROUP_NAME, "adopted", |s| {
        s["deployed"].as_object().is_some_and(|d| d.len() == 2)
    })
    .await;
    // Hold every status write after the step's KEDA pause.
    let armed = Arc::new(AtomicBool::new(false));
    let (a, so, status_write) = (
        armed.clone(),
        scaled_path("orders-so"),
        status_path(GROUP_NAME),
    );
    let hold = api.hold(0, move |m, p| {
        if m == "PATCH" && p == so {
            a.store(true, Ordering::SeqCst);
            return false;
        }
        m == "PATCH" && p == status_write && a.load(Ordering::SeqCst)
    });
    set_image(&api, "orders", ORDERS_2);
    tokio::time::timeout(WAIT, hold.arrived(1))
        .await
        .expect("a status write after the KEDA pause");
    let so = api.object(SCALED, NS, "orders-so").unwrap();
    assert_eq!(so["metadata"]["annotations"][PAUSED_ANNOTATION], "true");
    let started = status(&api, GROUP_NAME)["step"]["started"].clone();
    first.kill().await;
    hold.release();
    let before = ep.hits();

    let second = coordinator(&api, nodes);
    let st = succeeded(&api).await;
    assert!(ep.hits() > before, "validated by the new coordinator");
    second.kill().await;
    let so = api.object(SCALED, NS, "orders-so").unwrap();
    assert!(
        so["metadata"]
            .get("annotations")
            .is_none_or(|a| a.get(PAUSED_ANNOTATION).is_none()),
        "KEDA left paused for orders after its step: {so:#}\nstatus {st:#}\nwrites {:#?}",
        member_writes(&api.requests())
    );
    assert_one_step(&api, &st, &started);
}

/// Killed while orders' HTTP check was failing: the next coordinator
/// resumes validating (not rolling out again, not passing it unchecked)
/// and finishes once the check passes.
#[tokio::test]
async fn killed_while_validating_the_next_coordinator_validates_again() {
    let api = api();
    let ep = Endpoint::start(503).await;
    let nodes = adopted_group(&api, &ep.url).await;
    let first = coordinator(&api, nodes.clone());
    wait_status(&api, GROUP_NAME, "adopted", |s| {
        s["deployed"].as_object().is_some_and(|d| d.len() == 2)
    })
    .await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "validating", |s| {
        s["step"]["stage"] == "Validating"
    })
    .await;
    let started = st["step"]["started"].clone();
    let ok = api.wait_for(WAIT, |_| ep.hits() >= 2).await;
    assert!(ok, "the check runs");
    first.kill().await;
    let st = status(&api, GROUP_NAME);
    assert_eq!(st["step"]["stage"], "Validating", "{st:#}");
    let before = ep.hits();

    let second = coordinator(&api, nodes);
    // Still failing: the new coordinator keeps the member under test.
    let ok = api.wait_for(WAIT, |_| ep.hits() >= before + 2).await;
    assert!(ok, "the new coordinator checks again");
    assert_eq!(status(&api, GROUP_NAME)["step"]["stage"], "Validating");
    ep.set(200);
    let st = succeeded(&api).await;
    second.kill().await;
    assert_one_step(&api, &st, &started);
}
