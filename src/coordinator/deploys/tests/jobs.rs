//! Validation Jobs: created per step, replaced when left from an earlier
//! step, and what a Job that cannot start reports.

use super::*;

const JOB_IMAGE: &str = "reg.io/shop/smoke:1";

fn job_spec() -> Value {
    json!({"backoffLimit": 0,
           "template": {"spec": {"restartPolicy": "Never",
                                 "containers": [{"name": "smoke", "image": JOB_IMAGE,
                                                 "args": ["--target", "orders"]}]}}})
}

/// Starts a one-member group with a Job check, changes the member and
/// waits for the Job's creation; returns the harness, the Job's name and
/// the creation request.
async fn job_step(api: &MockApi) -> (Harness, String, Recorded) {
    let (h, name) = job_group(api, json!({})).await;
    let post = wait_job_post(api, 1).await;
    assert_eq!(post.path, format!("/apis/batch/v1/namespaces/{NS}/jobs"));
    let st = wait_status(api, GROUP_NAME, "validating", |s| {
        s["step"]["stage"] == "Validating"
    })
    .await;
    assert_eq!(st["step"]["jobName"], name);
    let step = timestamp(&st["step"]["started"]).timestamp().to_string();
    assert_eq!(
        post.body.clone().unwrap(),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "namespace": NS,
                            "labels": {"prewarm.dev/deploy-group": GROUP_NAME,
                                       "prewarm.dev/member": "orders",
                                       STEP_LABEL: step}},
               "spec": job_as("default")})
    );
    assert!(api.object(JOBS, NS, &name).is_some());
    (h, name, post)
}

/// The member's JobSpec as created: run as `service_account`.
fn job_as(service_account: &str) -> Value {
    let mut spec = job_spec();
    spec["template"]["spec"]["serviceAccountName"] = json!(service_account);
    spec
}

/// The `n`th Job creation request.
async fn wait_job_post(api: &MockApi, n: usize) -> Recorded {
    let posts = |r: &[Recorded]| -> Vec<Recorded> {
        r.iter()
            .filter(|r| r.method == "POST" && r.path.contains("/jobs"))
            .cloned()
            .collect()
    };
    let created = api.wait_for(WAIT, |r| posts(r).len() >= n).await;
    assert!(created, "no Job created: {:#?}", api.writes());
    posts(&api.requests()).remove(n - 1)
}

/// A one-member group with a Job check, adopted, then changed; returns the
/// harness and the name of the changed template's Job.
async fn job_group(api: &MockApi, overrides: Value) -> (Harness, String) {
    job_group_with(api, job_spec(), overrides).await
}

async fn job_group_with(api: &MockApi, job: Value, overrides: Value) -> (Harness, String) {
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "job": job}]),
            overrides,
        ),
    );
    roll_unpaused(api);
    let h = Harness::start(api, true, vec![snap("n1", "apps", &[ORDERS_2])]);
    wait_status(api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(api, "orders", ORDERS_2);
    let name = deploy::job_name("orders", &hash_of(&template("orders", ORDERS_2)));
    (h, name)
}

/// The validation Job runs as the group's `validationServiceAccount`, in
/// the group's namespace: a `metadata` smuggled into the JobSpec does not
/// move it (a JobSpec has none; it is dropped).
#[tokio::test]
async fn a_validation_job_runs_as_the_groups_service_account_in_its_namespace() {
    let api = api();
    let mut job = job_spec();
    job["metadata"] = json!({"namespace": "kube-system"});
    let overrides = json!({"validationServiceAccount": "smoke-runner"});
    let (h, name) = job_group_with(&api, job, overrides).await;
    let post = wait_job_post(&api, 1).await;
    assert_eq!(post.path, format!("/apis/batch/v1/namespaces/{NS}/jobs"));
    let body = post.body.clone().unwrap();
    assert_eq!(body["metadata"]["namespace"], NS);
    assert_eq!(body["spec"], job_as("smoke-runner"), "{body:#}");
    let created = api.object(JOBS, NS, &name).unwrap();
    assert_eq!(
        created["spec"]["template"]["spec"]["serviceAccountName"],
        "smoke-runner"
    );
    assert!(api.object(JOBS, "kube-system", &name).is_none());
    let st = complete_job(&api, &name).await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    h.stop().await;
}

/// A member Job naming another ServiceAccount, or a namespace, makes the
/// group Invalid with the field named; no Job is created and no member is
/// touched.
#[tokio::test]
async fn a_job_naming_another_service_account_or_namespace_is_invalid() {
    let mut admin = job_spec();
    admin["template"]["spec"]["serviceAccountName"] = json!("admin");
    let mut elsewhere = job_spec();
    elsewhere["template"]["metadata"] = json!({"namespace": "kube-system"});
    for (job, message) in [
        (
            admin,
            "member orders: spec.members[0].job.template.spec.serviceAccountName is \"admin\"; \
             validation Jobs run as spec.validationServiceAccount (\"default\"): remove the \
             field or name that ServiceAccount there",
        ),
        (
            elsewhere,
            "member orders: spec.members[0].job.template.metadata.namespace is set; a \
             validation Job always runs in the DeployGroup's namespace: remove the field",
        ),
    ] {
        let api = api();
        api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
        api.put(
            GROUPS,
            group(
                GROUP_NAME,
                json!([{"deployment": "orders", "job": job}]),
                json!({}),
            ),
        );
        let h = Harness::start(&api, true, vec![snap("n1", "apps", &[ORDERS_2])]);
        let st = wait_status(&api, GROUP_NAME, "invalid", |s| s["phase"] == "Invalid").await;
        assert_eq!(st["message"], message);
        assert_group_event(&api, GROUP_NAME, "Invalid", message);
        set_image(&api, "orders", ORDERS_2);
        let created = api
            .wait_for(QUIET / 3, |r| r.iter().any(|r| r.path.contains("/jobs")))
            .await;
        assert!(!created, "{:#?}", api.writes());
        assert!(member_writes(&api.requests()).is_empty());
        h.stop().await;
    }
}

/// A template deployed again (an earlier version, or a halted group's
/// validation fixed) finds its validation Job left from an earlier step:
/// that Job is deleted, not taken for this step's result, and the step's
/// own Job decides. On a real cluster the shipped RBAC lacked `delete` on
/// Jobs, so the step sat in Validating until its timeout.
#[tokio::test]
async fn a_validation_job_left_from_an_earlier_step_is_replaced() {
    let api = api();
    let name = deploy::job_name("orders", &hash_of(&template("orders", ORDERS_2)));
    api.put(
        JOBS,
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "namespace": NS, "labels": {STEP_LABEL: "1000"}},
               "spec": job_spec(),
               "status": {"failed": 1, "conditions": [
                   {"type": "Failed", "status": "True", "message": "an earlier step's verdict"}]}}),
    );
    let (h, _) = job_group(&api, json!({})).await;
    let ours = wait_job_post(&api, 2).await;
    let reqs = api.requests();
    let deleted = reqs
        .iter()
        .find(|r| {
            r.method == "DELETE" && r.path == format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}")
        })
        .unwrap_or_else(|| panic!("old Job not deleted: {:#?}", api.writes()));
    assert_eq!(deleted.code, 200, "{deleted:#?}");
    assert!(deleted.at < ours.at);
    let st = status(&api, GROUP_NAME);
    assert_eq!(st["step"]["stage"], "Validating", "{st:#}");
    let step = timestamp(&st["step"]["started"]).timestamp().to_string();
    assert_eq!(
        api.object(JOBS, NS, &name).unwrap()["metadata"]["labels"][STEP_LABEL],
        step
    );
    let st = complete_job(&api, &name).await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    h.stop().await;
}

/// A member with a `job` check: the Job is created once for the step,
/// labelled with it, and its completion passes validation.
#[tokio::test]
async fn a_validation_job_is_created_and_its_completion_passes_the_step() {
    let api = api();
    let (h, name, _) = job_step(&api).await;
    // Not done yet: the step waits and the Job is not created again.
    let again = api
        .wait_for(Duration::from_millis(700), |r| {
            r.iter()
                .filter(|r| r.method == "POST" && r.path.contains("/jobs"))
                .count()
                > 1
        })
        .await;
    assert!(!again, "Job created twice: {:#?}", api.writes());
    assert_eq!(status(&api, GROUP_NAME)["step"]["stage"], "Validating");
    assert!(!member_writes(&api.requests()).contains(&pause("orders")));

    let st = complete_job(&api, &name).await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    let r = result_of(&st, "orders");
    assert_eq!(r["reason"], "ready; validation job succeeded");
    assert_eq!(
        st["deployed"]["orders"],
        hash_of(&template("orders", ORDERS_2))
    );
    assert_eq!(
        member_writes(&api.requests()),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    let jobs: Vec<Recorded> = api
        .writes()
        .into_iter()
        .filter(|r| r.path.contains("/jobs"))
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    h.stop().await;
}

/// A validation Job that cannot be started (here: an install whose RBAC
/// lacks `delete` on Jobs, as the shipped one did) makes the step's Event
/// and its timeout say why, not "has not completed".
#[tokio::test]
async fn a_validation_job_that_cannot_be_started_says_why() {
    let api = MockApi::with_policy(deploygroup_policy().without("jobs.batch", "delete"));
    let name = deploy::job_name("orders", &hash_of(&template("orders", ORDERS_2)));
    api.put(
        JOBS,
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "namespace": NS, "labels": {STEP_LABEL: "1000"}},
               "spec": job_spec()}),
    );
    let (h, _) = job_group(&api, json!({"validationTimeout": "2s"})).await;
    let st = wait_status(&api, GROUP_NAME, "halted", |s| s["phase"] == "Halted").await;
    let denied = format!(
        "jobs.batch \"{name}\" is forbidden: User \"system:serviceaccount:prewarm-system:prewarm-coordinator\" \
         cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"{NS}\""
    );
    let why = format!("validation job {name} could not be started: {denied}");
    assert_eq!(
        result_of(&st, "orders")["reason"],
        format!("validation timed out after 2s: {why}")
    );
    assert_deployment_event(
        &api,
        "orders",
        true,
        "CheckBlocked",
        &format!("orders: {why}; retrying"),
    );
    assert!(!api.forbidden().is_empty());
    h.stop_refused().await;
}

/// A Job that fails halts the group at once, with the Job's message.
#[tokio::test]
async fn a_failed_validation_job_halts_the_group_at_once() {
    let api = api();
    let (h, name, post) = job_step(&api).await;
    api.update(JOBS, NS, &name, |j| {
        j["status"] = json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]});
    })
    .unwrap();
    let failed_at = Instant::now();
    let st = wait_status(&api, GROUP_NAME, "halted", |s| s["phase"] == "Halted").await;
    // validationTimeout is a minute: this is the Job's verdict, not a timeout.
    assert!(failed_at.elapsed() < Duration::from_secs(5));
    let reason = format!(
        "validation job {name} failed: Job {name} failed: \
         Job has reached the specified backoff limit"
    );
    assert_eq!(st["message"], format!("halted: orders: {reason}"));
    let r = result_of(&st, "orders");
    assert_eq!(r["result"], "Failed");
    assert_eq!(r["reason"], reason);
    assert_deployment_event(
        &api,
        "orders",
        true,
        "StepFailed",
        &format!("orders: {reason}"),
    );
    assert_eq!(
        member_writes(&api.requests()),
        vec![
            keda("orders-so", true),
            unpause("orders"),
            pause("orders"),
            keda("orders-so", false),
        ]
    );
    let pause_at = writes_to(&api.requests(), &deployment_path("orders"))[1].at;
    assert!(pause_at > post.at);
    h.stop().await;
}

/// Plays the Job controller: the Job succeeds; returns the group's status
/// once the member's step has succeeded.
async fn complete_job(api: &MockApi, name: &str) -> Value {
    api.update(JOBS, NS, name, |j| {
        j["status"] = json!({"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}]});
    })
    .unwrap();
    wait_status(api, GROUP_NAME, "succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await
}
