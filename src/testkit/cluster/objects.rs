//! The demo cluster's objects: two nodes of one pool, the gated pod, and
//! a two-member DeployGroup with its Deployments and a ScaledObject.

use serde_json::{json, Value};

pub const NAMESPACES: &str = "api/v1/namespaces";
pub const NODES: &str = "api/v1/nodes";
pub const PODS: &str = "api/v1/pods";
pub const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
pub const JOBS: &str = "apis/batch/v1/jobs";
pub const GROUPS: &str = "apis/prewarm.dev/v1alpha1/deploygroups";
pub const SCALED: &str = "apis/keda.sh/v1alpha1/scaledobjects";

/// The workloads' namespace.
pub const NS: &str = "demo";
pub const GROUP: &str = "integrations";
pub const POOL_LABEL: &str = "kubernetes.azure.com/agentpool";
pub const POOL: &str = "integrations";
/// The gated pod.
pub const GATED_POD: &str = "orders-sync-0";
/// The DeployGroup's members, in order.
pub const MEMBERS: [&str; 2] = ["orders-api", "billing-api"];

/// The nodes and their zone: both in the pool, so both are eligible.
pub const NODE_ZONES: [(&str, &str); 2] = [("node-a", "zone-1"), ("node-b", "zone-2")];

pub fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, POOL_LABEL: POOL,
            "topology.kubernetes.io/zone": zone}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
}

/// A pod as a ReplicaSet of a gated template creates it: held by the
/// scheduling gate until the coordinator releases it. Fail-closed: it may
/// only ever go to a node that holds its image.
pub fn gated_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": GATED_POD, "namespace": NS,
                     "creationTimestamp": chrono::Utc::now().to_rfc3339(),
                     "labels": {"prewarm.dev/gate": "true", "app": "orders-sync"},
                     "annotations": {"prewarm.dev/gate-policy": "fail-closed"}},
        "spec": {
            "schedulingGates": [{"name": "prewarm.dev/warm"}],
            "nodeSelector": {POOL_LABEL: POOL},
            "containers": [{"name": "app", "image": image}]
        }
    })
}

/// A paused member running `image`, its rollout complete.
pub fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"replicas": 1, "paused": true,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeSelector": {POOL_LABEL: POOL},
                                       "containers": [{"name": "app", "image": image}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "availableReplicas": 1}
    })
}

pub fn scaled_object(target: &str) -> Value {
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": {"name": target, "namespace": NS},
           "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": 0}})
}

/// The group: orders-api validated by a Job, billing-api by an HTTP check
/// against `check_url`.
pub fn deploy_group(check_url: &str) -> Value {
    json!({"apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
           "metadata": {"name": GROUP, "namespace": NS, "generation": 1},
           "spec": {"members": [
                        {"deployment": MEMBERS[0],
                         "job": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                                 "containers": [{"name": "smoke", "image": "busybox", "args": ["true"]}]}}}},
                        {"deployment": MEMBERS[1], "httpCheck": {"url": check_url, "interval": "1s"}}],
                    "quiesce": "2s", "warmTimeout": "2m", "rolloutTimeout": "1m",
                    "validationTimeout": "1m"}})
}

/// The tag a member runs before the demo changes it: `repo:previous`.
pub fn previous(image: &str) -> String {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => format!("{repo}:previous"),
        _ => format!("{image}:previous"),
    }
}
