//! The parts of a cluster the demo plays itself, since there is no
//! kube-scheduler, kubelet or controller-manager: binding a released pod
//! and reporting it Running ([`bind`], called once the release is seen),
//! rolling out unpaused Deployments and finishing validation Jobs (the
//! controllers [`spawn`] runs). Each says what it simulated on stdout.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::objects::{DEPLOYMENTS, JOBS, NS, PODS};
use crate::testkit::apiserver::MockApi;

/// How often the simulated controllers look at the objects.
const TICK: Duration = Duration::from_millis(200);
/// How long a simulated rollout or Job takes: only so each stage shows.
const WORK: Duration = Duration::from_secs(1);

pub fn say(line: &str) {
    println!("   [simulated] {line}");
}

/// Runs the simulated Deployment and Job controllers until cancelled.
pub fn spawn(api: &MockApi, cancel: &CancellationToken) {
    let (api, cancel) = (api.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut started = BTreeSet::new();
        while !cancel.is_cancelled() {
            for (kind, key) in roll_unpaused(&api).into_iter().chain(finish_jobs(&api)) {
                if started.insert((kind, key.clone())) {
                    tokio::spawn(finish(api.clone(), kind, key));
                }
            }
            tokio::time::sleep(TICK).await;
        }
    });
}

fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// The nodes a release's affinity allows (`kubernetes.io/hostname In`).
pub fn allowed_nodes(pod: &Value) -> Vec<String> {
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| {
            t["matchExpressions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
        .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The scheduler and kubelet: the released pod `name` goes to the first
/// node its affinity allows and is reported Running and Ready; returns
/// that node.
pub fn bind(api: &MockApi, name: &str) -> Option<String> {
    let pod = api.object(PODS, NS, name)?;
    let node = allowed_nodes(&pod).into_iter().next()?;
    api.update(PODS, NS, name, |p| {
        p["spec"]["nodeName"] = json!(node);
        p["status"] = json!({"phase": "Running",
                             "conditions": [{"type": "Ready", "status": "True"}]});
    });
    say(&format!(
        "scheduler: bound pod {NS}/{name} to {node}; kubelet: reported it Running (no container started)"
    ));
    Some(node)
}

/// Unpaused Deployments whose spec the controller has not seen yet.
fn roll_unpaused(api: &MockApi) -> Vec<(&'static str, String)> {
    api.objects(DEPLOYMENTS)
        .iter()
        .filter(|d| {
            let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
            let observed = d["status"]["observedGeneration"].as_i64().unwrap_or(0);
            !d["spec"]["paused"].as_bool().unwrap_or(false) && observed < generation
        })
        .map(|d| {
            let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
            (
                "deployment",
                format!("{}@{generation}", text(d, "/metadata/name")),
            )
        })
        .collect()
}

/// Jobs not finished yet.
fn finish_jobs(api: &MockApi) -> Vec<(&'static str, String)> {
    api.objects(JOBS)
        .iter()
        .filter(|j| j["status"]["succeeded"].as_i64().unwrap_or(0) == 0)
        .map(|j| ("job", text(j, "/metadata/name").to_string()))
        .collect()
}

/// Completes one rollout (`name@generation`) or Job after [`WORK`].
async fn finish(api: MockApi, kind: &'static str, key: String) {
    tokio::time::sleep(WORK).await;
    if kind == "job" {
        api.update(JOBS, NS, &key, |j| {
            j["status"] = json!({"succeeded": 1,
                                 "conditions": [{"type": "Complete", "status": "True"}]});
        });
        say(&format!(
            "Job controller: validation Job {NS}/{key} succeeded (its pod never ran)"
        ));
        return;
    }
    let (name, generation) = key.split_once('@').unwrap_or((&key, "1"));
    let generation: i64 = generation.parse().unwrap_or(1);
    let mut image = String::new();
    api.update(DEPLOYMENTS, NS, name, |d| {
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        image = text(d, "/spec/template/spec/containers/0/image").to_string();
        d["status"] = json!({"observedGeneration": generation, "replicas": replicas,
                             "updatedReplicas": replicas, "readyReplicas": replicas,
                             "availableReplicas": replicas});
    });
    say(&format!(
        "Deployment controller: {NS}/{name} rolled out to {image}, 1/1 replicas Ready (no pod started)"
    ));
}
