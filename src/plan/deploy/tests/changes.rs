//! Restarts, changes mid-step, bad input and idempotence.

use super::*;

#[test]
fn a_restarted_coordinator_resumes_from_the_status() {
    let mut w = World::new(spec3());
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").http = Some(CheckObs::Failed("timeout".into()));
    w.wait(10).tick();

    // Restart: status through JSON; the effector's check results are gone.
    let json = serde_json::to_string(&w.status).unwrap();
    w.status = serde_json::from_str(&json).unwrap();
    w.o("orders-api").http = None;
    let before = w.status.clone();
    assert_eq!(w.wait(10).tick(), [format!("HttpCheck orders-api {URL}")]);
    assert_eq!(w.status, before);
    // The last failure survived the restart and ends up in the reason.
    w.wait(280).tick();
    assert!(
        w.result("orders-api")
            .reason
            .ends_with("HTTP check http://orders-api.shop.svc/healthz failed: timeout"),
        "{}",
        w.result("orders-api").reason
    );

    // A Job step restarted in Validating re-creates (or finds) its Job.
    let mut w = World::new(spec3());
    w.drive_to_validating("billing-api", "v2");
    w.o("billing-api").job = Some(CheckObs::Running);
    assert!(w.wait(10).tick().is_empty());
    let json = serde_json::to_vec(&w.status).unwrap();
    w.status = serde_json::from_slice(&json).unwrap();
    w.o("billing-api").job = None;
    assert_eq!(
        w.wait(10).tick(),
        ["CreateJob billing-api billing-api-validate-v2"]
    );
    assert_eq!(w.step().stage, Stage::Validating);

    // Restart during Warming: keeps the original start, keeps warming.
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    let started = w.step().started;
    w.status = serde_json::from_value(serde_json::to_value(&w.status).unwrap()).unwrap();
    assert_eq!(w.wait(10).tick(), [r#"Warm web ["web:v2"] 3"#]);
    assert_eq!(w.step().started, started);
}

#[test]
fn a_template_change_while_warming_restarts_the_step() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    w.set_template("web", "v3");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Normal TemplateChanged web",
            r#"Warm web ["web:v3"] 3"#
        ]
    );
    assert_eq!(
        messages(&w.last, "TemplateChanged"),
        ["web: template changed from v2 to v3 while warming; restarting the step"]
    );
    let step = w.step();
    assert_eq!(
        (step.template_hash.as_str(), step.stage),
        ("v3", Stage::Warming)
    );
    assert_eq!(step.stage_started, w.now);
    assert_eq!(step.keda_paused.as_deref(), Some("web-so"));
}

#[test]
fn a_template_change_while_validating_repauses_and_rewarms() {
    let mut w = World::new(spec3());
    w.drive_to_validating("orders-api", "v2");
    w.o("orders-api").http = Some(CheckObs::Failed("500".into()));
    w.wait(10).tick();
    w.set_template("orders-api", "v3");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Normal TemplateChanged orders-api",
            "Pause orders-api",
            r#"Warm orders-api ["orders-api:v3"] 3"#,
        ]
    );
    let step = w.step().clone();
    assert_eq!(step.stage, Stage::Warming);
    assert_eq!(step.failure, None);
    assert_eq!(step.timings.roll_seconds, None);
    assert_eq!(step.keda_paused.as_deref(), Some("orders-api-so"));
    // It finishes at v3, with KEDA resumed once.
    w.o("orders-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("orders-api");
    w.o("orders-api").http = Some(CheckObs::Passed);
    w.wait(10).tick();
    let actions = w.wait(60).tick();
    assert_eq!(
        actions,
        [
            "Pause orders-api",
            "ResumeKeda orders-api-so",
            "Event Normal StepSucceeded orders-api"
        ]
    );
    assert_eq!(w.status.deployed["orders-api"], "v3");
}

#[test]
fn a_missing_scaled_object_does_not_block_the_step() {
    let mut w = World::new(spec3());
    w.o("web").scaled_object = None;
    w.set_template("web", "v2");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Normal StepStarted web",
            "Event Warning NoScaledObject web",
            r#"Warm web ["web:v2"] 3"#,
        ]
    );
    assert_eq!(w.step().keda_paused, None);
    w.o("web").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("web");
    w.wait(10).tick();
    assert_eq!(
        w.wait(60).tick(),
        ["Pause web", "Event Normal StepSucceeded web"]
    );

    // A ScaledObject someone else paused is left to them.
    w.o("web").scaled_object = Some(ScaledObs {
        name: "web-so".into(),
        paused: true,
    });
    w.set_template("web", "v3");
    w.wait(10).tick();
    assert_eq!(w.step().keda_paused, None);
    assert_eq!(
        w.last.iter().map(show).collect::<Vec<_>>(),
        ["Event Normal StepStarted web", r#"Warm web ["web:v3"] 3"#]
    );
}

#[test]
fn warming_gives_up_without_nodes_or_after_its_timeout() {
    let mut w = World::new(spec3());
    w.o("web").eligible_nodes = 0;
    w.set_template("web", "v2");
    assert_eq!(
        w.wait(10).tick(),
        [
            "Event Normal StepStarted web",
            "PauseKeda web-so",
            "Event Warning NoEligibleNodes web",
            "Unpause web",
        ]
    );
    let mut w = World::new(spec3());
    w.o("web").eligible_nodes = 2;
    w.set_template("web", "v2");
    assert_eq!(w.wait(10).tick()[2], r#"Warm web ["web:v2"] 2"#);
    w.o("web").warm_nodes = 1;
    assert_eq!(w.wait(599).tick(), [r#"Warm web ["web:v2"] 2"#]);
    assert_eq!(
        w.wait(1).tick(),
        ["Event Warning WarmTimeout web", "Unpause web"]
    );
    assert_eq!(
        messages(&w.last, "WarmTimeout"),
        ["web: 1/2 nodes warm after 10m0s; rolling out anyway"]
    );
    assert_eq!(w.step().timings.warm_seconds, Some(600.0));
}

#[test]
fn a_missing_member_deployment_makes_the_group_invalid() {
    let mut w = World::new(spec3());
    let web = w.obs.remove("web").unwrap();
    w.o("billing-api").paused = false;
    assert_eq!(w.wait(10).tick(), ["Event Warning Invalid -"]);
    assert_eq!(w.status.phase, GroupPhase::Invalid);
    assert_eq!(
        w.status.message,
        "member web: no Deployment web in this namespace"
    );
    // No repeat event, and Invalid touches no Deployment.
    assert!(w.wait(10).tick().is_empty());
    w.obs.insert(
        "web".into(),
        MemberObs {
            exists: false,
            ..MemberObs::default()
        },
    );
    assert!(w.wait(10).tick().is_empty());
    // Back: normal processing resumes.
    w.obs.insert("web".into(), web);
    assert_eq!(
        w.wait(10).tick(),
        ["Pause billing-api", "Event Warning NotPaused billing-api"]
    );
    assert_eq!(w.status.phase, GroupPhase::Idle);
}

#[test]
fn a_member_deleted_mid_step_fails_the_step() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    w.o("web").warm_nodes = 3;
    w.wait(10).tick();
    let web = w.obs.remove("web").unwrap();
    assert_eq!(
        w.wait(10).tick(),
        ["Event Warning StepFailed web", "ResumeKeda web-so"]
    );
    assert_eq!(
        w.result("web").reason,
        "Deployment web was deleted during the step"
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
    // Next look: the Deployment is missing, so Invalid; the halt survives.
    assert_eq!(w.wait(10).tick(), ["Event Warning Invalid -"]);
    assert_eq!(w.status.halted.as_deref(), Some("web"));
    // Recreated as it was (unpaused, failed template): paused, still halted.
    w.obs.insert("web".into(), web);
    assert_eq!(
        w.wait(10).tick(),
        ["Pause web", "Event Warning NotPaused web"]
    );
    assert_eq!(w.status.phase, GroupPhase::Halted);
}

#[test]
fn spec_errors_name_the_member() {
    let err = |spec: &DeployGroupSpec| validate(spec).unwrap_err().to_string();
    let mut spec = spec3();
    spec.members.push(MemberSpec {
        deployment: "orders-api".into(),
        ..MemberSpec::default()
    });
    assert_eq!(
        err(&spec),
        "member orders-api appears at positions 1 and 4; a deploy order must name each Deployment once"
    );
    assert_eq!(
        err(&DeployGroupSpec::default()),
        "spec.members is empty; a DeployGroup needs at least one member"
    );
    let mut spec = spec3();
    spec.members[1].deployment = String::new();
    assert_eq!(err(&spec), "member at position 2: deployment name is empty");
    let mut spec = spec3();
    spec.members[0].http_check.as_mut().unwrap().url = "ftp://x/y".into();
    assert_eq!(
        err(&spec),
        "member orders-api: httpCheck.url \"ftp://x/y\" must be an http or https URL with a host"
    );
    let mut spec = spec3();
    spec.members[0].job = Some(job_spec());
    assert_eq!(
        err(&spec),
        "member orders-api: set httpCheck or job, not both"
    );
    let mut spec = spec3();
    spec.members[1].job = Some(json!({"parallelism": 1}));
    assert_eq!(
        err(&spec),
        "member billing-api: job is not a valid batch/v1 JobSpec: template.spec.containers is empty"
    );
    spec.members[1].job = Some(json!({"parallelism": "two"}));
    assert!(
        err(&spec)
            .starts_with("member billing-api: job is not a valid batch/v1 JobSpec: invalid type"),
        "{}",
        err(&spec)
    );
    assert_eq!(validate(&spec3()), Ok(()));
}

/// A member Job that would run as another ServiceAccount, or elsewhere,
/// makes the group Invalid, naming the field; the group's own account
/// is fine, and every Job is created as that account.
#[test]
fn a_job_naming_another_service_account_or_namespace_is_invalid() {
    let err = |spec: &DeployGroupSpec| validate(spec).unwrap_err().to_string();
    let with_pod = |field: &str, value: serde_json::Value| {
        let mut spec = spec3();
        spec.members[1].job.as_mut().unwrap()["template"]["spec"][field] = value;
        spec
    };
    assert_eq!(
        err(&with_pod("serviceAccountName", json!("admin"))),
        "member billing-api: spec.members[1].job.template.spec.serviceAccountName is \"admin\"; \
         validation Jobs run as spec.validationServiceAccount (\"default\"): remove the field \
         or name that ServiceAccount there"
    );
    // The deprecated alias the API server still honours.
    assert_eq!(
        err(&with_pod("serviceAccount", json!("admin"))),
        "member billing-api: spec.members[1].job.template.spec.serviceAccount is \"admin\"; \
         validation Jobs run as spec.validationServiceAccount (\"default\"): remove the field \
         or name that ServiceAccount there"
    );
    let mut spec = with_pod("serviceAccountName", json!("smoke"));
    spec.validation_service_account = "smoke".into();
    assert_eq!(validate(&spec), Ok(()));
    assert_eq!(
        validate(&with_pod("serviceAccountName", json!("default"))),
        Ok(())
    );
    // Empty is unset to the API server; the Job gets the group's account.
    assert_eq!(validate(&with_pod("serviceAccountName", json!(""))), Ok(()));
    let mut spec = spec3();
    spec.members[1].job.as_mut().unwrap()["template"]["metadata"] =
        json!({"namespace": "kube-system"});
    assert_eq!(
        err(&spec),
        "member billing-api: spec.members[1].job.template.metadata.namespace is set; \
         a validation Job always runs in the DeployGroup's namespace: remove the field"
    );
    for bad in ["", "Admin", "a b", "-x", "x..y"] {
        let mut spec = spec3();
        spec.validation_service_account = bad.into();
        assert_eq!(
            err(&spec),
            format!(
                "spec.validationServiceAccount {bad:?} is not a ServiceAccount name \
                 (lower case letters, digits, '-' and '.', at most 253)"
            )
        );
    }

    // The Job is created as the group's account.
    let mut spec = spec3();
    spec.validation_service_account = "smoke-runner".into();
    let mut w = World::new(spec);
    w.set_template("billing-api", "v2");
    w.wait(10).tick();
    w.o("billing-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("billing-api");
    w.wait(10).tick();
    match w.last.as_slice() {
        [Action::CreateJob { spec, .. }] => {
            assert_eq!(
                spec["template"]["spec"]["serviceAccountName"],
                "smoke-runner"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// A check URL the policy refuses makes the group Invalid before anything
/// is adopted or checked; the operator's opt-in lets the same URL through.
#[test]
fn a_check_url_outside_the_cluster_is_invalid_unless_allowed() {
    let mut spec = spec3();
    let url = "http://status.example.com/healthz";
    spec.members[0].http_check.as_mut().unwrap().url = url.into();
    let mut w = World::fresh(spec.clone());
    assert_eq!(w.tick(), ["Event Warning Invalid -"]);
    assert_eq!(w.status.phase, GroupPhase::Invalid);
    assert_eq!(
        w.status.message,
        "member orders-api: spec.members[0].httpCheck.url \"http://status.example.com/healthz\" \
         is refused: host status.example.com is not an in-cluster Service name \
         (<service>.<namespace>.svc or <service>.<namespace>.svc.cluster.local); the \
         coordinator fetches other hosts only when allowed with --http-check-allow-host"
    );
    assert!(w.status.deployed.is_empty());
    assert!(w.wait(10).tick().is_empty());

    let mut w = World::fresh(spec);
    let allow = vec!["*.example.com".parse().unwrap()];
    w.checks = HttpCheckPolicy::new("cluster.local", allow).unwrap();
    w.tick();
    assert_eq!(w.status.phase, GroupPhase::Idle);
    w.set_template("orders-api", "v2");
    w.wait(10).tick();
    w.o("orders-api").warm_nodes = 3;
    w.wait(10).tick();
    w.rolled_out("orders-api");
    let actions = w.wait(10).tick();
    assert!(
        actions.contains(&format!("HttpCheck orders-api {url}")),
        "{actions:?}"
    );
}

#[test]
fn an_invalid_spec_freezes_the_group_until_fixed() {
    let mut w = World::new(spec3());
    w.set_template("web", "v2");
    w.wait(10).tick();
    let good = w.spec.clone();
    w.spec.members.push(w.spec.members[0].clone());
    w.generation = 2;
    w.o("web").warm_nodes = 3;
    assert_eq!(w.wait(10).tick(), ["Event Warning Invalid -"]);
    assert_eq!(w.status.phase, GroupPhase::Invalid);
    assert_eq!(w.status.observed_generation, 2);
    assert_eq!(w.step().stage, Stage::Warming);
    assert!(w.wait(10).tick().is_empty());
    w.spec = good;
    w.generation = 3;
    assert_eq!(w.wait(10).tick(), ["Unpause web"]);
    assert_eq!(w.status.phase, GroupPhase::Stepping);
}

#[test]
fn deciding_twice_gives_the_same_status_and_no_repeat_events() {
    let mut w = World::new(spec3());
    w.set_template("orders-api", "v2");
    let mut checkpoints = Vec::new();
    // Each stage: the same inputs twice give the same decision; feeding the
    // output back gives the same status and no transition events.
    let mut check = |w: &World| {
        let a = w.decision();
        assert_eq!(a, w.decision());
        let again = decide(&w.spec, &w.checks, w.generation, &a.status, &w.obs, w.now);
        assert_eq!(again.status, a.status);
        assert!(messages(&again.actions, "StepStarted").is_empty());
        checkpoints.push(a.status.step.as_ref().map(|s| s.stage));
    };
    check(&w);
    w.wait(10).tick();
    check(&w);
    w.o("orders-api").warm_nodes = 3;
    w.wait(10).tick();
    check(&w);
    w.rolled_out("orders-api");
    w.wait(10).tick();
    w.o("orders-api").http = Some(CheckObs::Failed("x".into()));
    check(&w);
    let d = w.decision();
    let again = decide(&w.spec, &w.checks, w.generation, &d.status, &w.obs, w.now);
    assert_eq!(
        again.actions.iter().map(show).collect::<Vec<_>>(),
        [format!("HttpCheck orders-api {URL}")]
    );
    w.o("orders-api").http = Some(CheckObs::Passed);
    w.wait(10).tick();
    check(&w);
    assert_eq!(
        checkpoints,
        [
            Some(Stage::Warming),
            Some(Stage::Warming),
            Some(Stage::Rolling),
            Some(Stage::Validating),
            Some(Stage::Quiescing),
        ]
    );
}

#[test]
fn job_names_fit_in_63_characters() {
    assert_eq!(job_name("web", "0123456789"), "web-validate-01234567");
    let long = "a".repeat(70);
    let name = job_name(&long, "0123456789");
    assert_eq!(name.len(), 63);
    assert!(name.ends_with("-validate-01234567"));
    let dashy = format!("{}-b", "a".repeat(44));
    assert_eq!(
        job_name(&dashy, "0123456789"),
        format!("{}-validate-01234567", "a".repeat(44))
    );
}

#[test]
fn member_obs_from_a_deployment() {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "generation": 4},
        "spec": {
            "paused": true,
            "selector": {},
            "template": {"spec": {
                "initContainers": [{"name": "i", "image": "init:1"}],
                "containers": [{"name": "c", "image": "web:2"}]}}
        },
        "status": {"observedGeneration": 3, "replicas": 1, "updatedReplicas": 0,
            "availableReplicas": 1, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded"}]}
    }))
    .unwrap();
    let o = MemberObs::from_deployment(&d);
    assert!(o.exists && o.paused && o.progress_deadline_exceeded);
    assert_eq!(o.images, ["init:1", "web:2"]);
    assert_eq!(
        o.template_hash,
        template_hash(&d.spec.as_ref().unwrap().template)
    );
    assert_eq!((o.generation, o.observed_generation), (4, 3));
    assert_eq!(
        (o.replicas, o.status_replicas, o.updated, o.available),
        (1, 1, 0, 1)
    );
    assert!(!o.rollout_complete());
}

#[test]
fn summary_lists_the_step_and_results() {
    let mut w = World::new(spec3());
    w.drive_to_validating("orders-api", "v2");
    let text = summary(&w.status);
    assert!(
        text.starts_with(
            "Stepping: stepping orders-api: validating\n  step: orders-api template v2 \
             stage validating since 2025-01-01T00:00:30Z (step started 2025-01-01T00:00:10Z)"
        ),
        "{text}"
    );
    assert!(text.contains("[warm 10.0s, rollout 10.0s]"), "{text}");
}
