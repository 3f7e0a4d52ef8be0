//! Sequential deploys' effector: for every DeployGroup, observes its member
//! Deployments, their ScaledObjects, checks and warmth, asks
//! [`crate::plan::deploy::decide`] for the next status and actions, applies
//! the actions and writes the status back. Only the leader acts; the status
//! in the cluster is the state, so a new leader resumes where the last one
//! stood.
//!
//! DeployGroups are watched cluster-wide as raw objects and parsed one by
//! one, so a malformed group gets a clear `Invalid` status of its own
//! instead of breaking the watch for every group. Members are read with one
//! list of the group's namespace's Deployments per reconcile (on any group
//! change and every [`DeployOptions::resync`]); groups are few, so this
//! costs a handful of requests a second at most.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::events;
use super::http::DeployGroupRow;
use super::link::LinkState;
use crate::plan::deploy::{self, Action, CheckObs, MemberObs};
use crate::plan::gate::{pod_images, warm_eligible};
use crate::wire::deploygroup::{
    self as dg, DeployGroup, DeployGroupStatus, PAUSED_ANNOTATION, PAUSED_REPLICAS_ANNOTATION,
};
use crate::wire::v1::Intent;

/// Intent source name in [`LinkState::publish`].
pub const SOURCE: &str = "deploys";
/// Priority of a deploy step's warm intents (above rollouts, below the gate).
pub const PRIORITY: i64 = 500;
/// Label on validation Jobs naming the step (its start, Unix seconds).
pub const STEP_LABEL: &str = "prewarm.dev/step";
/// A repeated Event (same group, reason and message) is not re-sent for
/// this long.
const EVENT_QUIET: Duration = Duration::from_secs(600);
/// Longest wait for the watch to deliver our own status write before a
/// group is reconciled from the (older) watched object anyway.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Every group is reconciled at least this often.
    pub resync: Duration,
    /// Timeout of one HTTP validation request.
    pub http_timeout: Duration,
    /// Warm intents expire this long after they were last published.
    pub intent_ttl: Duration,
    /// Hosts `httpCheck` URLs may name.
    pub http_checks: deploy::HttpCheckPolicy,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(5),
            http_timeout: Duration::from_secs(5),
            intent_ttl: Duration::from_secs(1800),
            http_checks: deploy::HttpCheckPolicy::default(),
        }
    }
}

type Key = (String, String);
/// HTTP check state by (namespace, group, member).
type Checks = Arc<Mutex<BTreeMap<(String, String, String), HttpState>>>;

mod checks;
mod objects;
mod rbac;
pub use objects::{
    deploygroup_resource, find_scaled_object, parse_group, previous_template, scaledobject_resource,
};

use checks::api_message;
pub use checks::job_result;
use rbac::Unobserved;
pub use rbac::DEPLOYGROUP_ROLE;

/// What one reconcile read about a group's members: what the state machine
/// needs, plus what the effectors reuse instead of reading it again.
struct Observed {
    members: BTreeMap<String, MemberObs>,
    /// Eligible nodes for each member's current template.
    eligible: BTreeMap<String, Vec<String>>,
    /// Each existing member's uid, for Events and rollbacks.
    uids: BTreeMap<String, String>,
}

/// One HTTP check's state, for one step of one member.
#[derive(Debug, Clone)]
struct HttpState {
    step: String,
    result: Option<CheckObs>,
    running: bool,
    started: Option<Instant>,
}

struct Deploys {
    client: kube::Client,
    state: Arc<LinkState>,
    opts: DeployOptions,
    http: reqwest::Client,
    checks: Checks,
    /// Why the current step's validation Job could not be created, by
    /// (namespace, group, member): (step key, error).
    job_errors: BTreeMap<(String, String, String), (String, String)>,
    poke: mpsc::Sender<Key>,
    sent_events: BTreeMap<(Key, String, String), Instant>,
    intents: BTreeMap<Key, Vec<Intent>>,
    /// resourceVersion of our last status write per group, until the watch
    /// delivers it: the watched object is older until then, and deciding
    /// from its status would redo (or undo) what was just written.
    written: BTreeMap<Key, (String, Instant)>,
}

/// Runs deploy groups until cancelled.
pub async fn run(
    client: kube::Client,
    state: Arc<LinkState>,
    opts: DeployOptions,
    leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Event<DynamicObject>>(256);
    let (poke, mut poked) = mpsc::channel::<Key>(256);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &deploygroup_resource());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let wcancel = cancel.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = wcancel.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => if tx.send(ev).await.is_err() { return },
                    Some(Err(e)) => tracing::warn!(error = %e, "DeployGroup watch error (is the CRD installed?); retrying"),
                    None => return,
                },
            }
        }
    });
    // No redirects: an allowed host must not bounce a check elsewhere.
    let http = reqwest::Client::builder()
        .timeout(opts.http_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut d = Deploys {
        client,
        state,
        opts: opts.clone(),
        http,
        checks: Default::default(),
        job_errors: BTreeMap::new(),
        poke,
        sent_events: BTreeMap::new(),
        intents: BTreeMap::new(),
        written: BTreeMap::new(),
    };
    let mut groups: BTreeMap<Key, DynamicObject> = BTreeMap::new();
    let mut relist: Option<BTreeMap<Key, DynamicObject>> = None;
    let mut tick = tokio::time::interval(opts.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader = leader;
    loop {
        let due: Vec<Key> = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let key_of = |o: &DynamicObject| (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                match ev {
                    Event::Apply(o) => {
                        let k = key_of(&o);
                        if d.written.get(&k).map(|w| &w.0) == o.metadata.resource_version.as_ref() {
                            d.written.remove(&k);
                        }
                        groups.insert(k.clone(), o);
                        vec![k]
                    }
                    Event::Delete(o) => {
                        let k = key_of(&o);
                        groups.remove(&k);
                        d.forget(&k);
                        vec![]
                    }
                    Event::Init => { relist = Some(BTreeMap::new()); vec![] }
                    Event::InitApply(o) => { relist.get_or_insert_with(BTreeMap::new).insert(key_of(&o), o); vec![] }
                    Event::InitDone => {
                        groups = relist.take().unwrap_or_default();
                        d.written.clear();
                        let gone: Vec<Key> = d.intents.keys().filter(|k| !groups.contains_key(*k)).cloned().collect();
                        gone.iter().for_each(|k| d.forget(k));
                        groups.keys().cloned().collect()
                    }
                }
            }
            Some(k) = poked.recv() => vec![k],
            _ = tick.tick() => groups.keys().cloned().collect(),
            Ok(()) = leader.changed() => groups.keys().cloned().collect(),
        };
        if !*leader.borrow() {
            // A follower publishes nothing (it serves no agents anyway).
            if !d.intents.is_empty() {
                d.intents.clear();
                d.state.publish(SOURCE, Vec::new());
            }
            continue;
        }
        for key in due {
            if d.written
                .get(&key)
                .is_some_and(|w| w.1.elapsed() < OWN_WRITE_WAIT)
            {
                continue;
            }
            if let Some(obj) = groups.get(&key).cloned() {
                d.reconcile(&key, &obj).await;
            }
        }
        let all: Vec<Intent> = d.intents.values().flatten().cloned().collect();
        d.state.publish(SOURCE, all);
    }
    d.state.publish(SOURCE, Vec::new());
}

impl Deploys {
    fn forget(&mut self, key: &Key) {
        self.intents.remove(key);
        self.written.remove(key);
        if let Ok(mut rows) = self.state.deploys.write() {
            rows.remove(&format!("{}/{}", key.0, key.1));
        }
    }

    async fn reconcile(&mut self, key: &Key, obj: &DynamicObject) {
        let (ns, name) = (key.0.as_str(), key.1.as_str());
        let generation = obj.metadata.generation.unwrap_or(0);
        let group = match parse_group(obj) {
            Ok(g) => g,
            Err(e) => {
                let message = format!("DeployGroup {ns}/{name} is malformed: {e}");
                let previous = obj.data.get("status").cloned().unwrap_or(Value::Null);
                let status = json!({"phase": "Invalid", "message": message, "observedGeneration": generation});
                if previous.get("message") != status.get("message") {
                    self.event_on_group(key, obj, true, "Invalid", &message)
                        .await;
                    self.write_status(key, obj, status).await;
                }
                self.intents.remove(key);
                return;
            }
        };
        let status = group.status.clone().unwrap_or_default();
        // A member that could not be read is unknown, not gone: decide
        // nothing this round rather than fail a step over an API hiccup.
        let observed = match self.observe(ns, &group, &status).await {
            Ok(o) => o,
            Err(Unobserved::Forbidden(message)) => {
                return self.refused(key, obj, &status, message).await;
            }
            Err(Unobserved::Api) => return,
        };
        let obs = &observed.members;
        let mut decision = deploy::decide(
            &group.spec,
            &self.opts.http_checks,
            generation,
            &status,
            obs,
            Utc::now(),
        );
        // A new step is recorded before it acts: killed after pausing KEDA
        // but before saying so, the next leader would take the pause for
        // someone else's and never resume it. A step that cannot be
        // recorded (a newer object, the API away) does not start.
        let starts = decision.status.step.as_ref().is_some_and(|new| {
            status
                .step
                .as_ref()
                .is_none_or(|old| old.started != new.started)
        });
        if starts {
            let recorded = match serde_json::to_value(&decision.status) {
                Ok(v) => self.write_status(key, obj, v).await,
                Err(_) => false,
            };
            if !recorded {
                return;
            }
        }
        let mut intents = Vec::new();
        for action in std::mem::take(&mut decision.actions) {
            if let Err(e) = self
                .apply(key, obj, &group, &status, &observed, action, &mut intents)
                .await
            {
                // A refusal names the missing RoleBinding in the status and,
                // once per message, in a Warning Event (reading ScaledObjects
                // is granted cluster-wide for KEDA windows, so a write can be
                // the first request refused).
                if let Some(m) = rbac::missing_grant(&e, ns) {
                    if status.message != m && decision.status.message != m {
                        self.event_on_group(key, obj, true, "Forbidden", &m).await;
                    }
                    decision.status.message = m;
                }
                tracing::warn!(group = %format!("{ns}/{name}"), error = %e, "deploy action failed; retried on the next reconcile");
            }
        }
        self.intents.insert(key.clone(), intents);
        self.count_results(key, &status, &decision.status);
        if !starts && (decision.status != status || group.status.is_none()) {
            match serde_json::to_value(&decision.status) {
                Ok(v) => {
                    self.write_status(key, obj, v).await;
                }
                Err(e) => tracing::warn!(error = %e, "status not serializable"),
            }
        }
        if let Ok(mut rows) = self.state.deploys.write() {
            rows.insert(
                format!("{ns}/{name}"),
                DeployGroupRow {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    members: group
                        .spec
                        .members
                        .iter()
                        .map(|m| m.deployment.clone())
                        .collect(),
                    status: decision.status,
                },
            );
        }
    }

    fn count_results(&self, key: &Key, old: &DeployGroupStatus, new: &DeployGroupStatus) {
        self.state
            .metrics
            .set_deploy_group(&key.0, &key.1, old, new);
    }

    async fn observe(
        &self,
        ns: &str,
        group: &DeployGroup,
        status: &DeployGroupStatus,
    ) -> Result<Observed, Unobserved> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let scaled: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &scaledobject_resource());
        let scaled_objects = match scaled.list(&ListParams::default()).await {
            Ok(l) => l.items,
            // The first request that needs the namespace's RoleBinding.
            Err(e) if rbac::missing_grant(&e, ns).is_some() => {
                return Err(Unobserved::Forbidden(
                    rbac::missing_grant(&e, ns).unwrap_or_default(),
                ));
            }
            Err(e) => {
                tracing::debug!(namespace = ns, error = %e, "no ScaledObjects (is KEDA installed?)");
                Vec::new()
            }
        };
        let mut out = Observed {
            members: BTreeMap::new(),
            eligible: BTreeMap::new(),
            uids: BTreeMap::new(),
        };
        // One list, not a GET per member: a consistent snapshot, so a later
        // member's change is never seen without an earlier member's change
        // made before it (which would start the later member first).
        let listed = match deployments.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "members not read; retrying");
                return Err(Unobserved::Api);
            }
        };
        for m in &group.spec.members {
            let found = listed
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(m.deployment.as_str()));
            let Some(d) = found else {
                out.members
                    .insert(m.deployment.clone(), MemberObs::default());
                continue;
            };
            let mut o = MemberObs::from_deployment(d);
            if let Some(uid) = &d.metadata.uid {
                out.uids.insert(m.deployment.clone(), uid.clone());
            }
            if let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
                if let Ok(images) = pod_images(spec) {
                    let (eligible, warm) = warm_eligible(spec, &images, &self.state.view());
                    o.eligible_nodes = eligible.len();
                    o.warm_nodes = warm.len();
                    out.eligible.insert(m.deployment.clone(), eligible);
                }
            }
            o.scaled_object =
                find_scaled_object(&scaled_objects, &m.deployment, m.scaled_object.as_deref());
            if let Some(step) = status.step.as_ref().filter(|s| s.member == m.deployment) {
                if group.spec.rollback {
                    o.rollback_target = self.rollback_target(ns, d, status, &m.deployment).await;
                }
                let step_key = format!("{}@{}", step.template_hash, step.started.timestamp());
                let ck = (ns.to_string(), group_name(group), m.deployment.clone());
                if let Some(h) = self.checks.lock().ok().and_then(|c| c.get(&ck).cloned()) {
                    if h.step == step_key {
                        o.http = h.result.or(h.running.then_some(CheckObs::Running));
                    }
                }
                if let Some(job) = &step.job_name {
                    let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
                    let this_step = step.started.timestamp().to_string();
                    let blocked = self
                        .job_errors
                        .get(&ck)
                        .filter(|(k, _)| *k == step_key)
                        .map(|(_, e)| CheckObs::Blocked(e.clone()));
                    o.job = match jobs.get_opt(job).await {
                        // Another step's Job is not this step's result.
                        Ok(Some(j))
                            if j.metadata.labels.as_ref().and_then(|l| l.get(STEP_LABEL))
                                == Some(&this_step) =>
                        {
                            Some(job_result(&j))
                        }
                        Ok(_) => blocked,
                        Err(_) => Some(CheckObs::Running),
                    };
                }
            }
            out.members.insert(m.deployment.clone(), o);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &mut self,
        key: &Key,
        obj: &DynamicObject,
        group: &DeployGroup,
        status: &DeployGroupStatus,
        observed: &Observed,
        action: Action,
        intents: &mut Vec<Intent>,
    ) -> Result<(), kube::Error> {
        let ns = key.0.as_str();
        let obs = &observed.members;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let scaled: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &scaledobject_resource());
        let merge = |v: Value| Patch::Merge(v);
        let pp = PatchParams::default();
        match action {
            Action::Pause { deployment } => {
                deployments
                    .patch(&deployment, &pp, &merge(json!({"spec": {"paused": true}})))
                    .await?;
            }
            Action::Unpause { deployment } => {
                deployments
                    .patch(&deployment, &pp, &merge(json!({"spec": {"paused": false}})))
                    .await?;
            }
            Action::PauseKeda { scaled_object } => {
                let mut p = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}});
                if let Some(n) = paused_replicas(group, obs, &scaled_object) {
                    p["metadata"]["annotations"][PAUSED_REPLICAS_ANNOTATION] = json!(n.to_string());
                }
                scaled.patch(&scaled_object, &pp, &merge(p)).await?;
            }
            Action::ResumeKeda { scaled_object } => {
                let mut p = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: null}}});
                if paused_replicas(group, obs, &scaled_object).is_some() {
                    p["metadata"]["annotations"][PAUSED_REPLICAS_ANNOTATION] = Value::Null;
                }
                scaled.patch(&scaled_object, &pp, &merge(p)).await?;
            }
            Action::Warm {
                deployment, images, ..
            } => {
                let nodes = observed
                    .eligible
                    .get(&deployment)
                    .cloned()
                    .unwrap_or_default();
                if !nodes.is_empty() {
                    let id = format!(
                        "DeployGroup/{ns}/{}/{deployment}@{}",
                        key.1,
                        crate::plan::rollout::images_hash(&images)
                    );
                    let ttl = self.opts.intent_ttl.as_secs().min(i64::MAX as u64) as i64;
                    intents.push(Intent {
                        id,
                        images,
                        reason: "deploy-group-step".into(),
                        priority: PRIORITY,
                        deadline_unix: Utc::now().timestamp().saturating_add(ttl),
                        node_selector: Default::default(),
                        nodes,
                        credentials: Vec::new(),
                    });
                    self.keep_deadline(key, intents);
                }
            }
            Action::HttpCheck { deployment, url } => {
                self.http_check(key, group, status, &deployment, url);
            }
            Action::CreateJob {
                deployment,
                name,
                spec,
            } => {
                let step = status.step.as_ref();
                let step_key = step
                    .map(|s| format!("{}@{}", s.template_hash, s.started.timestamp()))
                    .unwrap_or_default();
                let ck = (key.0.clone(), key.1.clone(), deployment.clone());
                let started = step
                    .map(|s| s.started.timestamp().to_string())
                    .unwrap_or_default();
                match self
                    .create_job(ns, key, &deployment, &name, spec, &started)
                    .await
                {
                    Ok(()) => {
                        self.job_errors.remove(&ck);
                    }
                    Err(e) => {
                        // The next observation reports it, so the step's
                        // Events and timeout say why, not "not completed".
                        self.job_errors.insert(ck, (step_key, api_message(&e)));
                        return Err(e);
                    }
                }
            }
            Action::Rollback { deployment } => {
                let Some(deployed) = status.deployed.get(&deployment) else {
                    return Ok(());
                };
                let Some(uid) = observed.uids.get(&deployment) else {
                    return Ok(());
                };
                let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
                let list = rss.list(&ListParams::default()).await?;
                match previous_template(&list.items, uid, deployed) {
                    Some(t) => {
                        let ops: json_patch::Patch = serde_json::from_value(json!([
                            {"op": "replace", "path": "/spec/template", "value": t}
                        ]))
                        .map_err(kube::Error::SerdeError)?;
                        deployments
                            .patch(&deployment, &pp, &Patch::Json::<()>(ops))
                            .await?;
                    }
                    None => {
                        let msg = format!("no ReplicaSet of {deployment} holds the deployed template {deployed}; cannot roll back");
                        self.event_on_group(key, obj, true, "RollbackImpossible", &msg)
                            .await;
                    }
                }
            }
            Action::Event {
                deployment,
                warning,
                reason,
                message,
            } => match deployment.filter(|d| obs.get(d).is_some_and(|o| o.exists)) {
                Some(d) => {
                    if self.first_time(key, &reason, &message) {
                        let uid = observed.uids.get(&d).cloned();
                        let involved = ObjectReference {
                            api_version: Some("apps/v1".into()),
                            kind: Some("Deployment".into()),
                            name: Some(d),
                            namespace: Some(ns.to_string()),
                            uid,
                            ..ObjectReference::default()
                        };
                        record(&self.client, &involved, warning, &reason, &message).await;
                    }
                }
                None => {
                    self.event_on_group(key, obj, warning, &reason, &message)
                        .await
                }
            },
        }
        Ok(())
    }

    /// Keeps a republished intent's deadline while most of it is left, so
    /// agents are not sent the same set again.
    fn keep_deadline(&self, key: &Key, intents: &mut [Intent]) {
        if let Some(prev) = self.intents.get(key) {
            super::rollouts::keep_deadlines(prev, intents, Utc::now(), self.opts.intent_ttl);
        }
    }

    fn first_time(&mut self, key: &Key, reason: &str, message: &str) -> bool {
        let now = Instant::now();
        self.sent_events
            .retain(|_, at| now.duration_since(*at) < EVENT_QUIET);
        let k = (key.clone(), reason.to_string(), message.to_string());
        if self.sent_events.contains_key(&k) {
            return false;
        }
        self.sent_events.insert(k, now);
        true
    }

    async fn event_on_group(
        &mut self,
        key: &Key,
        obj: &DynamicObject,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        if !self.first_time(key, reason, message) {
            return;
        }
        let involved = ObjectReference {
            api_version: Some(dg::API_VERSION.into()),
            kind: Some(dg::KIND.into()),
            name: Some(key.1.clone()),
            namespace: Some(key.0.clone()),
            uid: obj.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        record(&self.client, &involved, warning, reason, message).await;
    }

    /// Writes the status decided from `obj`, only if the group is still at
    /// `obj`'s resourceVersion: another writer (a leader handover) or a
    /// spec change since makes the write fail, and the next round decides
    /// again from the newer object. Returns whether it was written.
    async fn write_status(&mut self, key: &Key, obj: &DynamicObject, status: Value) -> bool {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.0, &deploygroup_resource());
        let mut ops = Vec::new();
        if let Some(rv) = &obj.metadata.resource_version {
            ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
        }
        ops.push(json!({"op": "add", "path": "/status", "value": status}));
        let ops: Result<json_patch::Patch, _> = serde_json::from_value(Value::Array(ops));
        let result = match ops {
            Ok(ops) => {
                api.patch_status(&key.1, &PatchParams::default(), &Patch::Json::<()>(ops))
                    .await
            }
            Err(e) => Err(kube::Error::SerdeError(e)),
        };
        match result {
            Ok(obj) => {
                if let Some(rv) = obj.metadata.resource_version {
                    self.written.insert(key.clone(), (rv, Instant::now()));
                }
                true
            }
            Err(e) => {
                tracing::warn!(group = %format!("{}/{}", key.0, key.1), error = %e, "DeployGroup status not written");
                false
            }
        }
    }
}

/// The `pausedReplicas` of the member whose ScaledObject is `scaled_object`.
fn paused_replicas(
    group: &DeployGroup,
    obs: &BTreeMap<String, MemberObs>,
    scaled_object: &str,
) -> Option<u32> {
    group.spec.members.iter().find_map(|m| {
        let o = obs.get(&m.deployment)?.scaled_object.as_ref()?;
        (o.name == scaled_object)
            .then_some(m.paused_replicas)
            .flatten()
    })
}

fn group_name(g: &DeployGroup) -> String {
    g.metadata.name.clone().unwrap_or_default()
}

async fn record(
    client: &kube::Client,
    involved: &ObjectReference,
    warning: bool,
    reason: &str,
    message: &str,
) {
    if let Err(e) = events::record(client, involved, warning, reason, message).await {
        tracing::warn!(error = %e, reason, "deploy Event not recorded");
    }
}

#[cfg(test)]
mod tests;
