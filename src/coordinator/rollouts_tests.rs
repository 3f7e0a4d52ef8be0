//! Rollout intents: the pure part on the YAML fixtures of
//! tests/fixtures/rollout, the watch loop against kube's tower-test mock API
//! server (controller-rs fixture style: the mock answers each request).

use std::collections::BTreeSet;

use chrono::TimeZone;
use serde::Deserialize;

use super::*;

const MID_ROLLOUT: &str = include_str!("../../tests/fixtures/rollout/deployment-mid-rollout.yaml");
const COMPLETE: &str = include_str!("../../tests/fixtures/rollout/deployment-complete.yaml");
const STATEFULSETS: &str = include_str!("../../tests/fixtures/rollout/statefulsets.yaml");
const DAEMONSETS: &str = include_str!("../../tests/fixtures/rollout/daemonsets.yaml");
const PODS: &str = include_str!("../../tests/fixtures/rollout/pods.yaml");

const ORDERS_142: &str = "myregistry.azurecr.io/erp/orders-sync:1.4.2";
const MIGRATE_142: &str = "myregistry.azurecr.io/erp/orders-migrate:1.4.2";
const OTEL: &str = "mcr.microsoft.com/oss/otel/opentelemetry-collector:0.98.0";

const INT0: &str = "aks-integrations-87654321-vmss000000";
const INT1: &str = "aks-integrations-87654321-vmss000001";
const INT2: &str = "aks-integrations-87654321-vmss000002";
const SYS0: &str = "aks-system-12345678-vmss000000";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, 8, 0, 0).unwrap()
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).expect("YAML"))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Vec<T> {
    documents(text)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).expect("object"))
        .collect()
}

/// Every object of the fixture texts, plus the test nodes.
fn cluster(texts: &[&str]) -> ClusterObjects {
    let mut c = ClusterObjects {
        nodes: nodes(),
        ..ClusterObjects::default()
    };
    for t in texts {
        c.deployments.extend(of_kind(t, "Deployment"));
        c.replica_sets.extend(of_kind(t, "ReplicaSet"));
        c.stateful_sets.extend(of_kind(t, "StatefulSet"));
        c.daemon_sets.extend(of_kind(t, "DaemonSet"));
        c.pods.extend(of_kind(t, "Pod"));
    }
    c
}

fn node_json(
    name: &str,
    pool: &str,
    ready: bool,
    taint: Option<(&str, &str)>,
) -> serde_json::Value {
    let taints: Vec<serde_json::Value> = taint
        .into_iter()
        .map(|(k, e)| serde_json::json!({"key": k, "value": "true", "effect": e}))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.azure.com/agentpool": pool, "kubernetes.io/os": "linux"},
        },
        "spec": {"taints": taints},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "images": [{"names": ["docker.io/library/big:1"], "sizeBytes": 1}],
        },
    })
}

/// Two ready integrations nodes, one not ready, a tainted system node.
fn nodes_json() -> Vec<serde_json::Value> {
    vec![
        node_json(
            SYS0,
            "system",
            true,
            Some(("CriticalAddonsOnly", "NoSchedule")),
        ),
        node_json(INT1, "integrations", true, None),
        node_json(INT2, "integrations", false, None),
        node_json(INT0, "integrations", true, None),
    ]
}

fn nodes() -> Vec<Node> {
    nodes_json()
        .into_iter()
        .map(|n| serde_json::from_value(n).unwrap())
        .collect()
}

fn cfg(namespaces: &[&str]) -> RolloutConfig {
    RolloutConfig {
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        priority: 50,
        ..RolloutConfig::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ids(intents: &[Intent]) -> Vec<String> {
    intents.iter().map(|i| i.id.clone()).collect()
}

fn id(prefix: &str, images: &[&str]) -> String {
    format!("{prefix}@{}", images_hash(&strings(images)))
}

// ---- intents_from ----

#[test]
fn a_labelled_deployment_mid_rollout_becomes_one_intent_on_its_eligible_nodes() {
    let intents = intents_from(&cluster(&[MID_ROLLOUT]), &cfg(&[]), now());
    let images = [MIGRATE_142, ORDERS_142, OTEL];
    assert_eq!(
        intents,
        vec![Intent {
            id: id("Deployment/integrations/orders-sync", &images),
            images: strings(&images),
            reason: "new_replica_set_incomplete".into(),
            priority: 50,
            deadline_unix: now().timestamp() + 3600,
            node_selector: Default::default(),
            // Ready integrations nodes, sorted; not the one that is not ready.
            nodes: strings(&[INT0, INT1]),
            credentials: Vec::new(),
        }]
    );
    assert!(intents[0]
        .id
        .starts_with("Deployment/integrations/orders-sync@"));
    assert_eq!(
        intents[0].id.len(),
        "Deployment/integrations/orders-sync@".len() + 10
    );
}

#[test]
fn a_completed_rollout_yields_nothing() {
    assert_eq!(
        intents_from(&cluster(&[COMPLETE]), &cfg(&["integrations"]), now()),
        vec![]
    );
}

#[test]
fn opt_in_by_label_namespace_list_or_namespace_label_and_opt_out_by_label() {
    let mut c = cluster(&[MID_ROLLOUT]);
    let labels = c.deployments[0].metadata.labels.as_mut().unwrap();
    labels.remove(ROLLOUT_LABEL);
    // Neither labelled nor in an opted-in namespace.
    assert_eq!(intents_from(&c, &cfg(&["other"]), now()), vec![]);
    // The namespace is opted in by configuration, or by its label.
    assert_eq!(intents_from(&c, &cfg(&["integrations"]), now()).len(), 1);
    c.namespaces_opted_in.insert("integrations".into());
    assert_eq!(intents_from(&c, &cfg(&[]), now()).len(), 1);
    // "false" opts out even in an opted-in namespace.
    let labels = c.deployments[0].metadata.labels.as_mut().unwrap();
    labels.insert(ROLLOUT_LABEL.into(), "false".into());
    assert_eq!(intents_from(&c, &cfg(&["integrations"]), now()), vec![]);
    // A custom label.
    let labels = c.deployments[0].metadata.labels.as_mut().unwrap();
    labels.insert("example.com/warm".into(), "true".into());
    let custom = RolloutConfig {
        opt_in_label: "example.com/warm".into(),
        ..cfg(&[])
    };
    c.namespaces_opted_in.clear();
    assert_eq!(intents_from(&c, &custom, now()).len(), 1);
}

#[test]
fn statefulsets_and_daemonsets_land_where_their_pods_can() {
    let c = cluster(&[STATEFULSETS, DAEMONSETS]);
    // Only the labelled kafka-connect outside opted-in namespaces.
    let intents = intents_from(&c, &cfg(&[]), now());
    let kafka = [
        "myregistry.azurecr.io/streaming/connect-plugins:2025.03",
        "myregistry.azurecr.io/streaming/kafka-connect:3.8.0",
    ];
    assert_eq!(
        ids(&intents),
        vec![id("StatefulSet/streaming/kafka-connect", &kafka)]
    );
    assert_eq!(intents[0].reason, "stateful_set_revision_pending");
    assert_eq!(intents[0].nodes, strings(&[INT0, INT1]));

    let intents = intents_from(&c, &cfg(&["streaming", "monitoring", "kube-system"]), now());
    let exporter = ["quay.io/prometheus/node-exporter:v1.8.2"];
    let csi = ["mcr.microsoft.com/oss/kubernetes-csi/csi-proxy:v1.1.3"];
    let registry = ["myregistry.azurecr.io/streaming/schema-registry:7.6.1"];
    assert_eq!(
        ids(&intents),
        vec![
            id("DaemonSet/kube-system/csi-proxy", &csi),
            id("DaemonSet/monitoring/node-exporter", &exporter),
            id("StatefulSet/streaming/kafka-connect", &kafka),
            id("StatefulSet/streaming/schema-registry", &registry),
        ]
    );
    // node-exporter tolerates CriticalAddonsOnly: the system node too. The
    // csi-proxy does not, and zookeeper and the scaled-to-zero mirror-maker
    // are not pending.
    assert_eq!(intents[1].nodes, strings(&[INT0, INT1, SYS0]));
    assert_eq!(intents[1].reason, "daemon_set_update_pending");
    assert_eq!(intents[0].nodes, strings(&[INT0, INT1]));
}

#[test]
fn pending_and_gated_pods_are_grouped_by_controller() {
    let c = cluster(&[PODS]);
    let intents = intents_from(&c, &cfg(&["integrations", "streaming", "batch"]), now());
    let gated = [MIGRATE_142, ORDERS_142];
    let invoice = ["myregistry.azurecr.io/erp/invoice-export:2.0.7"];
    let connect = ["myregistry.azurecr.io/streaming/kafka-connect:3.8.0"];
    let busybox = ["mcr.microsoft.com/azurelinux/busybox:1.36"];
    assert_eq!(
        ids(&intents),
        vec![
            id("Pod/integrations/adhoc-debug", &busybox),
            id(
                "ReplicaSet/integrations/invoice-export-84b6d5f7c9/pods",
                &invoice
            ),
            id("ReplicaSet/integrations/orders-sync-5f7b9d4c8/pods", &gated),
            id("StatefulSet/streaming/kafka-connect/pods", &connect),
        ]
    );
    assert!(intents.iter().all(|i| i.reason == "pods_pending_or_gated"));
    assert_eq!(intents[2].images, strings(&gated));
    assert_eq!(intents[2].nodes, strings(&[INT0, INT1]));
    // Bound to its node by spec.nodeName.
    assert_eq!(intents[3].nodes, strings(&[INT1]));
    // Pods are opted in like workloads: not in a listed namespace, not labelled.
    assert_eq!(intents_from(&c, &cfg(&[]), now()), vec![]);
}

#[test]
fn many_pending_pods_of_one_controller_make_one_intent() {
    let mut c = cluster(&[PODS]);
    let mut twin = c.pods[1].clone();
    twin.metadata.name = Some("invoice-export-84b6d5f7c9-zzz11".into());
    c.pods.push(twin);
    let intents = intents_from(&c, &cfg(&["integrations"]), now());
    let invoice: Vec<_> = intents
        .iter()
        .filter(|i| i.id.contains("invoice-export"))
        .collect();
    assert_eq!(invoice.len(), 1);
}

#[test]
fn pods_covered_by_a_workload_intent_are_not_repeated() {
    let c = cluster(&[MID_ROLLOUT, STATEFULSETS, PODS]);
    let intents = intents_from(&c, &cfg(&["integrations", "streaming"]), now());
    let ids = ids(&intents);
    assert!(
        ids.iter()
            .any(|i| i.starts_with("Deployment/integrations/orders-sync@")),
        "{ids:?}"
    );
    assert!(
        ids.iter()
            .any(|i| i.starts_with("StatefulSet/streaming/kafka-connect@")),
        "{ids:?}"
    );
    // The gated orders-sync pod and the bound kafka-connect pod are covered.
    assert!(
        !ids.iter().any(|i| i.contains("orders-sync-5f7b9d4c8/pods")),
        "{ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.contains("kafka-connect/pods")),
        "{ids:?}"
    );
    // Not covered: other images.
    assert!(
        ids.iter()
            .any(|i| i.contains("invoice-export-84b6d5f7c9/pods")),
        "{ids:?}"
    );
}

#[test]
fn nothing_is_emitted_without_an_eligible_node() {
    // An intent without nodes would reach every node.
    let mut c = cluster(&[MID_ROLLOUT, PODS]);
    c.nodes.retain(|n| n.metadata.name.as_deref() == Some(SYS0));
    assert_eq!(intents_from(&c, &cfg(&["integrations"]), now()), vec![]);
    c.nodes.clear();
    assert_eq!(intents_from(&c, &cfg(&["integrations"]), now()), vec![]);
}

#[test]
fn output_does_not_depend_on_input_order() {
    let c = cluster(&[MID_ROLLOUT, STATEFULSETS, DAEMONSETS, PODS]);
    let config = cfg(&["integrations", "streaming", "monitoring"]);
    let a = intents_from(&c, &config, now());
    let mut r = c.clone();
    r.deployments.reverse();
    r.replica_sets.reverse();
    r.stateful_sets.reverse();
    r.daemon_sets.reverse();
    r.pods.reverse();
    r.nodes.reverse();
    assert_eq!(a, intents_from(&r, &config, now()));
    let sorted: BTreeSet<_> = ids(&a).into_iter().collect();
    assert_eq!(sorted.into_iter().collect::<Vec<_>>(), ids(&a));
}

#[test]
fn partial_objects_do_not_panic() {
    let mut c = cluster(&[MID_ROLLOUT, STATEFULSETS, DAEMONSETS, PODS]);
    c.deployments.push(Deployment::default());
    c.stateful_sets.push(StatefulSet::default());
    c.daemon_sets.push(DaemonSet::default());
    c.pods.push(Pod::default());
    c.replica_sets.push(ReplicaSet::default());
    c.nodes.push(Node::default());
    assert!(!intents_from(&c, &cfg(&["integrations"]), now()).is_empty());
}

#[test]
fn image_hash_is_short_stable_and_order_sensitive() {
    let a = images_hash(&strings(&[MIGRATE_142, ORDERS_142]));
    assert_eq!(a.len(), 10);
    assert_eq!(a, images_hash(&strings(&[MIGRATE_142, ORDERS_142])));
    assert_ne!(a, images_hash(&strings(&[ORDERS_142, MIGRATE_142])));
    // Not fooled by joining.
    assert_ne!(
        images_hash(&strings(&["a\nb"])),
        images_hash(&strings(&["a", "b"]))
    );
}

#[test]
fn deadlines_stay_put_until_half_the_ttl_is_used() {
    let ttl = Duration::from_secs(3600);
    let t0 = now();
    let first = intents_from(&cluster(&[MID_ROLLOUT]), &cfg(&[]), t0);
    // Ten minutes later: same intents, same deadline.
    let t1 = t0 + chrono::Duration::minutes(10);
    let mut again = intents_from(&cluster(&[MID_ROLLOUT]), &cfg(&[]), t1);
    assert_ne!(again, first);
    keep_deadlines(&first, &mut again, t1, ttl);
    assert_eq!(again, first);
    // Past half the TTL: refreshed.
    let t2 = t0 + chrono::Duration::minutes(31);
    let mut later = intents_from(&cluster(&[MID_ROLLOUT]), &cfg(&[]), t2);
    keep_deadlines(&first, &mut later, t2, ttl);
    assert_eq!(later[0].deadline_unix, t2.timestamp() + 3600);
}

// ---- stores ----

fn dep(ns: &str, name: &str) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.namespace = Some(ns.into());
    d.metadata.name = Some(name.into());
    d
}

fn names(ds: &[Deployment]) -> Vec<String> {
    ds.iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect()
}

#[test]
fn a_relist_replaces_a_sources_objects_and_sources_are_merged() {
    let mut s = KindStore::<Deployment>::default();
    assert!(!s.apply("a", Event::Init));
    s.apply("a", Event::InitApply(dep("x", "one")));
    s.apply("a", Event::InitApply(dep("x", "two")));
    assert!(s.objects().is_empty(), "buffered until InitDone");
    assert!(!s.synced("a"));
    assert!(s.apply("a", Event::InitDone));
    assert!(s.synced("a"));
    assert_eq!(names(&s.objects()), ["one", "two"]);
    // The same object from a second source is listed once.
    s.apply("b", Event::Apply(dep("x", "two")));
    s.apply("b", Event::Apply(dep("x", "three")));
    assert_eq!(names(&s.objects()), ["one", "three", "two"]);
    // A relist without "one" drops it.
    s.apply("a", Event::Init);
    s.apply("a", Event::InitApply(dep("x", "two")));
    s.apply("a", Event::InitDone);
    assert_eq!(names(&s.objects()), ["three", "two"]);
    assert!(s.apply("b", Event::Delete(dep("x", "three"))));
    assert!(!s.apply("b", Event::Delete(dep("x", "three"))));
    assert!(s.drop_source("b"));
    assert_eq!(names(&s.objects()), ["two"]);
}

#[test]
fn updates_from_stopped_namespace_watches_are_ignored() {
    let mut stores = Stores::default();
    let active: BTreeSet<String> = ["ns/a#1".to_string()].into();
    assert!(stores.apply(
        Update::Deployment("ns/a#1".into(), Event::Apply(dep("a", "x"))),
        &active
    ));
    assert!(!stores.apply(
        Update::Deployment("ns/a#0".into(), Event::Apply(dep("a", "y"))),
        &active
    ));
    assert!(stores.apply(
        Update::Deployment(LABELLED.into(), Event::Apply(dep("b", "z"))),
        &active
    ));
    assert_eq!(
        names(&stores.snapshot(ROLLOUT_LABEL).deployments),
        ["x", "z"]
    );
}

#[test]
fn namespace_watches_cover_opted_in_namespaces_and_labelled_deployments() {
    let mut c = ClusterObjects::default();
    c.deployments.push(dep("apps", "labelled"));
    c.deployments.push(dep("integrations", "other"));
    c.namespaces_opted_in.insert("streaming".into());
    let wanted = wanted_namespaces(&c, &cfg(&["integrations"]));
    let expected: BTreeMap<String, NsScope> = [
        ("apps".to_string(), NsScope::ReplicaSets),
        ("integrations".to_string(), NsScope::Full),
        ("streaming".to_string(), NsScope::Full),
    ]
    .into();
    assert_eq!(wanted, expected);
}

#[test]
fn nodes_and_pods_are_slimmed_to_what_the_planner_reads() {
    let n = slim_node(nodes().remove(0));
    assert!(n.status.as_ref().unwrap().images.is_none());
    assert_eq!(NodeFacts::from_node(&n), NodeFacts::from_node(&nodes()[0]));
    let pods: Vec<Pod> = of_kind(PODS, "Pod");
    let slimmed: Vec<Pod> = pods.iter().cloned().map(slim_pod).collect();
    assert_eq!(
        rollout::pending_pods(&pods),
        rollout::pending_pods(&slimmed)
    );
}

// ---- the watch loop against the mock API server ----

use crate::testkit::apiserver::MockApi;

#[tokio::test]
async fn the_watch_loop_lists_and_publishes_intents() {
    let fixture = documents(MID_ROLLOUT);
    let by_kind = |k: &str| {
        fixture
            .iter()
            .filter(|d| d["kind"] == k)
            .cloned()
            .collect::<Vec<_>>()
    };
    let api = MockApi::new();
    for (resource, objects) in [
        ("api/v1/nodes", nodes_json()),
        ("apis/apps/v1/deployments", by_kind("Deployment")),
        ("apis/apps/v1/replicasets", by_kind("ReplicaSet")),
    ] {
        for o in objects {
            api.put(resource, o);
        }
    }
    let client = api.coordinator_client();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let config = RolloutConfig {
        debounce: Duration::from_millis(50),
        ..cfg(&["integrations"])
    };
    let task = tokio::spawn(run(
        client,
        config,
        move |i| tx.send(i).unwrap(),
        cancel.clone(),
    ));

    let published = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let intents = rx.recv().await.expect("published");
            if !intents.is_empty() {
                return intents;
            }
        }
    })
    .await
    .expect("intents within 20 s");
    assert_eq!(published.len(), 1);
    assert!(published[0]
        .id
        .starts_with("Deployment/integrations/orders-sync@"));
    assert_eq!(
        published[0].images,
        strings(&[MIGRATE_142, ORDERS_142, OTEL])
    );
    assert_eq!(published[0].nodes, strings(&[INT0, INT1]));
    assert_eq!(published[0].priority, 50);

    // Nothing changes: nothing is published again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err());

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .unwrap();
    let refused = api.forbidden();
    assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");

    let seen: Vec<String> = api
        .requests()
        .iter()
        .map(|r| format!("{}?{}", r.path, r.query))
        .collect();
    let pods: Vec<&String> = seen.iter().filter(|r| r.contains("/pods")).collect();
    // Never every pod of the cluster: labelled ones, or one namespace's.
    assert!(!pods.is_empty());
    for p in &pods {
        assert!(
            p.starts_with("/api/v1/namespaces/integrations/pods")
                || p.contains("labelSelector=prewarm.dev%2Frollout%3Dtrue"),
            "{p}"
        );
    }
    // Nodes are watched after the list.
    assert!(
        seen.iter()
            .any(|r| r.starts_with("/api/v1/nodes?") && r.contains("watch=true")),
        "{seen:?}"
    );
}
