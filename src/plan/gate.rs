//! The "warm" scheduling gate: when to release a gated pod, and how.
//!
//! Pods carrying the scheduling gate [`GATE`] (and labelled
//! [`GATE_LABEL`]`=true` so the coordinator watches only them) wait in the
//! scheduler until the coordinator removes the gate. [`decide`] is the pure
//! decision for one such pod against the [`ClusterView`]:
//!
//! 1. Images that do not parse cannot be warmed: release without narrowing.
//! 2. Eligible connected nodes where every image is warm: release with one
//!    JSON Patch that narrows required node affinity to them (by their
//!    `kubernetes.io/hostname` label) and removes the gate.
//! 3. Waited (since creation) at least the timeout: release without
//!    narrowing (fail-open) or keep holding (fail-closed).
//! 4. Fail-open pods with eligible connected nodes: wait only while some
//!    node pulling the images is predicted to be warm sooner than a cold
//!    start would be ([`estimate`]); otherwise release at once, kept off
//!    nodes already pulling the images (a kubelet there would download them
//!    again over the same link), so the gate never makes a pod start later
//!    than no gate.
//! 5. Otherwise (fail-closed pods, or no eligible node connected yet) wait.
//!
//! Waiting pods get their images warmed urgently on the eligible nodes;
//! pods released cold get no urgent intent, so no agent competes with the
//! kubelet pulling the same bytes on the node the pod lands on.
//!
//! Patches respect KEP-3838 (mutable scheduling directives of gated pods):
//! existing node affinity is only narrowed, by appending one requirement to
//! every required term, never by changing what is there.
//!
//! No I/O and no clock: `now` is passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::{json, Value};

use crate::config::reference::{ImageRef, ReferenceError};
use crate::plan::eligibility::{eligible, NodeFacts};
use crate::plan::pull_secrets::WorkloadSecrets;
use crate::plan::rollout::images_hash;
use crate::plan::view::{ClusterView, NodeRecord};
use crate::wire::v1::Intent;

pub mod estimate;

pub use self::estimate::{Estimate, EstimateConfig};

/// Scheduling gate name.
pub const GATE: &str = "prewarm.dev/warm";
/// Pods labelled `"true"` are watched.
pub const GATE_LABEL: &str = "prewarm.dev/gate";
/// Node label release narrows on.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Per-pod timeout override, e.g. `90s`, `10m`, `1h`.
pub const TIMEOUT_ANNOTATION: &str = "prewarm.dev/gate-timeout";
/// Per-pod policy override: `fail-open` or `fail-closed`.
pub const POLICY_ANNOTATION: &str = "prewarm.dev/gate-policy";
/// Reason of urgent intents for gated pods.
pub const INTENT_REASON: &str = "gated-pods";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("pod has no {0}")]
    MissingField(&'static str),
    #[error("container {container:?}: {source}")]
    BadImage {
        container: String,
        source: ReferenceError,
    },
    #[error("unknown gate policy {0:?} (use fail-open or fail-closed)")]
    UnknownPolicy(String),
}

/// What happens when no eligible node got warm in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutPolicy {
    /// Release without narrowing: the pod starts, pulling cold.
    FailOpen,
    /// Keep holding the pod.
    FailClosed,
}

impl TimeoutPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPolicy::FailOpen => "fail-open",
            TimeoutPolicy::FailClosed => "fail-closed",
        }
    }
}

impl fmt::Display for TimeoutPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TimeoutPolicy {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail-open" => Ok(TimeoutPolicy::FailOpen),
            "fail-closed" => Ok(TimeoutPolicy::FailClosed),
            other => Err(GateError::UnknownPolicy(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// How long a pod may wait for a warm node.
    pub timeout: Duration,
    pub policy: TimeoutPolicy,
    /// Priority of urgent intents (above rollouts and windows).
    pub urgent_priority: i64,
    /// Urgent intents expire this long after they were last computed.
    pub intent_ttl: Duration,
    /// Hold for a warming node, or release cold at once.
    pub estimate: EstimateConfig,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            policy: TimeoutPolicy::FailOpen,
            urgent_priority: 1000,
            intent_ttl: Duration::from_secs(900),
            estimate: EstimateConfig::default(),
        }
    }
}

/// A pod held by [`GATE`], as the decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created: DateTime<Utc>,
    pub spec: PodSpec,
    pub annotations: BTreeMap<String, String>,
    /// Controller owner (kind, name), to group intents.
    pub owner: Option<(String, String)>,
}

impl GatedPod {
    /// `Ok(None)` when the pod no longer carries [`GATE`] (released) or is
    /// being deleted; Err names the missing field of a malformed object.
    pub fn from_pod(pod: &Pod) -> Result<Option<GatedPod>, GateError> {
        let spec = pod.spec.as_ref().ok_or(GateError::MissingField("spec"))?;
        let meta = &pod.metadata;
        if gate_index(spec).is_none() || meta.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let field = |v: &Option<String>, name: &'static str| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or(GateError::MissingField(name))
        };
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone()));
        Ok(Some(GatedPod {
            namespace: field(&meta.namespace, "metadata.namespace")?,
            name: field(&meta.name, "metadata.name")?,
            uid: field(&meta.uid, "metadata.uid")?,
            created: meta
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp_micros(t.0.as_microsecond()))
                .ok_or(GateError::MissingField("metadata.creationTimestamp"))?,
            spec: spec.clone(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            owner,
        }))
    }
}

/// Effective timeout and policy: annotations override `cfg`; a malformed
/// annotation is ignored and reported in the returned warnings.
pub fn effective(pod: &GatedPod, cfg: &GateConfig) -> (Duration, TimeoutPolicy, Vec<String>) {
    let mut warnings = Vec::new();
    let mut timeout = cfg.timeout;
    let mut policy = cfg.policy;
    if let Some(raw) = pod.annotations.get(TIMEOUT_ANNOTATION) {
        match humantime::parse_duration(raw.trim()) {
            Ok(d) => timeout = d,
            Err(_) => warnings.push(format!(
                "annotation {TIMEOUT_ANNOTATION}: {raw:?} is not a duration (use 90s, 10m or 1h)"
            )),
        }
    }
    if let Some(raw) = pod.annotations.get(POLICY_ANNOTATION) {
        match raw.trim().parse() {
            Ok(p) => policy = p,
            Err(_) => warnings.push(format!(
                "annotation {POLICY_ANNOTATION}: {raw:?} is not a policy \
                 (use fail-open or fail-closed)"
            )),
        }
    }
    (timeout, policy, warnings)
}

/// The pod's images (init containers first, then containers, deduplicated)
/// as CRI names; containers without an image are skipped.
pub fn pod_images(spec: &PodSpec) -> Result<Vec<String>, GateError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let Some(raw) = c.image.as_deref().filter(|i| !i.trim().is_empty()) else {
            continue;
        };
        let image: ImageRef = raw.parse().map_err(|source| GateError::BadImage {
            container: c.name.clone(),
            source,
        })?;
        let name = image.cri_name();
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(out)
}

/// NodeFacts of a view record, as [`ClusterView::facts`] gives them (the
/// API server's when Nodes are watched, else the agent's report; ready only
/// while connected). `None` for a node the API server does not know.
pub fn node_facts(view: &ClusterView, rec: &NodeRecord) -> Option<NodeFacts> {
    view.facts(rec).map(std::borrow::Cow::into_owned)
}

/// Names of eligible connected nodes, and the subset where every image is
/// warm. Sorted by name.
pub fn warm_eligible(
    spec: &PodSpec,
    images: &[String],
    view: &ClusterView,
) -> (Vec<String>, Vec<String>) {
    let mut eligible_names = Vec::new();
    let mut warm = Vec::new();
    for rec in view.nodes().filter(|r| r.connected) {
        let Some(facts) = view.facts(rec) else {
            continue;
        };
        if eligible(spec, &facts).is_err() {
            continue;
        }
        eligible_names.push(rec.node.clone());
        if images.iter().all(|i| rec.is_warm(i)) {
            warm.push(rec.node.clone());
        }
    }
    eligible_names.sort();
    warm.sort();
    (eligible_names, warm)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Release onto these warm nodes with this RFC 6902 JSON Patch.
    Release { nodes: Vec<String>, patch: Value },
    /// Nothing eligible is warm yet: warm `images` on `candidates` urgently.
    /// Candidates empty means no eligible node is connected. `estimate` is
    /// set when the pod waits because a node is predicted warm sooner than
    /// a cold start (fail-open pods); it must then be decided again as time
    /// passes, since a pull that stalls changes the answer.
    Wait {
        candidates: Vec<String>,
        images: Vec<String>,
        waited: Duration,
        timeout: Duration,
        estimate: Option<Estimate>,
    },
    /// Released before the timeout because a cold start now is predicted
    /// sooner than waiting for any eligible node. The patch removes the gate
    /// and keeps the pod off nodes already pulling its images (a kubelet
    /// there would download them again beside the agent), when any eligible
    /// node is left.
    ReleaseCold {
        patch: Value,
        reason: String,
        estimate: Estimate,
    },
    /// Released without narrowing: the patch removes the gate only.
    /// `timed_out`: a fail-open timeout, not an unparsable pod.
    ReleaseUnwarmed {
        patch: Value,
        reason: String,
        timed_out: bool,
    },
    /// Fail-closed timeout: keep holding, and keep warming `images` on
    /// `candidates` so the pod goes as soon as one is warm.
    Hold {
        reason: String,
        candidates: Vec<String>,
        images: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub warnings: Vec<String>,
}

/// The decision for one gated pod. Waited time is `now - pod.created`, so a
/// restarted coordinator continues the same clock.
pub fn decide(pod: &GatedPod, view: &ClusterView, cfg: &GateConfig, now: DateTime<Utc>) -> Verdict {
    let (timeout, policy, warnings) = effective(pod, cfg);
    let verdict = |decision| Verdict {
        decision,
        warnings: warnings.clone(),
    };
    let unwarmed = |reason: String, timed_out: bool| Decision::ReleaseUnwarmed {
        patch: ungate_patch(pod),
        reason,
        timed_out,
    };
    let images = match pod_images(&pod.spec) {
        Ok(images) => images,
        // Holding could never end in a warm release.
        Err(e) => return verdict(unwarmed(format!("{e}; released unwarmed"), false)),
    };
    if images.is_empty() {
        return verdict(unwarmed(
            "pod has no images to warm; released".to_string(),
            false,
        ));
    }
    let (eligible_names, warm) = warm_eligible(&pod.spec, &images, view);
    if !warm.is_empty() {
        let patch = release_patch(pod, &hostnames(view, &warm));
        return verdict(Decision::Release { nodes: warm, patch });
    }
    // A creation time in the future (clock skew) counts as no wait.
    let waited = (now - pod.created).to_std().unwrap_or(Duration::ZERO);
    if waited >= timeout {
        let why = format!(
            "no eligible node warm for images {} after {}",
            images.join(", "),
            go_duration(timeout)
        );
        return verdict(match policy {
            TimeoutPolicy::FailOpen => {
                unwarmed(format!("{why}; released unwarmed (fail-open)"), true)
            }
            TimeoutPolicy::FailClosed => Decision::Hold {
                reason: format!("{why}; holding (fail-closed)"),
                candidates: eligible_names,
                images,
            },
        });
    }
    let estimate = match policy {
        // Fail-closed pods only ever go to warm nodes.
        TimeoutPolicy::FailClosed => None,
        TimeoutPolicy::FailOpen => {
            estimate::estimate(&images, &eligible_names, view, &cfg.estimate, now)
        }
    };
    if let Some(e) = estimate.as_ref().filter(|e| !e.hold_wins) {
        // Kept off nodes already pulling the images, if any node is left.
        let (patch, whither) = if e.competing.is_empty() || e.cold.is_none() {
            (ungate_patch(pod), String::new())
        } else {
            let away = avoid_patch(pod, &hostnames(view, &e.competing));
            let list = e.competing.join(", ");
            (
                away,
                format!(", kept off nodes already pulling them: {list}"),
            )
        };
        let reason = format!(
            "no eligible node warm for images {}: {}; released unwarmed{whither}",
            images.join(", "),
            e.why_cold(&cfg.estimate)
        );
        return verdict(Decision::ReleaseCold {
            patch,
            reason,
            estimate: e.clone(),
        });
    }
    verdict(Decision::Wait {
        candidates: eligible_names,
        images,
        waited,
        timeout,
        estimate,
    })
}

/// Index of [`GATE`] in the pod's scheduling gates.
fn gate_index(spec: &PodSpec) -> Option<usize> {
    spec.scheduling_gates
        .iter()
        .flatten()
        .position(|g| g.name == GATE)
}

/// The ops removing our gate, guarded by a `test` so a concurrent change
/// of the gate list fails the patch instead of removing another gate.
fn ungate_ops(pod: &GatedPod) -> Vec<Value> {
    // Without our gate index 0 is tested, which fails the patch harmlessly.
    let i = gate_index(&pod.spec).unwrap_or(0);
    vec![
        json!({"op": "test", "path": format!("/spec/schedulingGates/{i}/name"), "value": GATE}),
        json!({"op": "remove", "path": format!("/spec/schedulingGates/{i}")}),
    ]
}

/// Patch that removes only our gate (other gates stay).
pub fn ungate_patch(pod: &GatedPod) -> Value {
    Value::Array(ungate_ops(pod))
}

/// The `kubernetes.io/hostname` label of each node (its name without one).
fn hostnames(view: &ClusterView, nodes: &[String]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| view.node(n))
        .map(|r| {
            view.facts(r)
                .and_then(|f| f.labels.get(HOSTNAME_LABEL).cloned())
                .unwrap_or_else(|| r.node.clone())
        })
        .collect()
}

/// Patch that removes our gate and narrows required node affinity to
/// `hostnames` (deduplicated and sorted).
pub fn release_patch(pod: &GatedPod, hostnames: &[String]) -> Value {
    narrow_patch(pod, "In", hostnames)
}

/// Patch that removes our gate and keeps the pod off `hostnames`
/// (deduplicated and sorted); new nodes stay allowed.
pub fn avoid_patch(pod: &GatedPod, hostnames: &[String]) -> Value {
    narrow_patch(pod, "NotIn", hostnames)
}

/// Patch that removes our gate and adds the required node affinity
/// requirement `kubernetes.io/hostname <operator> <hostnames>`.
fn narrow_patch(pod: &GatedPod, operator: &str, hostnames: &[String]) -> Value {
    const AFFINITY: &str = "/spec/affinity";
    const NODE: &str = "/spec/affinity/nodeAffinity";
    const REQUIRED: &str =
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
    let values: BTreeSet<&String> = hostnames.iter().collect();
    let req = json!({"key": HOSTNAME_LABEL, "operator": operator, "values": values});
    let terms = json!([{"matchExpressions": [req]}]);
    let required = json!({"nodeSelectorTerms": terms});
    let add = |path: &str, value: Value| json!({"op": "add", "path": path, "value": value});

    let mut ops = ungate_ops(pod);
    let affinity = pod.spec.affinity.as_ref();
    let node = affinity.and_then(|a| a.node_affinity.as_ref());
    let current = node.and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    match (affinity, node, current) {
        (None, _, _) => ops.push(add(
            AFFINITY,
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}),
        )),
        (Some(_), None, _) => ops.push(add(
            NODE,
            json!({"requiredDuringSchedulingIgnoredDuringExecution": required}),
        )),
        (Some(_), Some(_), None) => ops.push(add(REQUIRED, required)),
        (Some(_), Some(_), Some(sel)) if sel.node_selector_terms.is_empty() => ops.push(json!({
            "op": "replace",
            "path": format!("{REQUIRED}/nodeSelectorTerms"),
            "value": terms,
        })),
        // Terms are ORed: the requirement goes into every one of them.
        (Some(_), Some(_), Some(sel)) => {
            for (j, term) in sel.node_selector_terms.iter().enumerate() {
                let path = format!("{REQUIRED}/nodeSelectorTerms/{j}/matchExpressions");
                // The server omits an empty list, so it is set whole.
                if term
                    .match_expressions
                    .as_ref()
                    .is_some_and(|e| !e.is_empty())
                {
                    ops.push(add(&format!("{path}/-"), req.clone()));
                } else {
                    ops.push(add(&path, json!([req])));
                }
            }
        }
    }
    Value::Array(ops)
}

/// Urgent intents for waiting pods, grouped by namespace, owner (or pod)
/// and images; groups without candidates are left out. Sorted by id.
pub fn urgent_intents(
    waiting: &[(&GatedPod, Vec<String>, Vec<String>)],
    cfg: &GateConfig,
    now: DateTime<Utc>,
) -> Vec<Intent> {
    urgent_intents_with_secrets(waiting, cfg, now)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// [`urgent_intents`], each with the pull secrets of the pods it warms
/// for (their `imagePullSecrets`, as admitted).
pub fn urgent_intents_with_secrets(
    waiting: &[(&GatedPod, Vec<String>, Vec<String>)],
    cfg: &GateConfig,
    now: DateTime<Utc>,
) -> Vec<(Intent, WorkloadSecrets)> {
    type Group = (Vec<String>, BTreeSet<String>, WorkloadSecrets);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (pod, images, candidates) in waiting {
        let hash = images_hash(images);
        let id = match &pod.owner {
            Some((kind, name)) => format!("Gate/{}/{kind}/{name}@{hash}", pod.namespace),
            None => format!("Gate/{}/Pod/{}@{hash}", pod.namespace, pod.name),
        };
        let secrets = WorkloadSecrets::of_pod(&pod.namespace, &pod.spec);
        let entry = groups
            .entry(id)
            .or_insert_with(|| (images.clone(), BTreeSet::new(), secrets.clone()));
        entry.1.extend(candidates.iter().cloned());
        entry.2.merge(&secrets);
    }
    let ttl = i64::try_from(cfg.intent_ttl.as_secs()).unwrap_or(i64::MAX);
    let deadline_unix = now.timestamp().saturating_add(ttl);
    groups
        .into_iter()
        .filter(|(_, (_, nodes, _))| !nodes.is_empty())
        .map(|(id, (images, nodes, secrets))| {
            let intent = Intent {
                id,
                images,
                reason: INTENT_REASON.to_string(),
                priority: cfg.urgent_priority,
                deadline_unix,
                node_selector: Default::default(),
                nodes: nodes.into_iter().collect(),
                credentials: Vec::new(),
            };
            (intent, secrets)
        })
        .collect()
}

/// Go-style duration (`10m0s`, `1h30m0s`, `1.5s`), as users write them.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let ms = d.subsec_millis();
    let secs = if ms == 0 {
        format!("{}s", s % 60)
    } else {
        let frac = format!("{ms:03}");
        format!("{}.{}s", s % 60, frac.trim_end_matches('0'))
    };
    match (s / 3600, s / 60 % 60) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_fixture_tests.rs"]
mod fixture_tests;
