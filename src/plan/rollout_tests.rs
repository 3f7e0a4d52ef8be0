//! Rollout tests on YAML fixtures (tests/fixtures/rollout) of real-shaped
//! objects, plus mutations of them.

use super::*;
use crate::plan::eligibility::{eligible, eligible_nodes, NodeFacts};
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::Metadata;
use serde::Deserialize;

const MID_ROLLOUT: &str = include_str!("../../tests/fixtures/rollout/deployment-mid-rollout.yaml");
const COMPLETE: &str = include_str!("../../tests/fixtures/rollout/deployment-complete.yaml");
const PAUSED: &str = include_str!("../../tests/fixtures/rollout/deployment-paused.yaml");
const UNOBSERVED: &str = include_str!("../../tests/fixtures/rollout/deployment-unobserved.yaml");
const RESTART: &str = include_str!("../../tests/fixtures/rollout/deployment-restart.yaml");
const STATEFULSETS: &str = include_str!("../../tests/fixtures/rollout/statefulsets.yaml");
const DAEMONSETS: &str = include_str!("../../tests/fixtures/rollout/daemonsets.yaml");
const PODS: &str = include_str!("../../tests/fixtures/rollout/pods.yaml");
const MALFORMED: &str = include_str!("../../tests/fixtures/rollout/malformed.yaml");
const GARBAGE: &str = include_str!("../../tests/fixtures/rollout/garbage.yaml");

const ORDERS_142: &str = "myregistry.azurecr.io/erp/orders-sync:1.4.2";
const MIGRATE_142: &str = "myregistry.azurecr.io/erp/orders-migrate:1.4.2";
const OTEL: &str = "mcr.microsoft.com/oss/otel/opentelemetry-collector:0.98.0";

/// The objects of one fixture file, by kind.
#[derive(Default)]
struct Objects {
    deployments: Vec<Deployment>,
    replica_sets: Vec<ReplicaSet>,
    stateful_sets: Vec<StatefulSet>,
    daemon_sets: Vec<DaemonSet>,
    pods: Vec<Pod>,
}

/// The object named `name`.
fn named<'a, T: Metadata<Ty = ObjectMeta>>(items: &'a [T], name: &str) -> &'a T {
    let found = items
        .iter()
        .find(|o| o.metadata().name.as_deref() == Some(name));
    found.unwrap_or_else(|| panic!("no {} {name}", T::KIND))
}

fn named_mut<'a, T: Metadata<Ty = ObjectMeta>>(items: &'a mut [T], name: &str) -> &'a mut T {
    let found = items
        .iter_mut()
        .find(|o| o.metadata().name.as_deref() == Some(name));
    found.unwrap_or_else(|| panic!("no {} {name}", T::KIND))
}

impl Objects {
    fn deployment(&self, name: &str) -> &Deployment {
        named(&self.deployments, name)
    }

    fn deployment_mut(&mut self, name: &str) -> &mut Deployment {
        named_mut(&mut self.deployments, name)
    }

    fn replica_set_mut(&mut self, name: &str) -> &mut ReplicaSet {
        named_mut(&mut self.replica_sets, name)
    }

    /// Pending rollout of Deployment `name` with every ReplicaSet loaded.
    fn pending(&self, name: &str) -> Option<PendingRollout> {
        pending_deployment(self.deployment(name), &self.replica_sets)
    }
}

/// The YAML documents of a fixture.
fn documents(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).expect("YAML"))
        .collect()
}

/// Adds one document to `objects` by its kind, or says why it can't.
fn decode(objects: &mut Objects, doc: serde_yaml_ng::Value) -> Result<(), String> {
    fn parse<T: serde::de::DeserializeOwned>(doc: serde_yaml_ng::Value) -> Result<T, String> {
        serde_yaml_ng::from_value(doc).map_err(|e| e.to_string())
    }
    match doc.get("kind").and_then(|k| k.as_str()) {
        Some("Deployment") => objects.deployments.push(parse(doc)?),
        Some("ReplicaSet") => objects.replica_sets.push(parse(doc)?),
        Some("StatefulSet") => objects.stateful_sets.push(parse(doc)?),
        Some("DaemonSet") => objects.daemon_sets.push(parse(doc)?),
        Some("Pod") => objects.pods.push(parse(doc)?),
        other => return Err(format!("unexpected kind {other:?}")),
    }
    Ok(())
}

fn load(text: &str) -> Objects {
    let mut objects = Objects::default();
    for doc in documents(text) {
        decode(&mut objects, doc).unwrap_or_else(|e| panic!("{e}"));
    }
    objects
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn set_image(spec: &mut Option<PodSpec>, image: &str) {
    if let Some(spec) = spec.as_mut() {
        spec.containers[0].image = Some(image.to_string());
    }
}

// ---- Deployments ----

#[test]
fn a_deployment_mid_rollout_is_pending_with_its_new_images() {
    let objects = load(MID_ROLLOUT);
    let p = objects.pending("orders-sync").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    assert_eq!(p.images, strings(&[MIGRATE_142, ORDERS_142, OTEL]));
    assert_eq!(p.replicas, 3);
    assert_eq!(
        p.workload.to_string(),
        "Deployment/integrations/orders-sync"
    );
    let d = objects.deployment("orders-sync");
    assert_eq!(
        Some(&p.template),
        d.spec.as_ref().unwrap().template.spec.as_ref()
    );
}

#[test]
fn a_deployment_whose_new_replica_set_is_available_is_not_pending() {
    let mut objects = load(MID_ROLLOUT);
    let new_rs = objects.replica_set_mut("orders-sync-5f7b9d4c8");
    new_rs.status.as_mut().unwrap().available_replicas = Some(3);
    assert_eq!(objects.pending("orders-sync"), None);
    // Available, not just created or ready, replicas count.
    let new_rs = objects.replica_set_mut("orders-sync-5f7b9d4c8");
    let status = new_rs.status.as_mut().unwrap();
    status.available_replicas = Some(2);
    status.ready_replicas = Some(3);
    status.replicas = 3;
    assert!(objects.pending("orders-sync").is_some());
}

#[test]
fn a_completed_rollout_is_not_pending() {
    assert_eq!(load(COMPLETE).pending("invoice-export"), None);
}

#[test]
fn replica_sets_of_another_owner_or_namespace_are_ignored() {
    let objects = load(MID_ROLLOUT);
    // Only the orphan (other uid, same name, complete): not the new one.
    let orphan: Vec<ReplicaSet> = objects
        .replica_sets
        .iter()
        .filter(|rs| rs.metadata.name.as_deref() == Some("orders-sync-5f7b9d4c8-orphan"))
        .cloned()
        .collect();
    let p = pending_deployment(objects.deployment("orders-sync"), &orphan).expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);

    // The finished rollout's new ReplicaSet moved to another namespace: the
    // Deployment then only has its 2.0.6 ReplicaSet.
    let mut objects = load(COMPLETE);
    objects
        .replica_set_mut("invoice-export-84b6d5f7c9")
        .metadata
        .namespace = Some("other".into());
    let p = objects.pending("invoice-export").expect("pending");
    assert_eq!(
        p.images,
        strings(&["myregistry.azurecr.io/erp/invoice-export:2.0.7"])
    );
}

#[test]
fn ownership_needs_a_controller_reference() {
    let mut objects = load(COMPLETE);
    let rs = objects.replica_set_mut("invoice-export-84b6d5f7c9");
    rs.metadata.owner_references.as_mut().unwrap()[0].controller = None;
    assert!(objects.pending("invoice-export").is_some());
}

#[test]
fn without_a_uid_ownership_falls_back_to_kind_and_name() {
    let mut objects = load(COMPLETE);
    objects.deployment_mut("invoice-export").metadata.uid = None;
    assert_eq!(objects.pending("invoice-export"), None);
    let mut objects = load(MID_ROLLOUT);
    objects.deployment_mut("orders-sync").metadata.uid = None;
    objects
        .replica_sets
        .retain(|rs| rs.metadata.name.as_deref() != Some("orders-sync-5f7b9d4c8-orphan"));
    assert!(objects.pending("orders-sync").is_some());
}

#[test]
fn a_paused_deployment_with_a_changed_template_is_pending() {
    let objects = load(PAUSED);
    let p = objects.pending("ledger-import").expect("pending");
    assert_eq!(p.reason, RolloutReason::PausedWithChangedTemplate);
    assert_eq!(
        p.images,
        strings(&["myregistry.azurecr.io/batch/ledger-import:3.3.0"])
    );
    assert_eq!(p.replicas, 2);
    assert_eq!(p.workload.namespace, "batch");
}

#[test]
fn a_paused_deployment_with_its_running_template_is_not_pending() {
    let mut objects = load(PAUSED);
    let d = objects.deployment_mut("ledger-import");
    set_image(
        &mut d.spec.as_mut().unwrap().template.spec,
        "myregistry.azurecr.io/batch/ledger-import:3.2.0",
    );
    assert_eq!(objects.pending("ledger-import"), None);
}

#[test]
fn a_rollout_paused_halfway_is_still_incomplete() {
    let mut objects = load(MID_ROLLOUT);
    let d = objects.deployment_mut("orders-sync");
    d.spec.as_mut().unwrap().paused = Some(true);
    let p = objects.pending("orders-sync").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
}

#[test]
fn a_template_change_the_controller_has_not_seen_is_pending() {
    let objects = load(UNOBSERVED);
    let p = objects.pending("orders-api").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    assert_eq!(
        p.images,
        strings(&["myregistry.azurecr.io/erp/orders-api:2.1.0"])
    );
    assert_eq!(p.replicas, 4);
}

#[test]
fn a_new_deployment_without_status_or_replica_sets_is_pending() {
    let objects = load(UNOBSERVED);
    let p = objects.pending("edi-gateway").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    // spec.replicas defaults to 1.
    assert_eq!(p.replicas, 1);
}

#[test]
fn a_restart_that_keeps_the_images_is_not_pending() {
    assert_eq!(load(RESTART).pending("erp-sync"), None);
    // Even once the old ReplicaSet is scaled down.
    let mut objects = load(RESTART);
    let old = objects.replica_set_mut("erp-sync-6b5a4c3d2e");
    old.status.as_mut().unwrap().available_replicas = Some(0);
    old.spec.as_mut().unwrap().replicas = Some(0);
    assert_eq!(objects.pending("erp-sync"), None);
}

#[test]
fn a_template_that_only_drops_an_image_is_not_pending() {
    let mut objects = load(MID_ROLLOUT);
    let d = objects.deployment_mut("orders-sync");
    let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.init_containers = None;
    spec.containers[0].image = Some("myregistry.azurecr.io/erp/orders-sync:1.4.1".into());
    assert_eq!(objects.pending("orders-sync"), None);
}

#[test]
fn a_rollback_to_a_scaled_down_replica_set_is_pending() {
    let mut objects = load(COMPLETE);
    let d = objects.deployment_mut("invoice-export");
    let old = "myregistry.azurecr.io/erp/invoice-export:2.0.6";
    set_image(&mut d.spec.as_mut().unwrap().template.spec, old);
    let p = objects.pending("invoice-export").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    assert_eq!(p.images, strings(&[old]));
}

#[test]
fn a_deployment_scaled_to_zero_is_not_pending() {
    let mut objects = load(MID_ROLLOUT);
    let d = objects.deployment_mut("orders-sync");
    d.spec.as_mut().unwrap().replicas = Some(0);
    assert_eq!(objects.pending("orders-sync"), None);
    // Also when no ReplicaSet for the template exists yet.
    let mut objects = load(PAUSED);
    let d = objects.deployment_mut("ledger-import");
    d.spec.as_mut().unwrap().replicas = Some(0);
    assert_eq!(objects.pending("ledger-import"), None);
}

#[test]
fn template_equality_ignores_the_hash_label_and_empty_fields() {
    let mut objects = load(MID_ROLLOUT);
    // Unobserved generation: only template equality can find the new RS.
    objects.deployment_mut("orders-sync").metadata.generation = Some(5);
    let rs = objects.replica_set_mut("orders-sync-5f7b9d4c8");
    let template = rs.spec.as_mut().unwrap().template.as_mut().unwrap();
    let spec = template.spec.as_mut().unwrap();
    spec.security_context = None;
    spec.containers[1].args = Some(vec![]);
    template.metadata.as_mut().unwrap().annotations = Some(Default::default());
    // Found as the new ReplicaSet: incomplete. Had it not been found, its
    // available replica would count its images as running.
    let p = objects.pending("orders-sync").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    let rs = objects.replica_set_mut("orders-sync-5f7b9d4c8");
    rs.status.as_mut().unwrap().available_replicas = Some(3);
    assert_eq!(objects.pending("orders-sync"), None);
}

#[test]
fn the_revision_stands_in_when_templates_drift() {
    // The new ReplicaSet's template differs in a field the API server
    // defaulted differently, so only its revision identifies it.
    let mut objects = load(MID_ROLLOUT);
    let rs = objects.replica_set_mut("orders-sync-5f7b9d4c8");
    let spec = rs.spec.as_mut().unwrap().template.as_mut().unwrap();
    spec.spec.as_mut().unwrap().enable_service_links = Some(true);
    let p = objects.pending("orders-sync").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    // Also while paused halfway.
    let d = objects.deployment_mut("orders-sync");
    d.spec.as_mut().unwrap().paused = Some(true);
    let p = objects.pending("orders-sync").expect("pending");
    assert_eq!(p.reason, RolloutReason::NewReplicaSetIncomplete);
    // Not before the controller observed the generation.
    let d = objects.deployment_mut("orders-sync");
    d.metadata.generation = Some(5);
    assert_eq!(objects.pending("orders-sync"), None);
}

#[test]
fn template_images_put_init_containers_first_and_dedupe() {
    let spec: PodSpec = serde_yaml_ng::from_str(
        "{initContainers: [{name: i, image: b}, {name: j, image: a}], \
          containers: [{name: c, image: a}, {name: d}, {name: e, image: ''}, {name: f, image: c}]}",
    )
    .unwrap();
    assert_eq!(template_images(&spec), strings(&["b", "a", "c"]));
    assert!(template_images(&PodSpec::default()).is_empty());
}

// ---- StatefulSets ----

#[test]
fn statefulset_revisions() {
    let objects = load(STATEFULSETS);
    let p = pending_statefulset(named(&objects.stateful_sets, "kafka-connect")).expect("pending");
    assert_eq!(p.reason, RolloutReason::StatefulSetRevisionPending);
    assert_eq!(
        p.images,
        strings(&[
            "myregistry.azurecr.io/streaming/connect-plugins:2025.03",
            "myregistry.azurecr.io/streaming/kafka-connect:3.8.0"
        ])
    );
    assert_eq!(p.replicas, 3);
    assert_eq!(
        p.workload.to_string(),
        "StatefulSet/streaming/kafka-connect"
    );
    assert_eq!(
        pending_statefulset(named(&objects.stateful_sets, "zookeeper")),
        None
    );
    // Unobserved generation with equal revisions.
    let p = pending_statefulset(named(&objects.stateful_sets, "schema-registry")).expect("pending");
    assert_eq!(p.reason, RolloutReason::StatefulSetRevisionPending);
    // Scaled to zero: no pod to start.
    assert_eq!(
        pending_statefulset(named(&objects.stateful_sets, "mirror-maker")),
        None
    );
}

#[test]
fn statefulset_settles_when_current_revision_catches_up() {
    let objects = load(STATEFULSETS);
    let mut s = named(&objects.stateful_sets, "kafka-connect").clone();
    let status = s.status.as_mut().unwrap();
    status.current_revision = status.update_revision.clone();
    assert_eq!(pending_statefulset(&s), None);
    // A missing current revision next to an update revision is pending.
    s.status.as_mut().unwrap().current_revision = None;
    assert!(pending_statefulset(&s).is_some());
}

// ---- DaemonSets ----

fn node(name: &str, taints: &[(&str, &str)], unschedulable: bool) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: [("kubernetes.io/os".to_string(), "linux".to_string())].into(),
        taints: taints
            .iter()
            .map(|(key, effect)| Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                ..Taint::default()
            })
            .collect(),
        unschedulable,
        ready: true,
    }
}

#[test]
fn daemonset_update_pending_with_daemon_tolerations() {
    let objects = load(DAEMONSETS);
    let p = pending_daemonset(named(&objects.daemon_sets, "node-exporter")).expect("pending");
    assert_eq!(p.reason, RolloutReason::DaemonSetUpdatePending);
    assert_eq!(
        p.images,
        strings(&["quay.io/prometheus/node-exporter:v1.8.2"])
    );
    assert_eq!(p.replicas, 5);
    let keys: Vec<&str> = p
        .template
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.as_deref())
        .collect();
    // Its own two, the controller's six (not-ready already present) and
    // network-unavailable for the host network.
    assert_eq!(
        keys,
        [
            "CriticalAddonsOnly",
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
            "node.kubernetes.io/unschedulable",
            "node.kubernetes.io/network-unavailable",
        ]
    );
    let nodes = [
        node(
            "cordoned",
            &[("node.kubernetes.io/unschedulable", "NoSchedule")],
            true,
        ),
        node(
            "pressure",
            &[("node.kubernetes.io/memory-pressure", "NoSchedule")],
            false,
        ),
        node("system", &[("CriticalAddonsOnly", "NoSchedule")], false),
        node("dedicated", &[("dedicated", "NoSchedule")], false),
    ];
    let names: Vec<&str> = eligible_nodes(&p.template, &nodes)
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["cordoned", "pressure", "system"]);
}

#[test]
fn daemonset_settled_and_unobserved() {
    let objects = load(DAEMONSETS);
    assert_eq!(
        pending_daemonset(named(&objects.daemon_sets, "fluent-bit")),
        None
    );
    let p = pending_daemonset(named(&objects.daemon_sets, "csi-proxy")).expect("pending");
    assert_eq!(p.reason, RolloutReason::DaemonSetUpdatePending);
    // No host network: no network-unavailable toleration.
    let tolerations = p.template.tolerations.unwrap_or_default();
    assert_eq!(tolerations.len(), 6);
    assert!(tolerations
        .iter()
        .all(|t| t.key.as_deref() != Some("node.kubernetes.io/network-unavailable")));
}

// ---- Pods ----

#[test]
fn pending_and_gated_pods() {
    let objects = load(PODS);
    let pending = pending_pods(&objects.pods);
    let names: Vec<&str> = pending.iter().map(|p| p.pod.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "orders-sync-5f7b9d4c8-x2k9p",
            "invoice-export-84b6d5f7c9-q7w2e",
            "kafka-connect-2",
            "adhoc-debug"
        ]
    );
    let gated = &pending[0];
    assert!(gated.gated);
    assert_eq!(gated.images, strings(&[MIGRATE_142, ORDERS_142]));
    assert_eq!(
        gated.pod.controller,
        Some(OwnerRef {
            kind: "ReplicaSet".into(),
            name: "orders-sync-5f7b9d4c8".into()
        })
    );
    assert_eq!(gated.reason(), RolloutReason::PodsPendingOrGated);
    assert!(!pending[1].gated);
    assert_eq!(pending[3].pod.controller, None);
    // A bound pod is pinned to its node.
    let bound = &pending[2];
    let here = node("aks-integrations-87654321-vmss000001", &[], false);
    let there = node("aks-integrations-87654321-vmss000000", &[], false);
    assert!(eligible(&bound.spec, &here).is_ok());
    assert!(eligible(&bound.spec, &there).is_err());
}

// ---- Opt-in ----

#[test]
fn opt_in_by_label_or_namespace() {
    let meta = |labels: &[(&str, &str)]| ObjectMeta {
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    };
    let on = meta(&[(ROLLOUT_LABEL, "true")]);
    let off = meta(&[(ROLLOUT_LABEL, "false")]);
    let other = meta(&[(ROLLOUT_LABEL, "yes")]);
    for ns in [false, true] {
        assert!(opted_in(&on, ns, ROLLOUT_LABEL));
        assert!(!opted_in(&off, ns, ROLLOUT_LABEL));
        assert_eq!(opted_in(&other, ns, ROLLOUT_LABEL), ns);
        assert_eq!(opted_in(&ObjectMeta::default(), ns, ROLLOUT_LABEL), ns);
    }
    assert!(opted_in(
        &meta(&[("team/warm", "true")]),
        false,
        "team/warm"
    ));
    assert!(!opted_in(&on, false, "team/warm"));
    let objects = load(MID_ROLLOUT);
    assert!(opted_in(
        &objects.deployment("orders-sync").metadata,
        false,
        ROLLOUT_LABEL
    ));
}

// ---- Malformed input ----

#[test]
fn partial_objects_are_never_pending_unless_a_generation_says_so() {
    let mut objects = load(MALFORMED);
    for d in &objects.deployments {
        assert_eq!(
            pending_deployment(d, &objects.replica_sets),
            None,
            "{:?}",
            d.metadata
        );
    }
    let p = |name: &str| pending_statefulset(named(&objects.stateful_sets, name));
    assert_eq!(p("no-spec"), None);
    assert_eq!(p("no-status-no-generation"), None);
    assert_eq!(p("no-containers"), None);
    // Just created: the controller has not observed generation 1 yet.
    assert!(p("no-status").is_some());
    assert_eq!(
        pending_daemonset(named(&objects.daemon_sets, "no-status-no-generation")),
        None
    );
    assert_eq!(
        pending_daemonset(named(&objects.daemon_sets, "no-template-spec")),
        None
    );
    assert!(pending_pods(&objects.pods).is_empty());
    // Broken ReplicaSets owned by a healthy Deployment change nothing.
    let edi = load(UNOBSERVED).deployment("edi-gateway").clone();
    objects.deployments.push(edi);
    let p = pending_deployment(objects.deployment("edi-gateway"), &objects.replica_sets);
    assert_eq!(
        p.map(|p| p.reason),
        Some(RolloutReason::NewReplicaSetIncomplete)
    );
    // Without its uid the Deployment matches the uid-less ownerReference by
    // name, whose ReplicaSet runs its template with every replica available.
    objects.deployment_mut("edi-gateway").metadata.uid = None;
    assert_eq!(
        pending_deployment(objects.deployment("edi-gateway"), &objects.replica_sets),
        None
    );
}

#[test]
fn garbage_fails_to_decode_with_an_error() {
    for doc in documents(GARBAGE) {
        let name = format!("{:?}", doc.get("metadata"));
        let mut objects = Objects::default();
        let err = decode(&mut objects, doc).expect_err(&name);
        assert!(
            err.contains("invalid") || err.contains("expected"),
            "{name}: {err}"
        );
    }
}

/// `value` with one node removed, for every node at any depth.
fn removals(value: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::Value;
    let mut out = Vec::new();
    match value {
        Value::Object(o) => {
            for (key, child) in o {
                let mut v = o.clone();
                v.remove(key);
                out.push(Value::Object(v));
                for inner in removals(child) {
                    let mut v = o.clone();
                    v.insert(key.clone(), inner);
                    out.push(Value::Object(v));
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let mut v = a.clone();
                v.remove(i);
                out.push(Value::Array(v));
                for inner in removals(child) {
                    let mut v = a.clone();
                    v[i] = inner;
                    out.push(Value::Array(v));
                }
            }
        }
        _ => {}
    }
    out
}

/// `obj` with each one of its fields (at any depth) removed, where the
/// result still deserializes.
fn mutations<T: serde::Serialize + serde::de::DeserializeOwned>(obj: &T) -> Vec<T> {
    let json = serde_json::to_value(obj).expect("serialize");
    removals(&json)
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// Removing any one field of any fixture object never panics.
#[test]
fn removing_any_field_never_panics() {
    let mut tried = 0;
    for text in [MID_ROLLOUT, PAUSED, STATEFULSETS, DAEMONSETS, PODS] {
        let objects = load(text);
        for d in &objects.deployments {
            for d in mutations(d) {
                tried += 1;
                let _ = pending_deployment(&d, &objects.replica_sets);
            }
        }
        for (i, rs) in objects.replica_sets.iter().enumerate() {
            for rs in mutations(rs) {
                tried += 1;
                let mut sets = objects.replica_sets.clone();
                sets[i] = rs;
                for d in &objects.deployments {
                    let _ = pending_deployment(d, &sets);
                }
            }
        }
        for s in &objects.stateful_sets {
            for s in mutations(s) {
                tried += 1;
                let _ = pending_statefulset(&s);
            }
        }
        for d in &objects.daemon_sets {
            for d in mutations(d) {
                tried += 1;
                let _ = pending_daemonset(&d);
            }
        }
        for pod in &objects.pods {
            let pods = mutations(pod);
            tried += pods.len();
            let _ = pending_pods(&pods);
        }
    }
    assert!(tried > 500, "{tried}");
}
