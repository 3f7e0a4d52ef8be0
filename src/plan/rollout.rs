//! Pending rollouts: which images a workload is about to start, and why.
//!
//! A pure function of workload objects as the API server returns them; the
//! coordinator feeds it watched objects and warms the returned images on the
//! nodes [`crate::plan::eligibility`] finds for the returned pod template.
//!
//! Rules:
//! - **Deployment.** The *new* ReplicaSet is found the way the deployment
//!   controller finds it: the oldest owned ReplicaSet (controller
//!   ownerReference, by uid) whose pod template equals the Deployment's,
//!   ignoring the `pod-template-hash` label. If none matches that way (a
//!   template the API server defaulted differently) and the controller has
//!   observed the current generation, the owned ReplicaSet carrying the
//!   Deployment's `deployment.kubernetes.io/revision` with the same images
//!   stands in for it. The Deployment is pending when the new ReplicaSet
//!   does not exist yet (`PausedWithChangedTemplate` when paused, since a
//!   paused Deployment creates none) or has fewer available replicas than
//!   the Deployment wants (`NewReplicaSetIncomplete`), and the template
//!   brings an image the workload is not already running: one missing from
//!   every other owned ReplicaSet that has available replicas and from the
//!   newest of them (what ran just before this rollout). A restart or an env
//!   change that keeps the images is not pending.
//! - **StatefulSet.** Pending while `status.updateRevision` differs from
//!   `status.currentRevision`, or while the controller has not observed the
//!   current generation (`status.observedGeneration < metadata.generation`;
//!   a new object without status counts as unobserved). With `OnDelete` or a
//!   partition it stays pending until every pod runs the update revision.
//! - **DaemonSet.** Pending while `updatedNumberScheduled <
//!   desiredNumberScheduled` or the generation is not observed yet. The
//!   returned template carries the tolerations the DaemonSet controller adds
//!   to every daemon pod, so eligibility sees where daemon pods really go.
//! - A workload scaled to zero starts no pod, so nothing is pending.
//! - Images are the template's init container images then container images
//!   (the order the kubelet needs them), deduplicated, compared as strings.
//!
//! Objects without a name, namespace, spec, pod template or container image
//! yield `None`; nothing here panics on partial input.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest as _, Sha256};

/// Label by which a workload opts in (`"true"`) or out (`"false"`).
pub const ROLLOUT_LABEL: &str = "prewarm.dev/rollout";
/// Annotation the deployment controller puts on Deployments and ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Label the deployment controller adds to a ReplicaSet's pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Kinds of workloads whose rollouts are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    /// `Deployment/namespace/name`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why a workload is about to start pods with new images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RolloutReason {
    /// The Deployment's new ReplicaSet is missing or not fully available.
    NewReplicaSetIncomplete,
    /// The Deployment is paused with a template no ReplicaSet has yet.
    PausedWithChangedTemplate,
    /// The StatefulSet's update revision is not rolled out to every pod.
    StatefulSetRevisionPending,
    /// The DaemonSet's template is not on every node it should run on.
    DaemonSetUpdatePending,
    /// Pods exist that are not running yet or wait on scheduling gates.
    PodsPendingOrGated,
}

impl RolloutReason {
    /// snake_case name, for logs, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutReason::NewReplicaSetIncomplete => "new_replica_set_incomplete",
            RolloutReason::PausedWithChangedTemplate => "paused_with_changed_template",
            RolloutReason::StatefulSetRevisionPending => "stateful_set_revision_pending",
            RolloutReason::DaemonSetUpdatePending => "daemon_set_update_pending",
            RolloutReason::PodsPendingOrGated => "pods_pending_or_gated",
        }
    }
}

impl std::fmt::Display for RolloutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload about to start pods from a new template.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRollout {
    pub workload: WorkloadRef,
    /// The new template's images, see [`template_images`].
    pub images: Vec<String>,
    pub reason: RolloutReason,
    /// The new pod template's spec, for eligibility.
    pub template: PodSpec,
    /// Pods the new template runs: `spec.replicas` (default 1), or a
    /// DaemonSet's `desiredNumberScheduled` (0 until the controller counted).
    pub replicas: i32,
}

/// The controller of a pod (its ownerReference with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// A pod by namespace and name, with its controller if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub controller: Option<OwnerRef>,
}

/// A pod that has not started yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub pod: PodRef,
    /// The pod's images, see [`template_images`].
    pub images: Vec<String>,
    /// Held back by `spec.schedulingGates`.
    pub gated: bool,
    /// The pod's spec (a bound pod's `nodeName` pins it), for eligibility.
    pub spec: PodSpec,
}

impl PendingPod {
    /// Always [`RolloutReason::PodsPendingOrGated`].
    pub fn reason(&self) -> RolloutReason {
        RolloutReason::PodsPendingOrGated
    }
}

/// Short, stable hash of an image list (order matters: it is the pull order).
pub fn images_hash(images: &[String]) -> String {
    let mut h = Sha256::new();
    for i in images {
        // Length-prefixed, so no two lists hash the same input.
        h.update((i.len() as u64).to_be_bytes());
        h.update(i.as_bytes());
    }
    hex::encode(&h.finalize()[..5])
}

/// Init container images, then container images, first occurrence kept;
/// containers without an image are skipped.
pub fn template_images(spec: &PodSpec) -> Vec<String> {
    let init = spec.init_containers.iter().flatten();
    let mut seen = BTreeSet::new();
    init.chain(&spec.containers)
        .filter_map(|c| c.image.as_deref())
        .filter(|i| !i.trim().is_empty())
        .filter(|i| seen.insert(*i))
        .map(str::to_string)
        .collect()
}

/// Whether a workload takes part in rollout warming: its [`ROLLOUT_LABEL`]-
/// style `label` set to `"true"` opts it in and `"false"` opts it out, even
/// in an opted-in namespace; without the label the namespace decides.
pub fn opted_in(meta: &ObjectMeta, namespace_opted_in: bool, label: &str) -> bool {
    match meta.labels.as_ref().and_then(|l| l.get(label)) {
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        _ => namespace_opted_in,
    }
}

/// The pending rollout of a Deployment, given the ReplicaSets of its
/// namespace (others are ignored), or `None` when nothing new will start.
pub fn pending_deployment(d: &Deployment, replica_sets: &[ReplicaSet]) -> Option<PendingRollout> {
    let workload = workload_ref(WorkloadKind::Deployment, &d.metadata)?;
    let spec = d.spec.as_ref()?;
    let (template, images) = template_of(&spec.template)?;
    let replicas = spec.replicas.unwrap_or(1);
    if replicas <= 0 {
        return None;
    }
    let owned: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| controlled_by(&d.metadata, &rs.metadata))
        .collect();
    let paused = spec.paused.unwrap_or(false);
    let observed = d.status.as_ref().and_then(|s| s.observed_generation);
    let new_rs = find_new_replica_set(&spec.template, &owned).or_else(|| {
        // Stand-in by revision, once the controller synced this generation
        // (before, the annotation still names the previous ReplicaSet).
        if generation_pending(&d.metadata, observed) {
            return None;
        }
        by_revision(&d.metadata, &owned, &images)
    });
    let reason = match new_rs {
        Some(rs) if available(rs) >= replicas => return None,
        Some(_) => RolloutReason::NewReplicaSetIncomplete,
        None if paused => RolloutReason::PausedWithChangedTemplate,
        None => RolloutReason::NewReplicaSetIncomplete,
    };
    let running = running_images(&owned, new_rs);
    if images.iter().all(|i| running.contains(i.as_str())) {
        return None;
    }
    Some(PendingRollout {
        workload,
        images,
        reason,
        template: template.clone(),
        replicas,
    })
}

/// The pending rollout of a StatefulSet, or `None`.
pub fn pending_statefulset(s: &StatefulSet) -> Option<PendingRollout> {
    let workload = workload_ref(WorkloadKind::StatefulSet, &s.metadata)?;
    let spec = s.spec.as_ref()?;
    let (template, images) = template_of(&spec.template)?;
    let replicas = spec.replicas.unwrap_or(1);
    if replicas <= 0 {
        return None;
    }
    let status = s.status.as_ref();
    let revision_pending = status.is_some_and(|st| {
        st.update_revision.as_deref().is_some_and(|u| !u.is_empty())
            && st.update_revision != st.current_revision
    });
    let unobserved = generation_pending(&s.metadata, status.and_then(|st| st.observed_generation));
    if !revision_pending && !unobserved {
        return None;
    }
    Some(PendingRollout {
        workload,
        images,
        reason: RolloutReason::StatefulSetRevisionPending,
        template: template.clone(),
        replicas,
    })
}

/// The pending update of a DaemonSet, or `None`.
pub fn pending_daemonset(d: &DaemonSet) -> Option<PendingRollout> {
    let workload = workload_ref(WorkloadKind::DaemonSet, &d.metadata)?;
    let spec = d.spec.as_ref()?;
    let (template, images) = template_of(&spec.template)?;
    let status = d.status.as_ref();
    let desired = status.map_or(0, |st| st.desired_number_scheduled);
    let updated = status
        .and_then(|st| st.updated_number_scheduled)
        .unwrap_or(0);
    let unobserved = generation_pending(&d.metadata, status.and_then(|st| st.observed_generation));
    if updated >= desired && !unobserved {
        return None;
    }
    let mut template = template.clone();
    add_daemon_tolerations(&mut template);
    Some(PendingRollout {
        workload,
        images,
        reason: RolloutReason::DaemonSetUpdatePending,
        template,
        replicas: desired.max(0),
    })
}

/// Pods not started yet: phase `Pending` (or no phase, just created) or held
/// by scheduling gates, and not being deleted. Pods without a name,
/// namespace, spec or image are skipped.
pub fn pending_pods(pods: &[Pod]) -> Vec<PendingPod> {
    pods.iter().filter_map(pending_pod).collect()
}

fn pending_pod(pod: &Pod) -> Option<PendingPod> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let gated = spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if !gated && !matches!(phase, None | Some("Pending")) {
        return None;
    }
    let images = template_images(spec);
    if images.is_empty() {
        return None;
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef {
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    Some(PendingPod {
        pod: PodRef {
            namespace: non_empty(&meta.namespace)?,
            name: non_empty(&meta.name)?,
            controller,
        },
        images,
        gated,
        spec: spec.clone(),
    })
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

fn workload_ref(kind: WorkloadKind, meta: &ObjectMeta) -> Option<WorkloadRef> {
    Some(WorkloadRef {
        kind,
        namespace: non_empty(&meta.namespace)?,
        name: non_empty(&meta.name)?,
    })
}

/// The pod spec and its images; `None` without containers or images.
fn template_of(template: &PodTemplateSpec) -> Option<(&PodSpec, Vec<String>)> {
    let spec = template.spec.as_ref()?;
    let images = template_images(spec);
    if spec.containers.is_empty() || images.is_empty() {
        return None;
    }
    Some((spec, images))
}

/// The controller has not acted on the latest spec yet. Unknown when the
/// object carries no generation.
fn generation_pending(meta: &ObjectMeta, observed: Option<i64>) -> bool {
    meta.generation
        .is_some_and(|generation| observed.unwrap_or(0) < generation)
}

/// `rs` is controlled by the Deployment `d`: same namespace and a controller
/// ownerReference with `d`'s uid (kind and name when `d` carries no uid).
fn controlled_by(d: &ObjectMeta, rs: &ObjectMeta) -> bool {
    if rs.namespace != d.namespace {
        return false;
    }
    let uid = d.uid.as_deref().filter(|u| !u.is_empty());
    rs.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && match uid {
                Some(uid) => o.uid == uid,
                None => o.kind == "Deployment" && d.name.as_deref() == Some(o.name.as_str()),
            }
    })
}

/// The deployment controller's `FindNewReplicaSet`: the oldest ReplicaSet
/// whose template equals the Deployment's ignoring `pod-template-hash`.
fn find_new_replica_set<'a>(
    template: &PodTemplateSpec,
    owned: &[&'a ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let want = normalized(template)?;
    owned
        .iter()
        .copied()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(normalized)
                .is_some_and(|t| t == want)
        })
        .min_by(|a, b| {
            let key = |rs: &'a ReplicaSet| {
                (
                    rs.metadata.creation_timestamp.clone(),
                    rs.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
}

/// A template as JSON without `pod-template-hash`, nulls and empty lists or
/// maps (apimachinery's semantic equality treats nil and empty alike).
fn normalized(template: &PodTemplateSpec) -> Option<serde_json::Value> {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut value = serde_json::to_value(&template).ok()?;
    prune(&mut value);
    Some(value)
}

/// Drops nulls and empty arrays and objects, recursively.
fn prune(value: &mut serde_json::Value) {
    let empty = |v: &serde_json::Value| match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(prune),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(prune);
            fields.retain(|_, v| !empty(v));
        }
        _ => {}
    }
}

/// The owned ReplicaSet at the Deployment's revision, if it runs exactly
/// the template's images.
fn by_revision<'a>(
    d: &ObjectMeta,
    owned: &[&'a ReplicaSet],
    images: &[String],
) -> Option<&'a ReplicaSet> {
    let revision = revision(d)?;
    owned
        .iter()
        .copied()
        .find(|rs| revision_of(rs) == Some(revision) && rs_images(rs) == images)
}

fn revision(meta: &ObjectMeta) -> Option<i64> {
    meta.annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)?
        .trim()
        .parse()
        .ok()
}

fn revision_of(rs: &ReplicaSet) -> Option<i64> {
    revision(&rs.metadata)
}

fn rs_images(rs: &ReplicaSet) -> Vec<String> {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(template_images)
        .unwrap_or_default()
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Images the Deployment runs apart from the new ReplicaSet: those of every
/// other owned ReplicaSet with available replicas, and of the newest other
/// one (what ran just before this rollout, even if already scaled down).
fn running_images(owned: &[&ReplicaSet], new_rs: Option<&ReplicaSet>) -> BTreeSet<String> {
    let others: Vec<&ReplicaSet> = owned
        .iter()
        .copied()
        .filter(|rs| !new_rs.is_some_and(|n| std::ptr::eq(*rs, n)))
        .collect();
    let newest = others
        .iter()
        .copied()
        .max_by_key(|rs| (revision_of(rs), rs.metadata.creation_timestamp.clone()));
    others
        .iter()
        .copied()
        .filter(|rs| available(rs) > 0)
        .chain(newest)
        .flat_map(rs_images)
        .collect()
}

/// Tolerations the DaemonSet controller adds to every daemon pod
/// (`AddOrUpdateDaemonPodTolerations`): key, effect.
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];
/// Added as well for pods on the host network.
const DAEMON_HOST_NETWORK_TOLERATION: (&str, &str) =
    ("node.kubernetes.io/network-unavailable", "NoSchedule");

fn add_daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network.unwrap_or(false);
    let extra = host_network.then_some(DAEMON_HOST_NETWORK_TOLERATION);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in DAEMON_TOLERATIONS.into_iter().chain(extra) {
        let toleration = Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some(effect.to_string()),
            ..Toleration::default()
        };
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
