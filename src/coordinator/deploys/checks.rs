//! Validation checks of a step (the member's HTTP check, its Job) and
//! what a rollback can restore.

use super::*;

/// What the API server said, without the client's wrapping.
pub(super) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Job status as a check result.
pub fn job_result(job: &Job) -> CheckObs {
    let status = job.status.as_ref();
    let cond = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == t && c.status == "True"))
    };
    if cond("Complete").is_some() || status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
        return CheckObs::Passed;
    }
    if let Some(c) = cond("Failed") {
        return CheckObs::Failed(format!(
            "Job {} failed: {}",
            job.metadata.name.clone().unwrap_or_default(),
            c.message
                .clone()
                .or(c.reason.clone())
                .unwrap_or_else(|| "no reason given".into())
        ));
    }
    CheckObs::Running
}

impl Deploys {
    /// Whether a ReplicaSet of `d` still holds the member's deployed
    /// template (what a rollback restores). Unknown (an API error) counts as
    /// yes: the rollback itself then reports what it finds.
    pub(super) async fn rollback_target(
        &self,
        ns: &str,
        d: &Deployment,
        status: &DeployGroupStatus,
        member: &str,
    ) -> bool {
        let (Some(uid), Some(deployed)) = (d.metadata.uid.as_deref(), status.deployed.get(member))
        else {
            return false;
        };
        let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        match rss.list(&ListParams::default()).await {
            Ok(list) => previous_template(&list.items, uid, deployed).is_some(),
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "ReplicaSets not read");
                true
            }
        }
    }

    /// Creates this step's validation Job; a Job of the same name left from
    /// an earlier step is deleted first (the next round creates ours).
    pub(super) async fn create_job(
        &self,
        ns: &str,
        key: &Key,
        deployment: &str,
        name: &str,
        spec: Value,
        step: &str,
    ) -> Result<(), kube::Error> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let job: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ns, "labels": {
                "prewarm.dev/deploy-group": key.1, "prewarm.dev/member": deployment,
                STEP_LABEL: step}},
            "spec": spec,
        }))
        .map_err(kube::Error::SerdeError)?;
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let old = jobs.get(name).await?;
                let old_step = old.metadata.labels.as_ref().and_then(|l| l.get(STEP_LABEL));
                if old_step.map(String::as_str) != Some(step) {
                    let dp = kube::api::DeleteParams::background();
                    jobs.delete(name, &dp).await?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn http_check(
        &self,
        key: &Key,
        group: &DeployGroup,
        status: &DeployGroupStatus,
        deployment: &str,
        url: String,
    ) {
        let Some(step) = status.step.as_ref() else {
            return;
        };
        let interval = group
            .spec
            .members
            .iter()
            .find(|m| m.deployment == deployment)
            .and_then(|m| m.http_check.as_ref())
            .map(|c| c.interval.0)
            .unwrap_or(Duration::from_secs(5));
        let step_key = format!("{}@{}", step.template_hash, step.started.timestamp());
        let ck = (key.0.clone(), key.1.clone(), deployment.to_string());
        {
            let Ok(mut checks) = self.checks.lock() else {
                return;
            };
            let h = checks.entry(ck.clone()).or_insert(HttpState {
                step: step_key.clone(),
                result: None,
                running: false,
                started: None,
            });
            if h.step != step_key {
                *h = HttpState {
                    step: step_key.clone(),
                    result: None,
                    running: false,
                    started: None,
                };
            }
            if h.running || h.started.is_some_and(|s| s.elapsed() < interval) {
                return;
            }
            h.running = true;
            h.started = Some(Instant::now());
        }
        let (http, checks, poke, key) = (
            self.http.clone(),
            self.checks.clone(),
            self.poke.clone(),
            key.clone(),
        );
        tokio::spawn(async move {
            let result = match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => CheckObs::Passed,
                Ok(r) if r.status().is_redirection() => CheckObs::Failed(redirected(&url, &r)),
                Ok(r) => CheckObs::Failed(format!("GET {url}: HTTP {}", r.status())),
                Err(e) => CheckObs::Failed(format!("GET {url}: {e}")),
            };
            if let Ok(mut c) = checks.lock() {
                if let Some(h) = c.get_mut(&ck).filter(|h| h.step == step_key) {
                    h.running = false;
                    h.result = Some(result);
                }
            }
            let _ = poke.send(key).await;
        });
    }
}

/// A check answered with a redirect fails: following it could take the
/// request to a host the policy refuses.
fn redirected(url: &str, r: &reqwest::Response) -> String {
    let location = r
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(|l| l.chars().take(200).collect::<String>());
    let to = location
        .map(|l| format!(", redirecting to {l}"))
        .unwrap_or_default();
    format!(
        "GET {url}: HTTP {}{to}; redirects are not followed",
        r.status()
    )
}
