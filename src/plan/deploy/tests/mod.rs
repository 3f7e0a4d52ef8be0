//! DeployGroup state machine tests with a fake clock: a `World` holds the
//! spec, the status and what the coordinator observes; `tick` runs
//! `decide`, applies Pause/Unpause/KEDA/Rollback effects to the
//! observations the way the effector would, and returns the actions in a
//! compact form for exact comparison.

use chrono::TimeZone as _;
use serde_json::json;

use super::*;
use crate::wire::deploygroup::HttpCheck;

const URL: &str = "http://orders-api.shop.svc/healthz";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn job_spec() -> serde_json::Value {
    json!({"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "smoke", "image": "smoke:1"}]}}})
}

/// orders-api (HTTP check), billing-api (Job), web (readiness only).
fn spec3() -> DeployGroupSpec {
    DeployGroupSpec {
        members: vec![
            MemberSpec {
                deployment: "orders-api".into(),
                http_check: Some(HttpCheck {
                    url: URL.into(),
                    interval: Dur::secs(5),
                }),
                ..MemberSpec::default()
            },
            MemberSpec {
                deployment: "billing-api".into(),
                job: Some(job_spec()),
                ..MemberSpec::default()
            },
            MemberSpec {
                deployment: "web".into(),
                ..MemberSpec::default()
            },
        ],
        ..DeployGroupSpec::default()
    }
}

/// A paused member whose rollout of template `hash` is complete.
fn settled(name: &str, hash: &str) -> MemberObs {
    MemberObs {
        exists: true,
        paused: true,
        template_hash: hash.into(),
        images: vec![format!("{name}:{hash}")],
        generation: 1,
        observed_generation: 1,
        replicas: 3,
        status_replicas: 3,
        updated: 3,
        available: 3,
        eligible_nodes: 4,
        warm_nodes: 3,
        scaled_object: Some(ScaledObs {
            name: format!("{name}-so"),
            paused: false,
        }),
        rollback_target: true,
        ..MemberObs::default()
    }
}

fn show(a: &Action) -> String {
    match a {
        Action::Pause { deployment } => format!("Pause {deployment}"),
        Action::Unpause { deployment } => format!("Unpause {deployment}"),
        Action::PauseKeda { scaled_object } => format!("PauseKeda {scaled_object}"),
        Action::ResumeKeda { scaled_object } => format!("ResumeKeda {scaled_object}"),
        Action::Warm {
            deployment,
            images,
            nodes_needed,
        } => format!("Warm {deployment} {images:?} {nodes_needed}"),
        Action::HttpCheck { deployment, url } => format!("HttpCheck {deployment} {url}"),
        Action::CreateJob {
            deployment, name, ..
        } => format!("CreateJob {deployment} {name}"),
        Action::Rollback { deployment } => format!("Rollback {deployment}"),
        Action::Event {
            deployment,
            warning,
            reason,
            ..
        } => format!(
            "Event {} {reason} {}",
            if *warning { "Warning" } else { "Normal" },
            deployment.as_deref().unwrap_or("-")
        ),
    }
}

fn messages(actions: &[Action], reason: &str) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                reason: r, message, ..
            } if r == reason => Some(message.clone()),
            _ => None,
        })
        .collect()
}

struct World {
    spec: DeployGroupSpec,
    checks: HttpCheckPolicy,
    generation: i64,
    status: DeployGroupStatus,
    obs: BTreeMap<String, MemberObs>,
    now: DateTime<Utc>,
    last: Vec<Action>,
}

impl World {
    /// Every member settled at v1, already adopted, group idle.
    fn new(spec: DeployGroupSpec) -> World {
        let mut w = World::fresh(spec);
        w.tick();
        assert_eq!(w.status.phase, GroupPhase::Idle);
        w
    }

    /// Members settled at v1, nothing adopted yet.
    fn fresh(spec: DeployGroupSpec) -> World {
        let obs = spec
            .members
            .iter()
            .map(|m| (m.deployment.clone(), settled(&m.deployment, "v1")))
            .collect();
        World {
            spec,
            checks: HttpCheckPolicy::default(),
            generation: 1,
            status: DeployGroupStatus::default(),
            obs,
            now: t0(),
            last: Vec::new(),
        }
    }

    fn o(&mut self, m: &str) -> &mut MemberObs {
        self.obs.get_mut(m).unwrap()
    }

    fn wait(&mut self, secs: i64) -> &mut World {
        self.now += TimeDelta::seconds(secs);
        self
    }

    fn decision(&self) -> Decision {
        decide(
            &self.spec,
            &self.checks,
            self.generation,
            &self.status,
            &self.obs,
            self.now,
        )
    }

    fn tick(&mut self) -> Vec<String> {
        let d = self.decision();
        self.apply(&d.actions);
        self.status = d.status;
        self.last = d.actions;
        self.last.iter().map(show).collect()
    }

    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Pause { deployment } => {
                    let o = self.o(deployment);
                    o.paused = true;
                    o.generation += 1;
                    o.observed_generation = o.generation;
                }
                Action::Unpause { deployment } => {
                    let o = self.o(deployment);
                    o.paused = false;
                    o.generation += 1;
                }
                Action::PauseKeda { scaled_object } | Action::ResumeKeda { scaled_object } => {
                    let pause = matches!(a, Action::PauseKeda { .. });
                    for o in self.obs.values_mut() {
                        if let Some(so) = o.scaled_object.as_mut() {
                            if so.name == *scaled_object {
                                so.paused = pause;
                            }
                        }
                    }
                }
                Action::Rollback { deployment } => {
                    let back = self.status_deployed(deployment);
                    self.set_template(deployment, &back);
                }
                _ => {}
            }
        }
    }

    fn status_deployed(&self, m: &str) -> String {
        self.status.deployed[m].clone()
    }

    /// A new pod template as a paused Deployment shows it: no new
    /// ReplicaSet yet, nothing warm.
    fn set_template(&mut self, m: &str, hash: &str) {
        let o = self.o(m);
        o.template_hash = hash.into();
        o.images = vec![format!("{m}:{hash}")];
        o.generation += 1;
        o.observed_generation = o.generation;
        o.updated = 0;
        o.warm_nodes = 0;
        o.http = None;
        o.job = None;
    }

    fn rolled_out(&mut self, m: &str) {
        let o = self.o(m);
        o.observed_generation = o.generation;
        o.updated = o.replicas;
        o.available = o.replicas;
        o.status_replicas = o.replicas;
    }

    fn step(&self) -> &StepStatus {
        self.status.step.as_ref().expect("a step")
    }

    fn result(&self, m: &str) -> &MemberResult {
        self.status.results.iter().find(|r| r.member == m).unwrap()
    }

    /// Changes `m` to `hash` and runs its step up to Validating.
    fn drive_to_validating(&mut self, m: &str, hash: &str) {
        self.set_template(m, hash);
        self.wait(10).tick();
        assert_eq!(self.step().stage, Stage::Warming);
        self.o(m).warm_nodes = 3;
        self.wait(10).tick();
        assert_eq!(self.step().stage, Stage::Rolling);
        self.rolled_out(m);
        self.wait(10).tick();
        assert_eq!(self.step().stage, Stage::Validating);
    }
}

#[test]
fn three_members_step_in_order_through_every_stage() {
    let mut w = World::fresh(spec3());
    assert_eq!(
        w.tick(),
        [
            "Event Normal Adopted orders-api",
            "Event Normal Adopted billing-api",
            "Event Normal Adopted web",
        ]
    );
    assert_eq!(w.status.phase, GroupPhase::Idle);
    assert_eq!(w.status.message, "idle: all 3 members deployed");
    assert_eq!(w.status.observed_generation, 1);
    assert_eq!(w.status.deployed.values().collect::<Vec<_>>(), ["v1"; 3]);

    // orders-api and web change; billing-api does not.
    w.set_template("orders-api", "v2");
    w.set_template("web", "v2");
    w.now = t0() + TimeDelta::seconds(10);
    assert_eq!(
        w.tick(),
        [
            "Event Normal StepStarted orders-api",
            "PauseKeda orders-api-so",
            r#"Warm orders-api ["orders-api:v2"] 3"#,
        ]
    );
    assert_eq!(w.status.phase, GroupPhase::Stepping);
    assert_eq!(w.status.message, "stepping orders-api: warming");
    assert_eq!(w.step().keda_paused.as_deref(), Some("orders-api-so"));
    assert_eq!(w.step().started, t0() + TimeDelta::seconds(10));

    // Warm intents keep flowing until enough nodes hold the images.
    w.o("orders-api").warm_nodes = 2;
    assert_eq!(
        w.wait(10).tick(),
        [r#"Warm orders-api ["orders-api:v2"] 3"#]
    );
    w.o("orders-api").warm_nodes = 3;
    assert_eq!(w.wait(20).tick(), ["Unpause orders-api"]);
    assert_eq!(w.step().stage, Stage::Rolling);
    assert_eq!(w.step().timings.warm_seconds, Some(30.0));
    assert_eq!(w.status.message, "stepping orders-api: rolling out");

    // Unpaused, but the controller has not caught up yet.
    assert!(w.wait(10).tick().is_empty());
    w.rolled_out("orders-api");
    assert_eq!(w.wait(50).tick(), [format!("HttpCheck orders-api {URL}")]);
    assert_eq!(w.step().stage, Stage::Validating);
    assert_eq!(w.step().timings.roll_seconds, Some(60.0));

    w.o("orders-api").http = Some(CheckObs::Running);
    assert_eq!(w.wait(5).tick(), [format!("HttpCheck orders-api {URL}")]);
    w.o("orders-api").http = Some(CheckObs::Passed);
    assert!(w.wait(5).tick().is_empty());
    assert_eq!(w.step().stage, Stage::Quiescing);
    assert_eq!(w.step().timings.validate_seconds, Some(10.0));
    assert!(w.wait(59).tick().is_empty());

    // Quiesce over: pause, resume KEDA, and web starts in the same call.
    assert_eq!(
        w.wait(1).tick(),
        [
            "Pause orders-api",
            "ResumeKeda orders-api-so",
            "Event Normal StepSucceeded orders-api",
            "Event Normal StepStarted web",
            "PauseKeda web-so",
            r#"Warm web ["web:v2"] 3"#,
        ]
    );
    assert_eq!(
        messages(&w.last, "StepSucceeded"),
        ["orders-api: template v2 deployed (warm 30.0s, rollout 60.0s, validation 10.0s)"]
    );
    assert_eq!(w.status.deployed["orders-api"], "v2");
    let r = w.result("orders-api").clone();
    assert_eq!(r.result, Outcome::Succeeded);
    assert_eq!(r.reason, "ready; HTTP check passed");
    assert_eq!(
        (r.started, r.finished),
        (
            t0() + TimeDelta::seconds(10),
            t0() + TimeDelta::seconds(170)
        )
    );
    assert_eq!(w.step().member, "web");
    assert_eq!(w.status.message, "stepping web: warming");

    // web has no check: rollout complete and ready goes straight to quiescing.
    w.o("web").warm_nodes = 3;
    assert_eq!(w.wait(30).tick(), ["Unpause web"]);
    w.rolled_out("web");
    assert!(w.wait(60).tick().is_empty());
    assert_eq!(w.step().stage, Stage::Quiescing);
    assert_eq!(w.step().timings.validate_seconds, Some(0.0));
    assert_eq!(
        w.wait(60).tick(),
        [
            "Pause web",
            "ResumeKeda web-so",
            "Event Normal StepSucceeded web"
        ]
    );
    assert_eq!(w.status.phase, GroupPhase::Idle);
    assert_eq!(w.status.step, None);
    assert_eq!(w.status.message, "idle: all 3 members deployed");
    let order: Vec<_> = w.status.results.iter().map(|r| r.member.as_str()).collect();
    assert_eq!(order, ["orders-api", "web"]);
    assert_eq!(w.status.deployed["billing-api"], "v1");
    // Nothing left to do.
    assert!(w.wait(60).tick().is_empty());
}

#[test]
fn job_validation_creates_the_job_and_waits_for_it() {
    let mut w = World::new(spec3());
    w.set_template("billing-api", "0123456789");
    w.wait(10).tick();
    w.o("billing-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("billing-api");
    assert_eq!(
        w.wait(10).tick(),
        ["CreateJob billing-api billing-api-validate-01234567"]
    );
    assert_eq!(
        w.step().job_name.as_deref(),
        Some("billing-api-validate-01234567")
    );
    match w.last.as_slice() {
        [Action::CreateJob { spec, .. }] => {
            // The member's JobSpec, run as the group's ServiceAccount.
            let mut want = job_spec();
            want["template"]["spec"]["serviceAccountName"] = json!("default");
            assert_eq!(*spec, want);
        }
        other => panic!("{other:?}"),
    }
    w.o("billing-api").job = Some(CheckObs::Running);
    assert!(w.wait(10).tick().is_empty());
    w.o("billing-api").job = Some(CheckObs::Passed);
    assert!(w.wait(10).tick().is_empty());
    assert_eq!(w.step().stage, Stage::Quiescing);
    w.wait(60).tick();
    assert_eq!(
        w.result("billing-api").reason,
        "ready; validation job succeeded"
    );
}

#[test]
fn adoption_records_baselines_and_pauses() {
    let mut w = World::fresh(spec3());
    w.o("web").paused = false;
    w.o("web").template_hash = "w7".into();
    assert_eq!(
        w.tick(),
        [
            "Event Normal Adopted orders-api",
            "Event Normal Adopted billing-api",
            "Pause web",
            "Event Normal Adopted web",
        ]
    );
    assert_eq!(
        messages(&w.last, "Adopted")[2],
        "adopted web at template w7 as its deployed baseline"
    );
    assert_eq!(w.status.deployed["web"], "w7");
    assert_eq!(w.status.phase, GroupPhase::Idle);

    // A member added later is adopted, not stepped.
    w.spec.members.push(MemberSpec {
        deployment: "search".into(),
        ..MemberSpec::default()
    });
    w.generation = 2;
    w.obs.insert("search".into(), settled("search", "s1"));
    assert_eq!(w.wait(10).tick(), ["Event Normal Adopted search"]);
    assert_eq!(w.status.deployed["search"], "s1");
    assert_eq!(w.status.observed_generation, 2);
    assert_eq!(w.status.message, "idle: all 4 members deployed");

    // Changes after adoption run as steps.
    w.set_template("search", "s2");
    assert_eq!(w.wait(10).tick()[0], "Event Normal StepStarted search");

    // A removed member is forgotten (its Deployment left alone).
    w.spec.members.retain(|m| m.deployment != "web");
    w.generation = 3;
    let actions = w.wait(10).tick();
    assert!(
        actions.contains(&"Event Normal MemberRemoved web".to_string()),
        "{actions:?}"
    );
    assert!(!w.status.deployed.contains_key("web"));
}

#[test]
fn members_are_kept_paused_outside_their_step() {
    let mut w = World::new(spec3());
    w.o("web").paused = false;
    assert_eq!(
        w.wait(10).tick(),
        ["Pause web", "Event Warning NotPaused web"]
    );
    assert_eq!(
        messages(&w.last, "NotPaused"),
        ["Deployment web was unpaused outside its step; paused again"]
    );
    // Every time it is found unpaused (the effector dedups events).
    w.o("web").paused = false;
    assert_eq!(
        w.wait(10).tick(),
        ["Pause web", "Event Warning NotPaused web"]
    );

    // The stepping member is kept paused while warming, not once rolling.
    w.set_template("orders-api", "v2");
    w.wait(10).tick();
    w.o("orders-api").paused = false;
    assert_eq!(
        w.wait(10).tick(),
        [
            "Pause orders-api",
            "Event Warning NotPaused orders-api",
            r#"Warm orders-api ["orders-api:v2"] 3"#,
        ]
    );
    w.o("orders-api").warm_nodes = 3;
    assert_eq!(w.wait(10).tick(), ["Unpause orders-api"]);
    w.o("billing-api").paused = false;
    assert_eq!(
        w.wait(10).tick(),
        ["Pause billing-api", "Event Warning NotPaused billing-api"]
    );
}

#[test]
fn http_failures_are_retried_until_the_validation_timeout() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.drive_to_validating("orders-api", "v2");
    let check = format!("HttpCheck orders-api {URL}");
    w.o("orders-api").http = Some(CheckObs::Failed("503 Service Unavailable".into()));
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Warning CheckFailed orders-api".to_string(),
            check.clone()
        ]
    );
    assert_eq!(w.step().failure.as_deref(), Some("503 Service Unavailable"));
    // Same failure again: retried, no new event.
    assert_eq!(w.wait(10).tick(), std::slice::from_ref(&check));
    w.o("orders-api").http = Some(CheckObs::Running);
    assert_eq!(w.wait(10).tick(), std::slice::from_ref(&check));
    // Validating began 30s ago; the timeout is 5m.
    assert_eq!(w.wait(269).tick(), [check]);
    assert_eq!(
        w.wait(1).tick(),
        [
            "Event Warning StepFailed orders-api",
            "Pause orders-api",
            "ResumeKeda orders-api-so",
        ]
    );
    let reason = format!(
        "validation timed out after 5m0s: HTTP check {URL} failed: 503 Service Unavailable"
    );
    assert_eq!(
        messages(&w.last, "StepFailed"),
        [format!("orders-api: {reason}")]
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
    assert_eq!(w.status.message, format!("halted: orders-api: {reason}"));
    assert_eq!(w.status.halted.as_deref(), Some("orders-api"));
    let r = w.result("orders-api");
    assert_eq!(
        (r.result, r.reason.as_str()),
        (Outcome::Failed, reason.as_str())
    );
    assert_eq!(r.timings.roll_seconds, Some(10.0));
    // The member keeps its old deployed template.
    assert_eq!(w.status.deployed["orders-api"], "v1");
}

#[test]
fn readiness_is_part_of_validation() {
    let mut w = World::new(spec3());
    w.drive_to_validating("orders-api", "v2");
    // The check passes but a pod went unready.
    w.o("orders-api").http = Some(CheckObs::Passed);
    w.o("orders-api").available = 2;
    assert!(w.wait(10).tick().is_empty());
    assert_eq!(w.step().stage, Stage::Validating);
    w.wait(290).tick();
    assert_eq!(
        w.result("orders-api").reason,
        "validation timed out after 5m0s: 2/3 replicas available"
    );
}

#[test]
fn a_failed_job_fails_the_step_at_once() {
    let mut w = World::new(spec3());
    w.drive_to_validating("billing-api", "v2");
    w.o("billing-api").job = Some(CheckObs::Failed("BackoffLimitExceeded".into()));
    assert_eq!(
        w.wait(5).tick(),
        [
            "Event Warning StepFailed billing-api",
            "Pause billing-api",
            "ResumeKeda billing-api-so",
        ]
    );
    assert_eq!(
        w.result("billing-api").reason,
        "validation job billing-api-validate-v2 failed: BackoffLimitExceeded"
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
}

#[test]
fn rollout_timeout_fails_the_step() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    w.o("web").warm_nodes = 3;
    w.wait(10).tick();
    w.o("web").updated = 1;
    w.o("web").observed_generation = w.o("web").generation;
    assert!(w.wait(899).tick().is_empty());
    assert_eq!(
        w.wait(1).tick(),
        [
            "Event Warning StepFailed web",
            "Pause web",
            "ResumeKeda web-so"
        ]
    );
    assert_eq!(
        w.result("web").reason,
        "rollout did not complete within 15m0s: 1/3 replicas updated, 3/3 available"
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
}

#[test]
fn progress_deadline_fails_the_step_once_the_controller_saw_the_unpause() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    w.o("web").warm_nodes = 3;
    w.wait(10).tick();
    // Stale condition: the controller has not observed the unpause.
    w.o("web").progress_deadline_exceeded = true;
    assert!(w.wait(10).tick().is_empty());
    w.o("web").observed_generation = w.o("web").generation;
    w.wait(10).tick();
    assert_eq!(
        w.result("web").reason,
        "rollout exceeded its progress deadline (ProgressDeadlineExceeded)"
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
}

mod changes;
mod failures;
