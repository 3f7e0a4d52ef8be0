//! The demo's own verdict, from what the API server holds and the writes
//! it recorded: the gated pod went to the warm node only, and the deploy
//! group stepped through both members in order.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::objects::{DEPLOYMENTS, GATED_POD, GROUP, GROUPS, MEMBERS, NS, PODS};
use super::sim::allowed_nodes;
use crate::testkit::apiserver::MockApi;
use crate::wire::deploygroup::{DeployGroupStatus, Outcome};

const TICK: Duration = Duration::from_millis(200);
/// The node whose agent holds the gated pod's image (its config lists it).
const WARM_NODE: &str = "node-a";

/// Creates the gated pod, waits for the coordinator to release it, then
/// plays the scheduler; Ok says where it went.
pub async fn gate(api: &MockApi, image: &str, timeout: Duration) -> Result<String, String> {
    api.put(PODS, super::objects::gated_pod(image));
    println!("   created pod {NS}/{GATED_POD} ({image}), gated by prewarm.dev/warm, fail-closed");
    let deadline = Instant::now() + timeout;
    let pod = loop {
        let pod = api.object(PODS, NS, GATED_POD).unwrap_or(Value::Null);
        let gated = pod["spec"]["schedulingGates"]
            .as_array()
            .is_none_or(|g| !g.is_empty());
        if !gated {
            break pod;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the gated pod was not released within {timeout:?}: {}",
                pod["spec"]
            ));
        }
        tokio::time::sleep(TICK).await;
    };
    for p in api.writes().iter().filter(|r| r.path.ends_with(GATED_POD)) {
        let body = p.body.as_ref().map(Value::to_string).unwrap_or_default();
        println!(
            "   the coordinator released it: {} {}\n     {body}",
            p.method, p.path
        );
    }
    let node = super::sim::bind(api, GATED_POD).unwrap_or_default();
    let allowed = allowed_nodes(&pod);
    if allowed != [WARM_NODE] || node != WARM_NODE {
        return Err(format!(
            "released onto {allowed:?} and bound to {node}, not onto the warm {WARM_NODE} only"
        ));
    }
    Ok(format!(
        "pod {NS}/{GATED_POD} released onto {WARM_NODE} only"
    ))
}

fn group_status(api: &MockApi) -> DeployGroupStatus {
    api.object(GROUPS, NS, GROUP)
        .and_then(|g| serde_json::from_value(g["status"].clone()).ok())
        .unwrap_or_default()
}

/// Waits until both members' new templates are deployed (or a step
/// fails); then checks the order of the coordinator's writes.
pub async fn deploy_group(api: &MockApi, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    let hashes: Vec<String> = MEMBERS.iter().map(|m| template_hash(api, m)).collect();
    let done = |st: &DeployGroupStatus| {
        MEMBERS.iter().zip(&hashes).all(|(m, h)| {
            st.results
                .iter()
                .any(|r| &r.member == m && &r.template_hash == h && r.result == Outcome::Succeeded)
        })
    };
    let st = loop {
        let st = group_status(api);
        if done(&st) && st.step.is_none() {
            break st;
        }
        if let Some(r) = st.results.iter().find(|r| r.result == Outcome::Failed) {
            return Err(format!("{} failed: {}", r.member, r.reason));
        }
        if start.elapsed() >= timeout {
            return Err(format!("not done within {timeout:?}: {}", st.message));
        }
        tokio::time::sleep(TICK).await;
    };
    order(api)?;
    let result = |m: &str| st.results.iter().find(|r| r.member == m).cloned();
    match (result(MEMBERS[0]), result(MEMBERS[1])) {
        (Some(a), Some(b)) if a.finished <= b.started => Ok(format!(
            "{} then {} deployed, each warmed, rolled, validated and quiesced",
            MEMBERS[0], MEMBERS[1]
        )),
        (a, b) => Err(format!("members overlapped: {a:?} {b:?}")),
    }
}

fn template_hash(api: &MockApi, member: &str) -> String {
    api.object(DEPLOYMENTS, NS, member)
        .and_then(|d| serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(d).ok())
        .and_then(|d| {
            d.spec
                .map(|s| crate::wire::deploygroup::template_hash(&s.template))
        })
        .unwrap_or_default()
}

/// The coordinator's pause/unpause patches, in order: each member is
/// unpaused and paused again before the next is unpaused.
fn order(api: &MockApi) -> Result<(), String> {
    let steps: Vec<String> = api
        .writes()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/deployments/"))
        .filter_map(|r| {
            let paused = r.body.as_ref()?.pointer("/spec/paused")?.as_bool()?;
            let name = r.path.rsplit('/').next()?;
            Some(format!(
                "{} {name}",
                if paused { "pause" } else { "unpause" }
            ))
        })
        .collect();
    let want: Vec<String> = MEMBERS
        .iter()
        .flat_map(|m| [format!("unpause {m}"), format!("pause {m}")])
        .collect();
    if steps == want {
        Ok(())
    } else {
        Err(format!(
            "the coordinator's pause/unpause patches were {steps:?}, not {want:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::apiserver::Identity;
    use serde_json::json;

    /// Releases the gated pod as the coordinator would, onto `nodes`.
    fn release(api: &MockApi, nodes: &[&str]) {
        api.update(PODS, NS, GATED_POD, |p| {
            p["spec"]["schedulingGates"] = json!([]);
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}}});
        });
    }

    async fn gate_with(nodes: Option<&'static [&'static str]>) -> Result<String, String> {
        let api = MockApi::new();
        let releaser = api.clone();
        tokio::spawn(async move {
            while releaser.object(PODS, NS, GATED_POD).is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(nodes) = nodes {
                release(&releaser, nodes);
            }
        });
        gate(&api, "reg.invalid/app:1", Duration::from_secs(2)).await
    }

    #[tokio::test]
    async fn the_gate_part_passes_only_for_a_release_onto_the_warm_node_alone() {
        let ok = gate_with(Some(&["node-a"])).await;
        assert!(ok.is_ok(), "{ok:?}");
        let both = gate_with(Some(&["node-a", "node-b"])).await;
        assert!(both.unwrap_err().contains("not onto the warm node-a only"));
        let cold = gate_with(Some(&["node-b"])).await;
        assert!(cold.is_err());
        let never = gate_with(None).await;
        assert!(never.unwrap_err().contains("was not released"));
    }

    /// The pause/unpause patches as the admin client sends them.
    async fn patches(steps: &[(&str, bool)]) -> Result<(), String> {
        let api = MockApi::new();
        for m in MEMBERS {
            api.put(
                DEPLOYMENTS,
                super::super::objects::deployment(m, "reg.invalid/a:1"),
            );
        }
        let client = api.client_as(Identity::admin());
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, NS);
        for (name, paused) in steps {
            let patch = kube::api::Patch::Merge(json!({"spec": {"paused": paused}}));
            deployments
                .patch(name, &kube::api::PatchParams::default(), &patch)
                .await
                .unwrap();
        }
        order(&api)
    }

    #[tokio::test]
    async fn the_deploy_part_passes_only_for_one_member_at_a_time() {
        let (a, b) = (MEMBERS[0], MEMBERS[1]);
        let in_order = patches(&[(a, false), (a, true), (b, false), (b, true)]).await;
        assert!(in_order.is_ok(), "{in_order:?}");
        let overlapping = patches(&[(a, false), (b, false), (a, true), (b, true)]).await;
        assert!(overlapping.unwrap_err().contains("unpause billing-api"));
        let one = patches(&[(a, false), (a, true)]).await;
        assert!(one.is_err());
    }
}
