//! Failures: rollback (possible or not), halts and what clears them.

use super::*;

fn with_rollback() -> World {
    let mut spec = spec3();
    spec.rollback = true;
    World::new(spec)
}

#[test]
fn rollback_restores_the_previous_template_and_halts() {
    let mut w = with_rollback();
    w.set_template("web", "v2");
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").http = Some(CheckObs::Failed("500".into()));
    w.wait(300).tick();
    // The first Failed result and the timeout land in the same call.
    assert_eq!(
        w.last.iter().map(show).collect::<Vec<_>>(),
        [
            "Event Warning CheckFailed orders-api",
            "Event Warning StepFailed orders-api",
            "Rollback orders-api",
        ]
    );
    let reason = format!("validation timed out after 5m0s: HTTP check {URL} failed: 500");
    assert_eq!(
        messages(&w.last, "StepFailed"),
        [format!("orders-api: {reason}; rolling back to template v1")]
    );
    assert_eq!(w.step().stage, Stage::RollingBack);
    assert_eq!(w.step().failure.as_deref(), Some(reason.as_str()));
    assert_eq!(w.result("orders-api").result, Outcome::Failed);
    assert_eq!(w.status.message, "stepping orders-api: rolling back");

    // The effector swapped the template back; wait for it to roll out.
    assert_eq!(w.o("orders-api").template_hash, "v1");
    assert!(w.wait(10).tick().is_empty());
    w.rolled_out("orders-api");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Pause orders-api",
            "ResumeKeda orders-api-so",
            "Event Normal RolledBack orders-api",
        ]
    );
    let r = w.result("orders-api");
    assert_eq!(r.result, Outcome::RolledBack);
    assert_eq!(r.reason, reason);
    assert_eq!(r.template_hash, "v2");
    assert_eq!(w.status.phase, GroupPhase::Halted);
    assert_eq!(
        w.status.message,
        format!("halted: orders-api: {reason} (rolled back)")
    );

    // Halt is sticky: the rolled-back template is not a fix, web waits.
    for _ in 0..3 {
        assert!(w.wait(600).tick().is_empty());
        assert_eq!(w.status.phase, GroupPhase::Halted);
    }
    assert_eq!(w.status.deployed["web"], "v1");
}

/// The README's setup: Deployments created paused, so the adopted template
/// never had a ReplicaSet. A failed step with `rollback: true` cannot roll
/// back: it halts at once (no wait in RollingBack), says so once and
/// consistently, keeps the member paused and its ScaledObject paused (the
/// member is on the failed template), and a fixed template resumes with
/// that ScaledObject handed to the new step, which resumes it at its end.
#[test]
fn an_impossible_rollback_halts_at_once_with_keda_kept_paused() {
    let mut w = with_rollback();
    w.o("orders-api").rollback_target = false;
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").http = Some(CheckObs::Failed("500".into()));
    assert_eq!(
        w.wait(300).tick(),
        [
            "Event Warning CheckFailed orders-api",
            "Event Warning StepFailed orders-api",
            "Pause orders-api",
        ]
    );
    let reason = format!(
        "validation timed out after 5m0s: HTTP check {URL} failed: 500; cannot roll back: \
         no ReplicaSet of orders-api holds the deployed template v1"
    );
    assert_eq!(
        messages(&w.last, "StepFailed"),
        [format!(
            "orders-api: {reason}; group halted with orders-api paused on template v2 and its \
             ScaledObject orders-api-so kept paused until a new template is set"
        )]
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
    assert_eq!(w.status.message, format!("halted: orders-api: {reason}"));
    let r = w.result("orders-api");
    assert_eq!(
        (r.result, r.reason.as_str()),
        (Outcome::Failed, reason.as_str())
    );
    assert_eq!(w.status.keda_held.as_deref(), Some("orders-api-so"));
    assert!(w.obs["orders-api"].scaled_object.as_ref().unwrap().paused);
    // Nothing more happens while halted: no rollback wait, no KEDA resume.
    for _ in 0..3 {
        assert!(w.wait(600).tick().is_empty());
    }
    // The status survives a restart (serialized and read back).
    w.status = serde_json::from_value(serde_json::to_value(&w.status).unwrap()).unwrap();

    // A fixed image: the halt clears and the new step owns the paused
    // ScaledObject (no resume-then-pause flap), resuming it at the end.
    w.set_template("orders-api", "v3");
    let started = w.wait(10).tick();
    assert_eq!(
        started,
        [
            "Event Normal Resumed -",
            "Event Normal StepStarted orders-api",
            r#"Warm orders-api ["orders-api:v3"] 3"#,
        ]
    );
    assert_eq!(w.step().keda_paused.as_deref(), Some("orders-api-so"));
    assert_eq!(w.status.keda_held, None);
    w.o("orders-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("orders-api");
    w.o("orders-api").http = Some(CheckObs::Passed);
    w.wait(10).tick();
    let end = w.wait(3600).tick();
    assert!(
        end.contains(&"ResumeKeda orders-api-so".to_string()),
        "{end:?}"
    );
}

/// A halt with a held ScaledObject that clears without a step for its
/// member (here the member leaves the group) resumes the ScaledObject.
#[test]
fn a_held_scaled_object_is_resumed_when_no_step_will_own_it() {
    let mut w = with_rollback();
    w.o("billing-api").rollback_target = false;
    w.drive_to_validating("billing-api", "v2");
    w.o("billing-api").http = Some(CheckObs::Failed("500".into()));
    w.wait(300).tick();
    assert_eq!(w.status.keda_held.as_deref(), Some("billing-api-so"));
    w.spec.members.retain(|m| m.deployment != "billing-api");
    w.generation += 1;
    let actions = w.wait(10).tick();
    assert!(
        actions.contains(&"ResumeKeda billing-api-so".to_string()),
        "{actions:?}"
    );
    assert_eq!(w.status.keda_held, None);
    assert_ne!(w.status.phase, GroupPhase::Halted);
}

#[test]
fn rollback_that_never_completes_halts_anyway() {
    let mut w = with_rollback();
    w.drive_to_validating("billing-api", "v2");
    w.o("billing-api").job = Some(CheckObs::Failed("exit 1".into()));
    assert_eq!(
        w.wait(5).tick(),
        [
            "Event Warning StepFailed billing-api",
            "Rollback billing-api"
        ]
    );
    // Template swapped back but never completes.
    assert!(w.wait(899).tick().is_empty());
    assert_eq!(
        w.wait(1).tick(),
        [
            "Event Warning RollbackIncomplete billing-api",
            "Pause billing-api",
            "ResumeKeda billing-api-so",
        ]
    );
    let reason =
        "validation job billing-api-validate-v2 failed: exit 1; rollback did not complete within 15m0s";
    assert_eq!(w.result("billing-api").result, Outcome::Failed);
    assert_eq!(w.result("billing-api").reason, reason);
    assert_eq!(w.status.phase, GroupPhase::Halted);
    assert_eq!(w.status.message, format!("halted: billing-api: {reason}"));
}

#[test]
fn rollback_is_reissued_until_the_template_changes() {
    let mut w = with_rollback();
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").available = 1;
    w.wait(300).tick();
    assert_eq!(w.step().stage, Stage::RollingBack);
    // The effector did not get to it: the template is still the failed one.
    w.set_template("orders-api", "v2");
    assert_eq!(w.wait(10).tick(), ["Rollback orders-api"]);
    assert_eq!(w.o("orders-api").template_hash, "v1");
    assert!(w.wait(10).tick().is_empty());
}

fn halted_on_orders() -> World {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").http = Some(CheckObs::Failed("500".into()));
    w.wait(300).tick();
    assert_eq!(w.status.phase, GroupPhase::Halted);
    w
}

#[test]
fn halt_is_sticky_and_later_members_do_not_start() {
    let mut w = halted_on_orders();
    for _ in 0..3 {
        assert!(w.wait(600).tick().is_empty());
        assert_eq!(w.status.phase, GroupPhase::Halted);
        assert_eq!(w.status.step, None);
    }
    // Members are still kept paused while halted.
    w.o("web").paused = false;
    assert_eq!(
        w.wait(10).tick(),
        ["Pause web", "Event Warning NotPaused web"]
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
    assert_eq!(w.status.deployed["web"], "v1");
}

#[test]
fn a_fix_forward_template_clears_the_halt() {
    let mut w = halted_on_orders();
    w.set_template("orders-api", "v3");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Normal Resumed -",
            "Event Normal StepStarted orders-api",
            "PauseKeda orders-api-so",
            r#"Warm orders-api ["orders-api:v3"] 3"#,
        ]
    );
    assert_eq!(
        messages(&w.last, "Resumed"),
        ["halt on orders-api cleared: orders-api has a new template v3"]
    );
    assert_eq!(w.status.halted, None);
    assert_eq!(w.status.phase, GroupPhase::Stepping);
    // It succeeds; web follows.
    w.o("orders-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("orders-api");
    w.o("orders-api").http = Some(CheckObs::Passed);
    w.wait(10).tick();
    let actions = w.wait(60).tick();
    assert_eq!(actions[2], "Event Normal StepSucceeded orders-api");
    assert_eq!(actions[3], "Event Normal StepStarted web");
    assert_eq!(w.result("orders-api").result, Outcome::Succeeded);
}

#[test]
fn a_spec_change_clears_the_halt_and_retries() {
    let mut w = halted_on_orders();
    w.generation = 2;
    let actions = w.wait(10).tick();
    assert_eq!(actions[0], "Event Normal Resumed -");
    assert_eq!(
        messages(&w.last, "Resumed"),
        ["halt on orders-api cleared: the spec changed (generation 2)"]
    );
    // orders-api is still at the failed template, so it is stepped again.
    assert_eq!(w.step().member, "orders-api");
    assert_eq!(w.step().template_hash, "v2");
}
