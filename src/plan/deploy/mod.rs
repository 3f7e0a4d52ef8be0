//! Sequential deploys of a DeployGroup: a pure state machine.
//!
//! Members are Deployments kept paused between steps. When a member's pod
//! template changes, one step runs for it, in member order:
//!
//! 1. **Warming**: publish warm intents for the new images until enough
//!    eligible nodes hold them (or none are eligible, or `warmTimeout`).
//! 2. **Rolling**: unpause; wait until the rollout is complete.
//! 3. **Validating**: readiness plus the member's HTTP check or Job.
//! 4. **Quiescing**: let it run for `quiesce`, then pause it again, record
//!    the template as deployed and go on to the next changed member.
//!
//! The member's KEDA ScaledObject is paused for the whole step. A failed step
//! halts the group (optionally rolling the member back first) until the
//! member gets a new template or the DeployGroup spec changes.
//!
//! [`decide`] is level-based: it takes the previous status, what the
//! coordinator observes now and the time, and returns the next status plus
//! actions. Actions other than Events are idempotent and re-issued while
//! still needed; Events mark transitions (and `NotPaused`, which the effector
//! deduplicates). No I/O and no clock here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;

use crate::plan::rollout::template_images;
use crate::wire::deploygroup::{
    template_hash, DeployGroupSpec, DeployGroupStatus, Dur, GroupPhase, MemberResult, MemberSpec,
    Outcome, Stage, StepStatus,
};
pub use crate::wire::deploygroup::{validate, DeployGroupError};
pub use http_policy::{
    host_name, HostPattern, HttpCheckPolicy, NameError, RefusedCheck, UrlRefusal, ALLOW_FLAG,
    DEFAULT_CLUSTER_DOMAIN,
};

mod http_policy;

/// What the coordinator observed about one member right now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberObs {
    pub exists: bool,
    pub paused: bool,
    pub template_hash: String,
    pub images: Vec<String>,
    pub generation: i64,
    pub observed_generation: i64,
    /// `spec.replicas` (default 1).
    pub replicas: i32,
    pub status_replicas: i32,
    pub updated: i32,
    pub available: i32,
    pub progress_deadline_exceeded: bool,
    /// Nodes the current template can land on, and how many of them hold
    /// all of its images (computed by the caller).
    pub eligible_nodes: usize,
    pub warm_nodes: usize,
    /// None: no ScaledObject found for this member.
    pub scaled_object: Option<ScaledObs>,
    /// Latest result of the member's check for the current step and
    /// template (None: none yet). The caller resets these when a step starts
    /// or its template changes.
    pub http: Option<CheckObs>,
    pub job: Option<CheckObs>,
    /// A ReplicaSet of this Deployment still holds its deployed template,
    /// so a rollback can restore it (computed by the caller).
    pub rollback_target: bool,
}

impl MemberObs {
    /// The Deployment-derived fields; nodes, KEDA and checks are left for
    /// the caller to fill in.
    pub fn from_deployment(d: &Deployment) -> MemberObs {
        let spec = d.spec.as_ref();
        let status = d.status.as_ref();
        let template = spec.map(|s| &s.template);
        let deadline = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            });
        MemberObs {
            exists: true,
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
            template_hash: template.map(template_hash).unwrap_or_default(),
            images: template
                .and_then(|t| t.spec.as_ref())
                .map(template_images)
                .unwrap_or_default(),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            status_replicas: status.and_then(|s| s.replicas).unwrap_or(0),
            updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available: status.and_then(|s| s.available_replicas).unwrap_or(0),
            progress_deadline_exceeded: deadline,
            ..MemberObs::default()
        }
    }

    /// The controller has seen the latest spec and every replica is updated
    /// and available, with no old ones left.
    pub fn rollout_complete(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated == self.replicas
            && self.available == self.replicas
            && self.status_replicas == self.replicas
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScaledObs {
    pub name: String,
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckObs {
    Running,
    Passed,
    Failed(String),
    /// The check could not be started (e.g. its Job not created); why.
    Blocked(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Pause {
        deployment: String,
    },
    Unpause {
        deployment: String,
    },
    PauseKeda {
        scaled_object: String,
    },
    ResumeKeda {
        scaled_object: String,
    },
    /// Keep publishing warm intents while in Warming.
    Warm {
        deployment: String,
        images: Vec<String>,
        nodes_needed: usize,
    },
    /// Run (or keep running) the check; its result comes back in
    /// `MemberObs::http`.
    HttpCheck {
        deployment: String,
        url: String,
    },
    /// Create the Job unless it exists (AlreadyExists is fine).
    CreateJob {
        deployment: String,
        name: String,
        spec: serde_json::Value,
    },
    /// Restore the previous ReplicaSet's template. Issued only while the
    /// Deployment still carries the failed template.
    Rollback {
        deployment: String,
    },
    Event {
        deployment: Option<String>,
        warning: bool,
        reason: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: DeployGroupStatus,
    pub actions: Vec<Action>,
}

/// Job name for a step: `<deployment>-validate-<first 8 of hash>`, at most
/// 63 characters; the deployment part is cut, never the suffix.
pub fn job_name(deployment: &str, template_hash: &str) -> String {
    let short: String = template_hash.chars().take(8).collect();
    let suffix = format!("-validate-{short}");
    let room = 63usize.saturating_sub(suffix.len());
    let mut prefix: String = deployment.chars().take(room).collect();
    // A name must not end in '-' or '.' before the suffix is joined.
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

/// One human-readable block for the CLI: phase and message, the step, then
/// the last result of each member.
pub fn summary(status: &DeployGroupStatus) -> String {
    status.summary()
}

/// The next status and actions for a DeployGroup at `generation`; its
/// `httpCheck` URLs must pass `checks`.
pub fn decide(
    spec: &DeployGroupSpec,
    checks: &HttpCheckPolicy,
    generation: i64,
    status: &DeployGroupStatus,
    obs: &BTreeMap<String, MemberObs>,
    now: DateTime<Utc>,
) -> Decision {
    let mut cx = Ctx {
        spec,
        obs,
        now,
        st: status.clone(),
        actions: Vec::new(),
        pause_state: BTreeMap::new(),
    };
    cx.st.observed_generation = generation;
    // Invalid freezes everything: no Deployment is touched until it is fixed.
    let invalid = (validate(spec).err().map(|e| e.to_string()))
        .or_else(|| checks.check_spec(spec).err().map(|e| e.to_string()))
        .or_else(|| cx.missing_member().map(|e| e.to_string()));
    if let Some(message) = invalid {
        if status.phase != GroupPhase::Invalid || status.message != message {
            cx.event(None, true, "Invalid", message.clone());
        }
        cx.st.phase = GroupPhase::Invalid;
        cx.st.message = message;
        return cx.into_decision();
    }
    cx.prune();
    let adopted = cx.adopt();
    cx.keep_paused(&adopted);
    cx.run(generation > status.observed_generation);
    cx.summarize();
    cx.into_decision()
}

/// Whether a stage handler left the state for another handler to look at.
mod stages;

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Stay,
    Next,
}

struct Ctx<'a> {
    spec: &'a DeployGroupSpec,
    obs: &'a BTreeMap<String, MemberObs>,
    now: DateTime<Utc>,
    st: DeployGroupStatus,
    actions: Vec<Action>,
    /// Pause state as left by this call's Pause/Unpause actions.
    pause_state: BTreeMap<String, bool>,
}

impl<'a> Ctx<'a> {
    fn into_decision(self) -> Decision {
        Decision {
            status: self.st,
            actions: self.actions,
        }
    }

    /// A member's observation, if its Deployment exists.
    fn obs(&self, member: &str) -> Option<&'a MemberObs> {
        self.obs.get(member).filter(|o| o.exists)
    }

    fn member(&self, member: &str) -> Option<&'a MemberSpec> {
        self.spec.members.iter().find(|m| m.deployment == member)
    }

    fn event(&mut self, deployment: Option<&str>, warning: bool, reason: &str, message: String) {
        let (deployment, reason) = (deployment.map(str::to_string), reason.to_string());
        self.actions.push(Action::Event {
            deployment,
            warning,
            reason,
            message,
        });
    }

    /// A Normal event about member `m`.
    fn note(&mut self, m: &str, reason: &str, message: String) {
        self.event(Some(m), false, reason, message);
    }

    fn warn(&mut self, m: &str, reason: &str, message: String) {
        self.event(Some(m), true, reason, message);
    }

    fn paused(&self, m: &str) -> bool {
        match self.pause_state.get(m) {
            Some(p) => *p,
            None => self.obs(m).is_some_and(|o| o.paused),
        }
    }

    /// Pauses (or unpauses) an existing member unless it already is; true
    /// when an action was issued.
    fn set_paused(&mut self, m: &str, paused: bool) -> bool {
        if self.obs(m).is_none() || self.paused(m) == paused {
            return false;
        }
        let deployment = m.to_string();
        self.actions.push(if paused {
            Action::Pause { deployment }
        } else {
            Action::Unpause { deployment }
        });
        self.pause_state.insert(m.to_string(), paused);
        true
    }

    fn resume_keda(&mut self, step: &StepStatus) {
        if let Some(name) = &step.keda_paused {
            let scaled_object = name.clone();
            self.actions.push(Action::ResumeKeda { scaled_object });
        }
    }

    fn seconds_since(&self, since: DateTime<Utc>) -> f64 {
        (self.now - since).num_milliseconds() as f64 / 1000.0
    }

    fn expired(&self, since: DateTime<Utc>, limit: Dur) -> bool {
        self.now - since >= TimeDelta::from_std(limit.0).unwrap_or(TimeDelta::MAX)
    }

    /// The first member (other than the stepping one) without a Deployment.
    fn missing_member(&self) -> Option<DeployGroupError> {
        let stepping = self.st.step.as_ref().map(|s| s.member.as_str());
        let mut names = self.spec.members.iter().map(|m| m.deployment.as_str());
        let member = names.find(|m| Some(*m) != stepping && self.obs(m).is_none())?;
        let member = member.to_string();
        Some(DeployGroupError::MissingDeployment { member })
    }

    /// Forgets members no longer in the spec; their Deployments are left as
    /// they are.
    fn prune(&mut self) {
        let spec = self.spec;
        let known = |m: &String| spec.members.iter().any(|s| s.deployment == *m);
        let removed: Vec<String> = self
            .st
            .deployed
            .keys()
            .filter(|m| !known(m))
            .cloned()
            .collect();
        for m in removed {
            self.st.deployed.remove(&m);
            let message = format!("{m} is no longer a member; its Deployment is left as it is");
            self.note(&m, "MemberRemoved", message);
        }
        self.st.results.retain(|r| known(&r.member));
        if let Some(step) = self.st.step.clone().filter(|s| !known(&s.member)) {
            self.resume_keda(&step);
            let m = &step.member;
            let message = format!("{m} was removed from the group during its step; step abandoned");
            self.warn(m, "StepAbandoned", message);
            self.st.step = None;
        }
        if self.st.halted.as_ref().is_some_and(|m| !known(m)) {
            self.st.halted = None;
            if let Some(scaled_object) = self.st.keda_held.take() {
                self.actions.push(Action::ResumeKeda { scaled_object });
            }
        }
    }

    /// Records the current template of members seen for the first time as
    /// their deployed baseline, and pauses them.
    fn adopt(&mut self) -> BTreeSet<String> {
        let mut adopted = BTreeSet::new();
        for ms in &self.spec.members {
            let m = ms.deployment.as_str();
            let Some(o) = self.obs(m).filter(|_| !self.st.deployed.contains_key(m)) else {
                continue;
            };
            let hash = o.template_hash.clone();
            self.st.deployed.insert(m.to_string(), hash.clone());
            self.set_paused(m, true);
            let message = format!("adopted {m} at template {hash} as its deployed baseline");
            self.note(m, "Adopted", message);
            adopted.insert(m.to_string());
        }
        adopted
    }

    /// Members are paused except the stepping one once it rolls out.
    fn keep_paused(&mut self, adopted: &BTreeSet<String>) {
        let step = self.st.step.as_ref();
        let exempt = step
            .filter(|s| s.stage != Stage::Warming)
            .map(|s| s.member.clone());
        for ms in &self.spec.members {
            let m = ms.deployment.as_str();
            if adopted.contains(m) || exempt.as_deref() == Some(m) {
                continue;
            }
            if self.set_paused(m, true) {
                let message = format!("Deployment {m} was unpaused outside its step; paused again");
                self.warn(m, "NotPaused", message);
            }
        }
    }

    /// Clears a halt, advances the step through as many stages as the
    /// observations allow and chains into the next changed member.
    fn run(&mut self, spec_changed: bool) {
        if let Some(m) = self.st.halted.clone() {
            let Some(why) = self.halt_cleared(&m, spec_changed) else {
                return;
            };
            self.st.halted = None;
            self.event(
                None,
                false,
                "Resumed",
                format!("halt on {m} cleared: {why}"),
            );
            self.release_held_keda(&m);
        }
        let mut keda_checked: Option<String> = None;
        // Each member steps at most once per call, through at most six stages.
        for _ in 0..8 * (self.spec.members.len() + 1) {
            if self.st.halted.is_some() {
                return;
            }
            let Some(step) = self.st.step.clone() else {
                if self.start_next() {
                    continue;
                }
                return;
            };
            if keda_checked.as_deref() != Some(step.member.as_str()) {
                keda_checked = Some(step.member.clone());
                self.ensure_keda(&step);
            }
            if self.advance(step) == Flow::Stay {
                return;
            }
        }
    }

    /// Why the halt on `member` no longer holds, if it doesn't.
    fn halt_cleared(&self, member: &str, spec_changed: bool) -> Option<String> {
        if spec_changed {
            let generation = self.st.observed_generation;
            return Some(format!("the spec changed (generation {generation})"));
        }
        let Some(failed) = self.st.results.iter().find(|r| r.member == member) else {
            return Some("no failure is recorded for it".to_string());
        };
        let current = &self.obs(member)?.template_hash;
        // A fix-forward: neither the failed template nor the one rolled back to.
        let new = *current != failed.template_hash && self.st.deployed.get(member) != Some(current);
        new.then(|| format!("{member} has a new template {current}"))
    }

    /// After a halt clears: a ScaledObject kept paused for `m` goes to m's
    /// next step (which resumes it at its end), or is resumed now when no
    /// step for m is coming.
    fn release_held_keda(&mut self, m: &str) {
        let Some(so) = self.st.keda_held.clone() else {
            return;
        };
        let member = self.spec.members.iter().any(|s| s.deployment == m);
        let pending = self
            .obs(m)
            .is_some_and(|o| self.st.deployed.get(m) != Some(&o.template_hash));
        if !(member && pending) {
            self.st.keda_held = None;
            self.actions.push(Action::ResumeKeda { scaled_object: so });
        }
    }

    /// Starts a step for the first member whose template is not deployed.
    fn start_next(&mut self) -> bool {
        let next = self.spec.members.iter().find_map(|ms| {
            let o = self.obs(&ms.deployment)?;
            (self.st.deployed.get(&ms.deployment) != Some(&o.template_hash))
                .then_some((ms.deployment.as_str(), o))
        });
        let Some((m, o)) = next else { return false };
        let from = self.st.deployed.get(m).cloned().unwrap_or_default();
        let to = &o.template_hash;
        self.note(
            m,
            "StepStarted",
            format!("{m}: stepping from template {from} to {to}"),
        );
        let held = self.st.keda_held.clone();
        let keda = match &o.scaled_object {
            // Kept paused since this member's halt: ours to resume.
            Some(so) if held.as_ref() == Some(&so.name) => {
                self.st.keda_held = None;
                Some(so.name.clone())
            }
            Some(so) if !so.paused => Some(so.name.clone()),
            // Paused by someone else: not ours to resume.
            Some(_) => None,
            None => {
                let message = format!(
                    "{m}: no ScaledObject found; autoscaling is not paused during the step"
                );
                self.warn(m, "NoScaledObject", message);
                None
            }
        };
        self.st.step = Some(StepStatus {
            member: m.to_string(),
            template_hash: to.clone(),
            stage: Stage::Warming,
            started: self.now,
            stage_started: self.now,
            keda_paused: keda,
            ..StepStatus::default()
        });
        true
    }

    /// Re-pauses the step's ScaledObject while it shows as running.
    fn ensure_keda(&mut self, step: &StepStatus) {
        let Some(name) = &step.keda_paused else {
            return;
        };
        let so = self
            .obs(&step.member)
            .and_then(|o| o.scaled_object.as_ref());
        if so.is_some_and(|so| so.name == *name && !so.paused) {
            let scaled_object = name.clone();
            self.actions.push(Action::PauseKeda { scaled_object });
        }
    }

    fn summarize(&mut self) {
        let (phase, message) = if let Some(s) = &self.st.step {
            let message = format!("stepping {}: {}", s.member, s.stage);
            (GroupPhase::Stepping, message)
        } else if let Some(m) = &self.st.halted {
            let message = match self.st.results.iter().find(|r| r.member == *m) {
                Some(r) if r.result == Outcome::RolledBack => {
                    format!("halted: {m}: {} (rolled back)", r.reason)
                }
                Some(r) => format!("halted: {m}: {}", r.reason),
                None => format!("halted: {m}"),
            };
            (GroupPhase::Halted, message)
        } else {
            let n = self.spec.members.len();
            let message = if n == 1 {
                "idle: 1 member deployed".to_string()
            } else {
                format!("idle: all {n} members deployed")
            };
            (GroupPhase::Idle, message)
        };
        self.st.phase = phase;
        self.st.message = message;
    }
}

#[cfg(test)]
mod tests;
