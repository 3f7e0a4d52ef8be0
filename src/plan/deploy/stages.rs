//! The step's stages: warming, rolling out, validating, quiescing and
//! rolling back, and how a step fails or halts the group.

use super::*;

impl Ctx<'_> {
    pub(super) fn advance(&mut self, step: StepStatus) -> Flow {
        let m = step.member.clone();
        let Some(o) = self.obs(&m) else {
            let reason = format!("Deployment {m} was deleted during the step");
            if step.stage == Stage::RollingBack {
                self.rollback_incomplete(step, reason);
            } else {
                self.fail(step, reason);
            }
            return Flow::Next;
        };
        if step.stage != Stage::RollingBack && o.template_hash != step.template_hash {
            self.restart(step, o);
            return Flow::Next;
        }
        match step.stage {
            Stage::Warming => self.warming(step, o),
            Stage::Rolling => self.rolling(step, o),
            Stage::Validating => self.validating(step, o),
            Stage::Quiescing => self.quiescing(step),
            Stage::RollingBack => self.rolling_back(step, o),
        }
    }

    /// A new template mid-step: start over at Warming, keeping the KEDA pause.
    fn restart(&mut self, step: StepStatus, o: &MemberObs) {
        let (m, from, to) = (step.member.as_str(), &step.template_hash, &o.template_hash);
        let message = format!(
            "{m}: template changed from {from} to {to} while {}; restarting the step",
            step.stage
        );
        self.note(m, "TemplateChanged", message);
        if matches!(
            step.stage,
            Stage::Rolling | Stage::Validating | Stage::Quiescing
        ) {
            self.set_paused(m, true);
        }
        self.st.step = Some(StepStatus {
            member: m.to_string(),
            template_hash: to.clone(),
            stage: Stage::Warming,
            started: self.now,
            stage_started: self.now,
            keda_paused: step.keda_paused.clone(),
            ..StepStatus::default()
        });
    }

    /// Moves the step to `stage`, recording how long the current one took.
    pub(super) fn next_stage(&mut self, mut step: StepStatus, stage: Stage) -> Flow {
        let took = Some(self.seconds_since(step.stage_started));
        match step.stage {
            Stage::Warming => step.timings.warm_seconds = took,
            Stage::Rolling => step.timings.roll_seconds = took,
            Stage::Validating => step.timings.validate_seconds = took,
            Stage::Quiescing | Stage::RollingBack => {}
        }
        step.stage = stage;
        step.stage_started = self.now;
        self.st.step = Some(step);
        Flow::Next
    }

    fn warming(&mut self, step: StepStatus, o: &MemberObs) -> Flow {
        let m = step.member.clone();
        let needed = (o.replicas.max(1) as usize).min(o.eligible_nodes);
        if o.images.is_empty() || (needed > 0 && o.warm_nodes >= needed) {
            return self.next_stage(step, Stage::Rolling);
        }
        if o.eligible_nodes == 0 {
            let message = format!("{m}: no eligible node to warm images on; rolling out cold");
            self.warn(&m, "NoEligibleNodes", message);
            return self.next_stage(step, Stage::Rolling);
        }
        if self.expired(step.stage_started, self.spec.warm_timeout) {
            let (warm, limit) = (o.warm_nodes, self.spec.warm_timeout);
            let message =
                format!("{m}: {warm}/{needed} nodes warm after {limit}; rolling out anyway");
            self.warn(&m, "WarmTimeout", message);
            return self.next_stage(step, Stage::Rolling);
        }
        let images = o.images.clone();
        self.actions.push(Action::Warm {
            deployment: m,
            images,
            nodes_needed: needed,
        });
        Flow::Stay
    }

    fn rolling(&mut self, mut step: StepStatus, o: &MemberObs) -> Flow {
        let m = step.member.clone();
        let running = !self.paused(&m);
        if running && o.rollout_complete() {
            let job = self.member(&m).and_then(|ms| ms.job.as_ref());
            step.job_name = job.map(|_| job_name(&m, &step.template_hash));
            return self.next_stage(step, Stage::Validating);
        }
        // A deadline condition counts only once the controller saw the unpause.
        if running && o.observed_generation >= o.generation && o.progress_deadline_exceeded {
            let reason = "rollout exceeded its progress deadline (ProgressDeadlineExceeded)";
            self.fail(step, reason.to_string());
            return Flow::Next;
        }
        if self.expired(step.stage_started, self.spec.rollout_timeout) {
            let reason = format!(
                "rollout did not complete within {}: {}/{} replicas updated, {}/{} available",
                self.spec.rollout_timeout, o.updated, o.replicas, o.available, o.replicas
            );
            self.fail(step, reason);
            return Flow::Next;
        }
        self.set_paused(&m, false);
        Flow::Stay
    }

    fn validating(&mut self, mut step: StepStatus, o: &MemberObs) -> Flow {
        let m = step.member.clone();
        let ms = self.member(&m);
        let http = ms.and_then(|s| s.http_check.as_ref());
        let job = ms.and_then(|s| s.job.as_ref());
        let ready = o.available == o.replicas;
        // None: passed; Some: what the check is waiting on.
        let waiting = if let Some(url) = http.map(|h| &h.url) {
            match &o.http {
                Some(CheckObs::Passed) => None,
                Some(CheckObs::Failed(msg)) => {
                    // Retried until the timeout; only a new failure text is news.
                    if step.failure.as_ref() != Some(msg) {
                        let message = format!("{m}: HTTP check {url} failed: {msg}; retrying");
                        self.warn(&m, "CheckFailed", message);
                        step.failure = Some(msg.clone());
                    }
                    Some(format!("HTTP check {url} failed: {msg}"))
                }
                Some(CheckObs::Running | CheckObs::Blocked(_)) | None => {
                    Some(match &step.failure {
                        Some(f) => format!("HTTP check {url} failed: {f}"),
                        None => format!("HTTP check {url} has not passed"),
                    })
                }
            }
        } else if job.is_some() {
            let hash = &step.template_hash;
            let name = step
                .job_name
                .get_or_insert_with(|| job_name(&m, hash))
                .clone();
            match &o.job {
                Some(CheckObs::Failed(msg)) => {
                    self.fail(step, format!("validation job {name} failed: {msg}"));
                    return Flow::Next;
                }
                Some(CheckObs::Passed) => None,
                Some(CheckObs::Blocked(why)) => {
                    // Retried until the timeout; only a new reason is news.
                    if step.failure.as_ref() != Some(why) {
                        let message = format!(
                            "{m}: validation job {name} could not be started: {why}; retrying"
                        );
                        self.warn(&m, "CheckBlocked", message);
                        step.failure = Some(why.clone());
                    }
                    Some(format!("validation job {name} could not be started: {why}"))
                }
                Some(CheckObs::Running) | None => {
                    Some(format!("validation job {name} has not completed"))
                }
            }
        } else {
            None
        };
        if ready && waiting.is_none() {
            step.failure = None;
            return self.next_stage(step, Stage::Quiescing);
        }
        if self.expired(step.stage_started, self.spec.validation_timeout) {
            let unready = format!("{}/{} replicas available", o.available, o.replicas);
            let why: Vec<String> = (!ready)
                .then_some(unready)
                .into_iter()
                .chain(waiting)
                .collect();
            let limit = self.spec.validation_timeout;
            self.fail(
                step,
                format!("validation timed out after {limit}: {}", why.join("; ")),
            );
            return Flow::Next;
        }
        if waiting.is_some() {
            if let Some(h) = http {
                let (deployment, url) = (m.clone(), h.url.clone());
                self.actions.push(Action::HttpCheck { deployment, url });
            }
            let not_started = matches!(o.job, None | Some(CheckObs::Blocked(_)));
            if let (Some(spec), true, Some(name)) = (job, not_started, &step.job_name) {
                let (deployment, name) = (m.clone(), name.clone());
                let spec = job_as(spec, &self.spec.validation_service_account);
                self.actions.push(Action::CreateJob {
                    deployment,
                    name,
                    spec,
                });
            }
        }
        self.st.step = Some(step);
        Flow::Stay
    }

    fn quiescing(&mut self, step: StepStatus) -> Flow {
        if !self.expired(step.stage_started, self.spec.quiesce) {
            return Flow::Stay;
        }
        let m = step.member.clone();
        self.set_paused(&m, true);
        self.resume_keda(&step);
        let hash = step.template_hash.clone();
        self.st.deployed.insert(m.clone(), hash.clone());
        let how = match self.member(&m) {
            Some(ms) if ms.http_check.is_some() => "ready; HTTP check passed",
            Some(ms) if ms.job.is_some() => "ready; validation job succeeded",
            _ => "ready",
        };
        self.record(&step, Outcome::Succeeded, how.to_string());
        let message = format!("{m}: template {hash} deployed ({})", step.timings);
        self.note(&m, "StepSucceeded", message);
        self.st.step = None;
        Flow::Next
    }

    fn rolling_back(&mut self, step: StepStatus, o: &MemberObs) -> Flow {
        let m = step.member.clone();
        let target = self.st.deployed.get(&m).cloned().unwrap_or_default();
        if o.template_hash == target && !self.paused(&m) && o.rollout_complete() {
            let reason = step.failure.clone().unwrap_or_default();
            self.set_paused(&m, true);
            self.resume_keda(&step);
            self.record(&step, Outcome::RolledBack, reason);
            let message = format!("{m}: rolled back to template {target}; group halted");
            self.note(&m, "RolledBack", message);
            self.st.step = None;
            self.st.halted = Some(m);
            return Flow::Next;
        }
        if self.expired(step.stage_started, self.spec.rollout_timeout) {
            let why = format!(
                "rollback did not complete within {}",
                self.spec.rollout_timeout
            );
            self.rollback_incomplete(step, why);
            return Flow::Next;
        }
        if o.template_hash == step.template_hash {
            let deployment = m.clone();
            self.actions.push(Action::Rollback { deployment });
        }
        self.set_paused(&m, false);
        Flow::Stay
    }

    /// Records a failure and either starts rolling back or halts. A
    /// rollback that cannot happen (no ReplicaSet holds the deployed
    /// template, e.g. a Deployment created paused) halts at once, with the
    /// member paused and its ScaledObject kept paused: the member is left on
    /// the failed template, which KEDA must not scale.
    pub(super) fn fail(&mut self, mut step: StepStatus, reason: String) {
        let m = step.member.clone();
        let can_roll_back = self.spec.rollback && self.obs(&m).is_some();
        let deployed = self.st.deployed.get(&m);
        let rollback_to = deployed
            .filter(|d| can_roll_back && **d != step.template_hash)
            .cloned();
        let target = self.obs(&m).is_some_and(|o| o.rollback_target);
        match rollback_to {
            Some(to) if target => {
                self.record(&step, Outcome::Failed, reason.clone());
                self.warn(
                    &m,
                    "StepFailed",
                    format!("{m}: {reason}; rolling back to template {to}"),
                );
                step.failure = Some(reason);
                self.next_stage(step, Stage::RollingBack);
            }
            Some(to) => {
                let why = format!(
                    "{reason}; cannot roll back: no ReplicaSet of {m} holds the deployed template {to}"
                );
                self.record(&step, Outcome::Failed, why.clone());
                let held = match &step.keda_paused {
                    Some(so) => format!(" and its ScaledObject {so} kept paused"),
                    None => String::new(),
                };
                let message = format!(
                    "{m}: {why}; group halted with {m} paused on template {}{held} until a new template is set",
                    step.template_hash
                );
                self.warn(&m, "StepFailed", message);
                self.st.keda_held = step.keda_paused.take();
                self.halt(step);
            }
            None => {
                self.record(&step, Outcome::Failed, reason.clone());
                self.warn(&m, "StepFailed", format!("{m}: {reason}"));
                self.halt(step);
            }
        }
    }

    fn rollback_incomplete(&mut self, step: StepStatus, why: String) {
        let m = step.member.clone();
        let reason = match &step.failure {
            Some(f) => format!("{f}; {why}"),
            None => why.clone(),
        };
        self.record(&step, Outcome::Failed, reason);
        self.warn(
            &m,
            "RollbackIncomplete",
            format!("{m}: {why}; group halted"),
        );
        self.halt(step);
    }

    pub(super) fn halt(&mut self, step: StepStatus) {
        self.set_paused(&step.member, true);
        self.resume_keda(&step);
        self.st.halted = Some(step.member);
        self.st.step = None;
    }

    /// Replaces the member's result; results stay in member order.
    pub(super) fn record(&mut self, step: &StepStatus, result: Outcome, reason: String) {
        let entry = MemberResult {
            member: step.member.clone(),
            template_hash: step.template_hash.clone(),
            result,
            reason,
            started: step.started,
            finished: self.now,
            timings: step.timings,
        };
        let members = &self.spec.members;
        let position = |m: &str| members.iter().position(|s| s.deployment == m);
        self.st.results.retain(|r| r.member != step.member);
        self.st.results.push(entry);
        self.st.results.sort_by_key(|r| position(&r.member));
    }
}

/// The member's JobSpec with its pod running as `service_account`
/// (validation already refused a template naming another).
fn job_as(spec: &serde_json::Value, service_account: &str) -> serde_json::Value {
    let mut spec = spec.clone();
    let pod = spec
        .pointer_mut("/template/spec")
        .and_then(|p| p.as_object_mut());
    if let Some(pod) = pod {
        pod.insert("serviceAccountName".into(), service_account.into());
    }
    spec
}
