//! Gate decisions on hand-built cluster views and pod specs; every patch is
//! asserted as exact JSON.

use chrono::TimeZone;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::json;

use super::*;
use crate::wire::v1::{image_state::Phase, ImageState, Snapshot, Taint as WireTaint};

const NGINX: &str = "docker.io/library/nginx:latest";
const APP: &str = "myregistry.azurecr.io/erp/app:1.0";
const MIGRATE: &str = "myregistry.azurecr.io/erp/migrate:1.0";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, 8, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn image(name: &str, phase: Phase) -> ImageState {
    ImageState {
        name: name.into(),
        phase: phase as i32,
        ..Default::default()
    }
}

/// A node labelled `pool` with `kubernetes.io/hostname` = its name.
fn snap(node: &str, pool: &str, warm: &[&str]) -> Snapshot {
    Snapshot {
        node: node.into(),
        labels: [
            ("pool".to_string(), pool.to_string()),
            (HOSTNAME_LABEL.to_string(), node.to_string()),
        ]
        .into_iter()
        .collect(),
        images: warm.iter().map(|i| image(i, Phase::Warm)).collect(),
        seq: 1,
        ..Default::default()
    }
}

fn tainted(mut s: Snapshot, key: &str, effect: &str) -> Snapshot {
    s.taints.push(WireTaint {
        key: key.into(),
        value: "true".into(),
        effect: effect.into(),
    });
    s
}

fn view(snaps: Vec<Snapshot>) -> ClusterView {
    let mut v = ClusterView::default();
    for s in snaps {
        v.apply_snapshot(s, t0());
    }
    v
}

fn spec(v: serde_json::Value) -> PodSpec {
    serde_json::from_value(v).expect("pod spec")
}

/// A gated pod created at t0 with one container per image.
fn pod_with(images: &[&str], extra: serde_json::Value) -> GatedPod {
    let containers: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, img)| json!({"name": format!("c{i}"), "image": img}))
        .collect();
    let mut s = json!({"containers": containers, "schedulingGates": [{"name": GATE}]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        s[k] = v;
    }
    GatedPod {
        namespace: "erp".into(),
        name: "app-0".into(),
        uid: "u-1".into(),
        created: t0(),
        spec: spec(s),
        annotations: BTreeMap::new(),
        owner: Some(("ReplicaSet".into(), "app-7d9".into())),
    }
}

fn pod(extra: serde_json::Value) -> GatedPod {
    pod_with(&[APP], extra)
}

fn req(values: &[&str]) -> serde_json::Value {
    json!({"key": HOSTNAME_LABEL, "operator": "In", "values": values})
}

fn ungate_ops_at(i: usize) -> Vec<serde_json::Value> {
    vec![
        json!({"op": "test", "path": format!("/spec/schedulingGates/{i}/name"), "value": GATE}),
        json!({"op": "remove", "path": format!("/spec/schedulingGates/{i}")}),
    ]
}

fn with_ops(mut ops: Vec<serde_json::Value>, more: Vec<serde_json::Value>) -> serde_json::Value {
    ops.extend(more);
    serde_json::Value::Array(ops)
}

const REQUIRED: &str = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";

// ---- patches ----

#[test]
fn patch_without_affinity_adds_it_whole_with_sorted_deduplicated_hostnames() {
    let p = pod(json!({}));
    let patch = release_patch(&p, &strings(&["n2", "n1", "n2"]));
    let expected = with_ops(
        ungate_ops_at(0),
        vec![
            json!({"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [req(&["n1", "n2"])]}]}}}}),
        ],
    );
    assert_eq!(patch, expected);
}

#[test]
fn patch_with_pod_anti_affinity_only_adds_node_affinity_beside_it() {
    let p = pod(json!({"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": HOSTNAME_LABEL, "labelSelector": {"matchLabels": {"app": "x"}}}]}}}));
    let expected = with_ops(
        ungate_ops_at(0),
        vec![
            json!({"op": "add", "path": "/spec/affinity/nodeAffinity", "value": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [req(&["n1"])]}]}}}),
        ],
    );
    assert_eq!(release_patch(&p, &strings(&["n1"])), expected);
}

#[test]
fn patch_with_preferred_node_affinity_only_adds_required_and_leaves_preferred() {
    let p = pod(json!({"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "preference": {
            "matchExpressions": [{"key": "pool", "operator": "In", "values": ["fast"]}]}}]}}}));
    let expected = with_ops(
        ungate_ops_at(0),
        vec![json!({"op": "add", "path": REQUIRED, "value": {
            "nodeSelectorTerms": [{"matchExpressions": [req(&["n1"])]}]}})],
    );
    assert_eq!(release_patch(&p, &strings(&["n1"])), expected);
}

#[test]
fn patch_appends_the_requirement_to_every_required_term() {
    let p = pod(json!({"affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]},
        {"matchExpressions": [], "matchFields": [
            {"key": "metadata.name", "operator": "NotIn", "values": ["n8"]}]},
    ]}}}}));
    let expected = with_ops(
        ungate_ops_at(0),
        vec![
            json!({"op": "add", "path": format!("{REQUIRED}/nodeSelectorTerms/0/matchExpressions/-"),
                "value": req(&["n1", "n9"])}),
            json!({"op": "add", "path": format!("{REQUIRED}/nodeSelectorTerms/1/matchExpressions"),
                "value": [req(&["n1", "n9"])]}),
            // An empty list is set whole too: the server omits it.
            json!({"op": "add", "path": format!("{REQUIRED}/nodeSelectorTerms/2/matchExpressions"),
                "value": [req(&["n1", "n9"])]}),
        ],
    );
    assert_eq!(release_patch(&p, &strings(&["n9", "n1"])), expected);
}

#[test]
fn patch_sets_terms_when_the_required_selector_has_none() {
    let p = pod(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}}));
    let expected = with_ops(
        ungate_ops_at(0),
        vec![
            json!({"op": "replace", "path": format!("{REQUIRED}/nodeSelectorTerms"),
            "value": [{"matchExpressions": [req(&["n1"])]}]}),
        ],
    );
    assert_eq!(release_patch(&p, &strings(&["n1"])), expected);
}

#[test]
fn patches_remove_only_our_gate_at_its_index() {
    let p = pod(json!({"schedulingGates": [
        {"name": "example.com/quota"}, {"name": GATE}, {"name": "example.com/other"}]}));
    assert_eq!(ungate_patch(&p), serde_json::Value::Array(ungate_ops_at(1)));
    let release = release_patch(&p, &strings(&["n1"]));
    assert_eq!(release[0], ungate_ops_at(1)[0]);
    assert_eq!(release[1], ungate_ops_at(1)[1]);
    assert_eq!(release.as_array().unwrap().len(), 3);
}

#[test]
fn ungate_patch_without_our_gate_tests_index_zero_so_it_fails_harmlessly() {
    let p = pod(json!({"schedulingGates": [{"name": "example.com/quota"}]}));
    assert_eq!(ungate_patch(&p), serde_json::Value::Array(ungate_ops_at(0)));
}

// ---- eligibility and warmth ----

#[test]
fn release_only_onto_eligible_connected_nodes_with_every_image_warm() {
    let mut v = view(vec![
        snap("a", "apps", &[APP, MIGRATE]),
        snap("b", "apps", &[APP]),
        tainted(
            snap("c", "apps", &[APP, MIGRATE]),
            "dedicated",
            "NoSchedule",
        ),
        snap("d", "batch", &[APP, MIGRATE]),
        snap("e", "apps", &[APP, MIGRATE]),
        tainted(snap("f", "apps", &[APP, MIGRATE]), "spot", "NoSchedule"),
        tainted(
            snap("g", "apps", &[APP, MIGRATE]),
            "spot",
            "PreferNoSchedule",
        ),
    ]);
    v.disconnect("e");
    let mut pulling = snap("h", "apps", &[APP]);
    pulling.images.push(image(MIGRATE, Phase::Pulling));
    v.apply_snapshot(pulling, t0());
    let p = pod_with(
        &[MIGRATE, APP],
        json!({"nodeSelector": {"pool": "apps"},
            "tolerations": [{"key": "spot", "operator": "Exists"}]}),
    );
    let images = strings(&[MIGRATE, APP]);
    assert_eq!(
        warm_eligible(&p.spec, &images, &v),
        (
            strings(&["a", "b", "f", "g", "h"]),
            strings(&["a", "f", "g"])
        )
    );
    let verdict = decide(&p, &v, &GateConfig::default(), at(5));
    assert_eq!(
        verdict,
        Verdict {
            decision: Decision::Release {
                nodes: strings(&["a", "f", "g"]),
                patch: release_patch(&p, &strings(&["a", "f", "g"])),
            },
            warnings: vec![],
        }
    );
}

#[test]
fn eligibility_is_judged_on_the_current_spec_with_the_users_own_narrowing() {
    let v = view(vec![snap("n1", "apps", &[APP]), snap("n2", "apps", &[APP])]);
    let p = pod(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": ["n2"]}]}]}}}}));
    let Decision::Release { nodes, patch } = decide(&p, &v, &GateConfig::default(), t0()).decision
    else {
        panic!("expected a release");
    };
    assert_eq!(nodes, strings(&["n2"]));
    assert_eq!(
        patch[2],
        json!({"op": "add", "path": format!("{REQUIRED}/nodeSelectorTerms/0/matchExpressions/-"),
            "value": req(&["n2"])})
    );
}

#[test]
fn release_narrows_on_the_hostname_label_or_falls_back_to_the_node_name() {
    let mut labelled = snap("aks-apps-vmss000001", "apps", &[APP]);
    labelled
        .labels
        .insert(HOSTNAME_LABEL.into(), "host-one".into());
    let mut bare = snap("aks-apps-vmss000000", "apps", &[APP]);
    bare.labels.remove(HOSTNAME_LABEL);
    let v = view(vec![labelled, bare]);
    let p = pod(json!({}));
    let Decision::Release { nodes, patch } = decide(&p, &v, &GateConfig::default(), t0()).decision
    else {
        panic!("expected a release");
    };
    assert_eq!(
        nodes,
        strings(&["aks-apps-vmss000000", "aks-apps-vmss000001"])
    );
    assert_eq!(
        patch[2]["value"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0],
        req(&["aks-apps-vmss000000", "host-one"])
    );
}

#[test]
fn short_image_names_match_the_cri_names_agents_report() {
    let v = view(vec![snap("n1", "apps", &[NGINX]), snap("n2", "apps", &[])]);
    let p = pod_with(&["nginx"], json!({}));
    let Decision::Release { nodes, .. } = decide(&p, &v, &GateConfig::default(), t0()).decision
    else {
        panic!("expected a release");
    };
    assert_eq!(nodes, strings(&["n1"]));
}

#[test]
fn pod_images_are_init_first_normalized_and_deduplicated() {
    let s = spec(json!({
        "initContainers": [{"name": "migrate", "image": MIGRATE}, {"name": "nothing"}],
        "containers": [
            {"name": "web", "image": "nginx"},
            {"name": "sidecar", "image": NGINX},
            {"name": "app", "image": APP},
            {"name": "again", "image": MIGRATE},
        ],
    }));
    assert_eq!(pod_images(&s).unwrap(), strings(&[MIGRATE, NGINX, APP]));
}

#[test]
fn node_facts_convert_taints_and_take_readiness_from_the_connection() {
    let mut v = view(vec![tainted(
        snap("n1", "apps", &[]),
        "node.kubernetes.io/unschedulable",
        "NoSchedule",
    )]);
    v.disconnect("n1");
    let facts = node_facts(&v, v.node("n1").unwrap()).unwrap();
    assert_eq!(facts.name, "n1");
    assert_eq!(facts.labels.get("pool").map(String::as_str), Some("apps"));
    assert!(!facts.ready);
    assert!(!facts.unschedulable);
    assert_eq!(
        facts.taints,
        vec![k8s_openapi::api::core::v1::Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]
    );
}

/// Once the API server's Nodes are known they decide eligibility: a taint
/// the agent never reported excludes its node, a node the API does not know
/// is not eligible, and the hostname label comes from the Node object.
#[test]
fn api_node_facts_override_the_agents_reports() {
    use crate::plan::eligibility::NodeFacts;
    let mut v = view(vec![
        snap("n1", "apps", &[APP]),
        snap("n2", "apps", &[APP]),
        snap("n3", "apps", &[APP]),
    ]);
    let api = |name: &str, taint: Option<&str>| NodeFacts {
        name: name.into(),
        labels: [
            ("pool".to_string(), "apps".to_string()),
            (HOSTNAME_LABEL.to_string(), format!("aks-{name}")),
        ]
        .into_iter()
        .collect(),
        taints: taint
            .map(|k| {
                vec![k8s_openapi::api::core::v1::Taint {
                    key: k.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        unschedulable: false,
        ready: true,
    };
    v.set_api_nodes([
        api("n1", None),
        api("n2", Some("node.kubernetes.io/unschedulable")),
    ]);
    let p = pod_with(&[APP], json!({"nodeSelector": {"pool": "apps"}}));
    let images = pod_images(&p.spec).unwrap();
    let (eligible, warm) = warm_eligible(&p.spec, &images, &v);
    assert_eq!(eligible, ["n1"]);
    assert_eq!(warm, ["n1"]);
    match decide(&p, &v, &GateConfig::default(), p.created).decision {
        Decision::Release { nodes, patch } => {
            assert_eq!(nodes, ["n1"]);
            assert_eq!(
                patch[2]["value"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
                json!(["aks-n1"])
            );
        }
        other => panic!("{other:?}"),
    }
    // The API says not ready: not eligible, whatever the agent says.
    let mut down = api("n1", None);
    down.ready = false;
    v.set_api_node(down);
    assert!(warm_eligible(&p.spec, &images, &v).0.is_empty());
}

// ---- waiting and timeouts (waits for a pull: gate/estimate_tests.rs) ----

#[test]
fn no_connected_eligible_node_waits_without_candidates() {
    let mut v = view(vec![snap("n1", "apps", &[APP]), snap("n2", "batch", &[])]);
    v.disconnect("n1");
    let p = pod(json!({"nodeSelector": {"pool": "apps"}}));
    let Decision::Wait { candidates, .. } = decide(&p, &v, &GateConfig::default(), at(1)).decision
    else {
        panic!("expected wait");
    };
    assert!(candidates.is_empty());
}

#[test]
fn fail_closed_holds_exactly_at_the_timeout() {
    let v = view(vec![snap("n1", "apps", &[])]);
    let p = pod_with(&[APP, MIGRATE], json!({}));
    let cfg = GateConfig {
        timeout: Duration::from_secs(90),
        policy: TimeoutPolicy::FailClosed,
        ..GateConfig::default()
    };
    assert!(matches!(
        decide(&p, &v, &cfg, at(89)).decision,
        Decision::Wait { .. }
    ));
    assert_eq!(
        decide(&p, &v, &cfg, at(90)).decision,
        Decision::Hold {
            reason: format!(
                "no eligible node warm for images {APP}, {MIGRATE} after 1m30s; holding (fail-closed)"
            ),
            candidates: vec!["n1".to_string()],
            images: strings(&[APP, MIGRATE]),
        }
    );
}

#[test]
fn a_warm_node_releases_even_after_the_timeout() {
    let v = view(vec![snap("n1", "apps", &[APP])]);
    let cfg = GateConfig {
        policy: TimeoutPolicy::FailClosed,
        ..GateConfig::default()
    };
    let decision = decide(&pod(json!({})), &v, &cfg, at(7200)).decision;
    assert!(matches!(decision, Decision::Release { .. }), "{decision:?}");
}

// ---- annotations ----

#[test]
fn annotations_override_timeout_and_policy() {
    let mut p = pod(json!({}));
    p.annotations
        .insert(TIMEOUT_ANNOTATION.into(), "90s".into());
    p.annotations
        .insert(POLICY_ANNOTATION.into(), "fail-closed".into());
    let cfg = GateConfig::default();
    assert_eq!(
        effective(&p, &cfg),
        (Duration::from_secs(90), TimeoutPolicy::FailClosed, vec![])
    );
    let v = view(vec![snap("n1", "apps", &[])]);
    let verdict = decide(&p, &v, &cfg, at(90));
    assert!(
        matches!(verdict.decision, Decision::Hold { .. }),
        "{verdict:?}"
    );
    assert!(verdict.warnings.is_empty());

    p.annotations.insert(TIMEOUT_ANNOTATION.into(), "1h".into());
    p.annotations
        .insert(POLICY_ANNOTATION.into(), "fail-open".into());
    let cfg = GateConfig {
        policy: TimeoutPolicy::FailClosed,
        ..cfg
    };
    assert_eq!(
        effective(&p, &cfg),
        (Duration::from_secs(3600), TimeoutPolicy::FailOpen, vec![])
    );
}

#[test]
fn malformed_annotations_fall_back_to_the_defaults_with_warnings() {
    let mut p = pod(json!({}));
    p.annotations
        .insert(TIMEOUT_ANNOTATION.into(), "ten minutes".into());
    p.annotations
        .insert(POLICY_ANNOTATION.into(), "maybe".into());
    let warnings = vec![
        r#"annotation prewarm.dev/gate-timeout: "ten minutes" is not a duration (use 90s, 10m or 1h)"#
            .to_string(),
        r#"annotation prewarm.dev/gate-policy: "maybe" is not a policy (use fail-open or fail-closed)"#
            .to_string(),
    ];
    let cfg = GateConfig::default();
    assert_eq!(
        effective(&p, &cfg),
        (
            Duration::from_secs(600),
            TimeoutPolicy::FailOpen,
            warnings.clone()
        )
    );
    let v = view(vec![snap("n1", "apps", &[])]);
    let verdict = decide(&p, &v, &cfg, at(600));
    assert!(matches!(verdict.decision, Decision::ReleaseUnwarmed { .. }));
    assert_eq!(verdict.warnings, warnings);
    // A bare number has no unit and is refused too.
    p.annotations.insert(TIMEOUT_ANNOTATION.into(), "90".into());
    assert_eq!(effective(&p, &cfg).0, Duration::from_secs(600));
}

#[test]
fn policy_strings_round_trip() {
    for (s, p) in [
        ("fail-open", TimeoutPolicy::FailOpen),
        ("fail-closed", TimeoutPolicy::FailClosed),
    ] {
        assert_eq!(s.parse::<TimeoutPolicy>().unwrap(), p);
        assert_eq!(p.to_string(), s);
        assert_eq!(serde_json::to_value(p).unwrap(), json!(s));
        assert_eq!(
            serde_json::from_value::<TimeoutPolicy>(json!(s)).unwrap(),
            p
        );
    }
    assert_eq!(
        "FailOpen".parse::<TimeoutPolicy>(),
        Err(GateError::UnknownPolicy("FailOpen".into()))
    );
}

#[test]
fn config_defaults() {
    assert_eq!(
        GateConfig::default(),
        GateConfig {
            timeout: Duration::from_secs(600),
            policy: TimeoutPolicy::FailOpen,
            urgent_priority: 1000,
            intent_ttl: Duration::from_secs(900),
            estimate: EstimateConfig {
                default_throughput: 25.0 * 1024.0 * 1024.0,
                release_overhead: Duration::from_millis(500),
                hold_margin: 0.2,
                stall_after: Duration::from_secs(5),
            },
        }
    );
}

// ---- bad images ----

#[test]
fn an_unparsable_image_releases_unwarmed_naming_the_reference() {
    let v = view(vec![snap("n1", "apps", &[APP])]);
    let p = pod_with(&[APP, "Erp/App:1"], json!({}));
    let err = pod_images(&p.spec).unwrap_err();
    assert!(matches!(&err, GateError::BadImage { container, .. } if container == "c1"));
    assert_eq!(
        decide(&p, &v, &GateConfig::default(), t0()).decision,
        Decision::ReleaseUnwarmed {
            patch: ungate_patch(&p),
            reason: r#"container "c1": invalid image reference "Erp/App:1": repository must be lowercase; released unwarmed"#
                .to_string(),
            timed_out: false,
        }
    );
}

#[test]
fn a_pod_without_images_is_released_unwarmed() {
    let v = view(vec![snap("n1", "apps", &[APP])]);
    let p = pod_with(&[], json!({"containers": [{"name": "c0"}]}));
    assert_eq!(
        decide(&p, &v, &GateConfig::default(), t0()).decision,
        Decision::ReleaseUnwarmed {
            patch: ungate_patch(&p),
            reason: "pod has no images to warm; released".to_string(),
            timed_out: false,
        }
    );
}

// ---- from_pod ----

fn pod_json() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app-0",
            "namespace": "erp",
            "uid": "u-1",
            "creationTimestamp": "2025-03-04T08:00:00Z",
            "labels": {GATE_LABEL: "true"},
            "annotations": {TIMEOUT_ANNOTATION: "90s"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "o0"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9", "uid": "o1",
                    "controller": true},
            ],
        },
        "spec": {
            "containers": [{"name": "c0", "image": APP}],
            "schedulingGates": [{"name": "example.com/quota"}, {"name": GATE}],
        },
    })
}

fn parse(v: serde_json::Value) -> Result<Option<GatedPod>, GateError> {
    GatedPod::from_pod(&serde_json::from_value::<Pod>(v).unwrap())
}

#[test]
fn from_pod_reads_a_gated_pod() {
    let p = parse(pod_json()).unwrap().unwrap();
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
        ("erp", "app-0", "u-1")
    );
    assert_eq!(p.created, t0());
    assert_eq!(p.owner, Some(("ReplicaSet".into(), "app-7d9".into())));
    assert_eq!(p.annotations.get(TIMEOUT_ANNOTATION).unwrap(), "90s");
    assert_eq!(p.spec.scheduling_gates.as_ref().unwrap().len(), 2);
}

#[test]
fn from_pod_skips_released_and_deleted_pods() {
    let mut released = pod_json();
    released["spec"]["schedulingGates"] = json!([{"name": "example.com/quota"}]);
    assert_eq!(parse(released), Ok(None));
    let mut no_gates = pod_json();
    no_gates["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulingGates");
    assert_eq!(parse(no_gates), Ok(None));
    let mut deleting = pod_json();
    deleting["metadata"]["deletionTimestamp"] = json!("2025-03-04T08:01:00Z");
    assert_eq!(parse(deleting), Ok(None));
}

#[test]
fn from_pod_errors_name_the_missing_field() {
    for (section, key, field) in [
        ("metadata", "name", "metadata.name"),
        ("metadata", "namespace", "metadata.namespace"),
        ("metadata", "uid", "metadata.uid"),
        (
            "metadata",
            "creationTimestamp",
            "metadata.creationTimestamp",
        ),
    ] {
        let mut v = pod_json();
        v[section].as_object_mut().unwrap().remove(key);
        let err = parse(v).unwrap_err();
        assert_eq!(err, GateError::MissingField(field));
        assert_eq!(err.to_string(), format!("pod has no {field}"));
    }
    let mut empty_name = pod_json();
    empty_name["metadata"]["name"] = json!("");
    assert_eq!(
        parse(empty_name),
        Err(GateError::MissingField("metadata.name"))
    );
    let mut no_spec = pod_json();
    no_spec.as_object_mut().unwrap().remove("spec");
    assert_eq!(parse(no_spec), Err(GateError::MissingField("spec")));
}

// ---- urgent intents ----

#[test]
fn urgent_intents_group_by_owner_and_images() {
    let a = pod_with(&[APP], json!({}));
    let mut b = a.clone();
    b.name = "app-1".into();
    let mut c = pod_with(&[APP, MIGRATE], json!({}));
    c.name = "app-2".into();
    let mut lone = pod_with(&[APP], json!({}));
    lone.name = "debug".into();
    lone.owner = None;
    let mut stranded = pod_with(&[MIGRATE], json!({}));
    stranded.owner = Some(("Job".into(), "nightly".into()));
    let one = strings(&[APP]);
    let both = strings(&[APP, MIGRATE]);
    let waiting = vec![
        (&a, one.clone(), strings(&["n3", "n1"])),
        (&b, one.clone(), strings(&["n2", "n1"])),
        (&c, both.clone(), strings(&["n1"])),
        (&lone, one.clone(), strings(&["n4"])),
        (&stranded, strings(&[MIGRATE]), vec![]),
    ];
    let cfg = GateConfig::default();
    let intents = urgent_intents(&waiting, &cfg, t0());
    let deadline_unix = t0().timestamp() + 900;
    let intent = |id: String, images: &Vec<String>, nodes: &[&str]| Intent {
        id,
        images: images.clone(),
        reason: INTENT_REASON.into(),
        priority: 1000,
        deadline_unix,
        node_selector: Default::default(),
        nodes: strings(nodes),
        credentials: Vec::new(),
    };
    let mut expected = vec![
        intent(
            format!("Gate/erp/ReplicaSet/app-7d9@{}", images_hash(&one)),
            &one,
            &["n1", "n2", "n3"],
        ),
        intent(
            format!("Gate/erp/ReplicaSet/app-7d9@{}", images_hash(&both)),
            &both,
            &["n1"],
        ),
        intent(
            format!("Gate/erp/Pod/debug@{}", images_hash(&one)),
            &one,
            &["n4"],
        ),
    ];
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(intents, expected);
    assert!(intents.iter().all(|i| !i.id.starts_with("Gate/erp/Job/")));
}

#[test]
fn urgent_intents_use_the_configured_priority_and_ttl() {
    let p = pod(json!({}));
    let cfg = GateConfig {
        urgent_priority: 7,
        intent_ttl: Duration::from_secs(60),
        ..GateConfig::default()
    };
    let intents = urgent_intents(&[(&p, strings(&[APP]), strings(&["n1"]))], &cfg, at(10));
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].priority, 7);
    assert_eq!(intents[0].deadline_unix, t0().timestamp() + 70);
    assert!(urgent_intents(&[], &cfg, t0()).is_empty());
}

#[test]
fn durations_read_like_go() {
    assert_eq!(go_duration(Duration::from_secs(600)), "10m0s");
    assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(go_duration(Duration::from_secs(45)), "45s");
    assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m0s");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(go_duration(Duration::ZERO), "0s");
}
