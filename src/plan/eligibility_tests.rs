//! Eligibility tests: one scheduler rule at a time, then AKS-shaped pools.

use super::*;

const POOL: &str = "kubernetes.azure.com/agentpool";
const MODE: &str = "kubernetes.azure.com/mode";

/// A pod spec from YAML; `containers` defaults to one container.
fn pod(yaml: &str) -> PodSpec {
    let mut spec: PodSpec = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    if spec.containers.is_empty() {
        spec.containers = serde_yaml_ng::from_str("[{name: app, image: app:1}]").unwrap();
    }
    spec
}

fn node(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
    NodeFacts {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: Vec::new(),
        unschedulable: false,
        ready: true,
    }
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint {
        key: key.to_string(),
        value: value.map(str::to_string),
        effect: effect.to_string(),
        ..Taint::default()
    }
}

fn tainted(mut n: NodeFacts, taints: &[Taint]) -> NodeFacts {
    n.taints = taints.to_vec();
    n
}

/// A pod whose only constraint is the required node affinity `terms` (YAML).
fn affinity(terms: &str) -> PodSpec {
    pod(&format!(
        "{{containers: [], affinity: {{nodeAffinity: \
         {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: {terms}}}}}}}}}"
    ))
}

fn is_affinity_miss(r: Result<(), Ineligible>) -> bool {
    matches!(r, Err(Ineligible::NodeAffinity { .. }))
}

#[test]
fn a_plain_pod_fits_a_plain_ready_node() {
    assert_eq!(eligible(&pod("{}"), &node("n1", &[])), Ok(()));
}

#[test]
fn not_ready_nodes_are_never_eligible() {
    let mut n = node("n1", &[]);
    n.ready = false;
    assert_eq!(eligible(&pod("{}"), &n), Err(Ineligible::NotReady));
    assert_eq!(
        eligible(&pod("{nodeName: n1}"), &n),
        Err(Ineligible::NotReady)
    );
}

#[test]
fn node_name_pins_to_one_node() {
    let spec = pod("{nodeName: n2}");
    assert_eq!(
        eligible(&spec, &node("n1", &[])),
        Err(Ineligible::OtherNode("n2".into()))
    );
    assert_eq!(eligible(&spec, &node("n2", &[])), Ok(()));
    // An empty nodeName is unset.
    assert_eq!(eligible(&pod("{nodeName: ''}"), &node("n1", &[])), Ok(()));
}

#[test]
fn a_pinned_pod_skips_the_scheduler_but_not_kubelet_admission() {
    let spec = pod("{nodeName: n1}");
    let mut cordoned = tainted(
        node("n1", &[]),
        &[taint(TAINT_UNSCHEDULABLE, None, NO_SCHEDULE)],
    );
    cordoned.unschedulable = true;
    assert_eq!(eligible(&spec, &cordoned), Ok(()));
    // NoExecute is still enforced by the kubelet.
    let evicting = tainted(node("n1", &[]), &[taint("drain", None, NO_EXECUTE)]);
    assert!(matches!(
        eligible(&spec, &evicting),
        Err(Ineligible::Taint { .. })
    ));
    // So are nodeSelector and node affinity.
    let selected = pod("{nodeName: n1, nodeSelector: {disk: ssd}}");
    assert!(matches!(
        eligible(&selected, &node("n1", &[])),
        Err(Ineligible::NodeSelector { .. })
    ));
}

#[test]
fn every_node_selector_label_must_match() {
    let spec = pod("{nodeSelector: {disk: ssd, zone: westeurope-1}}");
    let both = node(
        "n1",
        &[("disk", "ssd"), ("zone", "westeurope-1"), ("x", "y")],
    );
    assert_eq!(eligible(&spec, &both), Ok(()));
    let wrong = node("n2", &[("disk", "hdd"), ("zone", "westeurope-1")]);
    assert_eq!(
        eligible(&spec, &wrong),
        Err(Ineligible::NodeSelector {
            key: "disk".into(),
            value: "ssd".into()
        })
    );
    let missing = node("n3", &[("disk", "ssd")]);
    assert!(eligible(&spec, &missing).is_err());
    // An empty selector selects every node.
    assert_eq!(eligible(&pod("{nodeSelector: {}}"), &missing), Ok(()));
}

#[test]
fn in_and_not_in() {
    let spec = affinity("[{matchExpressions: [{key: pool, operator: In, values: [a, b]}]}]");
    assert!(eligible(&spec, &node("n", &[("pool", "b")])).is_ok());
    assert!(is_affinity_miss(eligible(
        &spec,
        &node("n", &[("pool", "c")])
    )));
    assert!(is_affinity_miss(eligible(&spec, &node("n", &[]))));

    let spec = affinity("[{matchExpressions: [{key: pool, operator: NotIn, values: [a]}]}]");
    assert!(is_affinity_miss(eligible(
        &spec,
        &node("n", &[("pool", "a")])
    )));
    assert!(eligible(&spec, &node("n", &[("pool", "b")])).is_ok());
    // NotIn matches a node without the label.
    assert!(eligible(&spec, &node("n", &[])).is_ok());
}

#[test]
fn exists_and_does_not_exist() {
    let spec = affinity("[{matchExpressions: [{key: gpu, operator: Exists}]}]");
    assert!(eligible(&spec, &node("n", &[("gpu", "")])).is_ok());
    assert!(is_affinity_miss(eligible(&spec, &node("n", &[]))));

    let spec = affinity("[{matchExpressions: [{key: gpu, operator: DoesNotExist}]}]");
    assert!(eligible(&spec, &node("n", &[])).is_ok());
    assert!(is_affinity_miss(eligible(
        &spec,
        &node("n", &[("gpu", "a100")])
    )));
}

#[test]
fn gt_and_lt_compare_integers() {
    let gt = affinity("[{matchExpressions: [{key: cores, operator: Gt, values: ['8']}]}]");
    let lt = affinity("[{matchExpressions: [{key: cores, operator: Lt, values: ['8']}]}]");
    let n = |v: &str| node("n", &[("cores", v)]);
    assert!(eligible(&gt, &n("16")).is_ok());
    assert!(is_affinity_miss(eligible(&gt, &n("8"))));
    // Integer, not string, order: "16" < "8" as strings.
    assert!(is_affinity_miss(eligible(&lt, &n("16"))));
    assert!(eligible(&lt, &n("-3")).is_ok());
    assert!(eligible(&lt, &n("+4")).is_ok());
    // An unparsable or missing label matches neither.
    for bad in ["eight", "8.0", "", "99999999999999999999"] {
        assert!(is_affinity_miss(eligible(&gt, &n(bad))), "{bad}");
        assert!(is_affinity_miss(eligible(&lt, &n(bad))), "{bad}");
    }
    assert!(is_affinity_miss(eligible(&gt, &node("n", &[]))));
}

#[test]
fn invalid_requirements_make_their_term_match_nothing() {
    for term in [
        "{key: cores, operator: Gt, values: [eight]}",
        "{key: cores, operator: Gt, values: ['1', '2']}",
        "{key: cores, operator: Lt}",
        "{key: pool, operator: In}",
        "{key: pool, operator: NotIn, values: []}",
        "{key: pool, operator: Exists, values: [a]}",
        "{key: pool, operator: Matches, values: [a]}",
        "{key: '', operator: Exists}",
    ] {
        let spec = affinity(&format!("[{{matchExpressions: [{term}]}}]"));
        let r = eligible(&spec, &node("n", &[("pool", "a"), ("cores", "4")]));
        match r {
            Err(Ineligible::NodeAffinity { invalid }) => assert_eq!(invalid.len(), 1, "{term}"),
            other => panic!("{term}: {other:?}"),
        }
    }
}

#[test]
fn an_invalid_requirement_spoils_its_whole_term_but_not_other_terms() {
    // The term fails to parse even though its first requirement matches.
    let spec = affinity(
        "[{matchExpressions: [{key: pool, operator: In, values: [a]}, \
          {key: cores, operator: Gt, values: [x]}]}]",
    );
    let n = node("n", &[("pool", "a"), ("cores", "4")]);
    let err = eligible(&spec, &n).unwrap_err();
    assert!(err.to_string().contains("invalid"), "{err}");
    // Another valid term still matches.
    let spec = affinity(
        "[{matchExpressions: [{key: cores, operator: Gt, values: [x]}]}, \
          {matchExpressions: [{key: pool, operator: In, values: [a]}]}]",
    );
    assert_eq!(eligible(&spec, &n), Ok(()));
}

#[test]
fn terms_are_ored_and_expressions_anded() {
    let spec = affinity(
        "[{matchExpressions: [{key: pool, operator: In, values: [a]}, \
                              {key: zone, operator: In, values: ['1']}]}, \
          {matchExpressions: [{key: pool, operator: In, values: [b]}]}]",
    );
    assert!(eligible(&spec, &node("n", &[("pool", "a"), ("zone", "1")])).is_ok());
    assert!(is_affinity_miss(eligible(
        &spec,
        &node("n", &[("pool", "a"), ("zone", "2")])
    )));
    assert!(eligible(&spec, &node("n", &[("pool", "b"), ("zone", "2")])).is_ok());
}

#[test]
fn empty_term_lists_and_empty_terms_match_nothing() {
    let n = node("n", &[("pool", "a")]);
    assert_eq!(
        eligible(&affinity("[]"), &n),
        Err(Ineligible::NodeAffinity { invalid: vec![] })
    );
    assert!(is_affinity_miss(eligible(&affinity("[{}]"), &n)));
    assert!(is_affinity_miss(eligible(
        &affinity("[{matchExpressions: [], matchFields: []}]"),
        &n
    )));
    // An empty term next to a matching one does not block it.
    let spec = affinity("[{}, {matchExpressions: [{key: pool, operator: Exists}]}]");
    assert!(eligible(&spec, &n).is_ok());
    // No required affinity at all restricts nothing.
    assert!(eligible(&pod("{affinity: {nodeAffinity: {}}}"), &n).is_ok());
}

#[test]
fn match_fields_select_the_node_name() {
    let spec = affinity("[{matchFields: [{key: metadata.name, operator: In, values: [n1]}]}]");
    assert!(eligible(&spec, &node("n1", &[])).is_ok());
    assert!(is_affinity_miss(eligible(&spec, &node("n2", &[]))));

    let spec = affinity("[{matchFields: [{key: metadata.name, operator: NotIn, values: [n1]}]}]");
    assert!(is_affinity_miss(eligible(&spec, &node("n1", &[]))));
    assert!(eligible(&spec, &node("n2", &[])).is_ok());

    // Fields and expressions in one term are ANDed (DaemonSet pods).
    let spec = affinity(
        "[{matchFields: [{key: metadata.name, operator: In, values: [n1]}], \
           matchExpressions: [{key: pool, operator: In, values: [a]}]}]",
    );
    assert!(eligible(&spec, &node("n1", &[("pool", "a")])).is_ok());
    assert!(is_affinity_miss(eligible(
        &spec,
        &node("n1", &[("pool", "b")])
    )));
}

#[test]
fn match_fields_accept_only_one_value_in_or_not_in() {
    for term in [
        "{key: metadata.name, operator: In, values: [n1, n2]}",
        "{key: metadata.name, operator: Exists}",
        "{key: metadata.name, operator: In}",
    ] {
        let spec = affinity(&format!("[{{matchFields: [{term}]}}]"));
        match eligible(&spec, &node("n1", &[])) {
            Err(Ineligible::NodeAffinity { invalid }) => assert_eq!(invalid.len(), 1, "{term}"),
            other => panic!("{term}: {other:?}"),
        }
    }
    // Another field reads as empty.
    let spec = affinity("[{matchFields: [{key: spec.podCIDR, operator: In, values: [x]}]}]");
    assert!(is_affinity_miss(eligible(&spec, &node("n1", &[]))));
}

#[test]
fn preferred_affinity_never_restricts() {
    let spec = pod(
        "{affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: \
          [{weight: 100, preference: {matchExpressions: [{key: pool, operator: In, values: [a]}]}}]}}}",
    );
    assert!(eligible(&spec, &node("n", &[("pool", "b")])).is_ok());
}

#[test]
fn no_schedule_and_no_execute_taints_must_be_tolerated() {
    let spec = pod("{}");
    let n = tainted(
        node("n", &[]),
        &[taint("dedicated", Some("db"), NO_SCHEDULE)],
    );
    assert_eq!(
        eligible(&spec, &n),
        Err(Ineligible::Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: NO_SCHEDULE.into()
        })
    );
    let n = tainted(node("n", &[]), &[taint("dedicated", None, NO_EXECUTE)]);
    assert!(matches!(eligible(&spec, &n), Err(Ineligible::Taint { .. })));
    // PreferNoSchedule only scores.
    let n = tainted(node("n", &[]), &[taint("soft", None, PREFER_NO_SCHEDULE)]);
    assert_eq!(eligible(&spec, &n), Ok(()));
}

#[test]
fn toleration_matching_rules() {
    let db = taint("dedicated", Some("db"), NO_SCHEDULE);
    let ok = |tol: &str, t: &Taint| {
        let spec = pod(&format!("{{tolerations: [{tol}]}}"));
        eligible(&spec, &tainted(node("n", &[]), std::slice::from_ref(t))).is_ok()
    };
    // Equal (explicit or default) compares the value.
    assert!(ok(
        "{key: dedicated, operator: Equal, value: db, effect: NoSchedule}",
        &db
    ));
    assert!(ok("{key: dedicated, value: db}", &db));
    assert!(!ok("{key: dedicated, value: web}", &db));
    assert!(!ok("{key: dedicated}", &db));
    // A taint without a value is tolerated by an Equal without one.
    assert!(ok("{key: flag}", &taint("flag", None, NO_SCHEDULE)));
    // Exists ignores the value.
    assert!(ok("{key: dedicated, operator: Exists}", &db));
    // The effect must match unless empty.
    assert!(!ok(
        "{key: dedicated, operator: Exists, effect: NoExecute}",
        &db
    ));
    assert!(ok("{key: dedicated, operator: Exists, effect: ''}", &db));
    // Another key does not tolerate.
    assert!(!ok("{key: other, operator: Exists}", &db));
    // An empty key with Exists tolerates everything.
    assert!(ok("{operator: Exists}", &db));
    assert!(ok("{operator: Exists}", &taint("x", None, NO_EXECUTE)));
    // An unknown operator tolerates nothing.
    assert!(!ok("{key: dedicated, operator: Gt, value: db}", &db));
}

#[test]
fn every_blocking_taint_needs_its_own_toleration() {
    let n = tainted(
        node("n", &[]),
        &[
            taint("a", None, NO_SCHEDULE),
            taint("b", None, NO_EXECUTE),
            taint("c", None, PREFER_NO_SCHEDULE),
        ],
    );
    let one = pod("{tolerations: [{key: a, operator: Exists}]}");
    assert_eq!(
        eligible(&one, &n),
        Err(Ineligible::Taint {
            key: "b".into(),
            value: String::new(),
            effect: NO_EXECUTE.into()
        })
    );
    let both = pod("{tolerations: [{key: a, operator: Exists}, {key: b, operator: Exists}]}");
    assert_eq!(eligible(&both, &n), Ok(()));
}

#[test]
fn cordoned_nodes_need_the_unschedulable_toleration() {
    let mut n = node("n", &[]);
    n.unschedulable = true;
    assert_eq!(eligible(&pod("{}"), &n), Err(Ineligible::Unschedulable));
    let tol = pod("{tolerations: [{key: node.kubernetes.io/unschedulable, operator: Exists, effect: NoSchedule}]}");
    assert_eq!(eligible(&tol, &n), Ok(()));
    assert_eq!(
        eligible(&pod("{tolerations: [{operator: Exists}]}"), &n),
        Ok(())
    );
    let wrong = pod("{tolerations: [{key: node.kubernetes.io/unschedulable, operator: Exists, effect: NoExecute}]}");
    assert_eq!(eligible(&wrong, &n), Err(Ineligible::Unschedulable));
    // The taint alone (as the node lifecycle controller sets it) also blocks.
    let tainted_only = tainted(
        node("n", &[]),
        &[taint(TAINT_UNSCHEDULABLE, None, NO_SCHEDULE)],
    );
    assert!(matches!(
        eligible(&pod("{}"), &tainted_only),
        Err(Ineligible::Taint { .. })
    ));
    assert_eq!(eligible(&tol, &tainted_only), Ok(()));
}

/// An AKS cluster: a system pool with the CriticalAddonsOnly taint, a user
/// pool for integrations and a spot pool.
fn aks_nodes() -> Vec<NodeFacts> {
    let system = |name: &str| {
        tainted(
            node(
                name,
                &[
                    (POOL, "system"),
                    (MODE, "system"),
                    ("kubernetes.io/os", "linux"),
                    ("node.kubernetes.io/instance-type", "Standard_D4ds_v5"),
                ],
            ),
            &[taint("CriticalAddonsOnly", Some("true"), NO_SCHEDULE)],
        )
    };
    let user = |name: &str| {
        node(
            name,
            &[
                (POOL, "integrations"),
                (MODE, "user"),
                ("kubernetes.io/os", "linux"),
            ],
        )
    };
    let spot = tainted(
        node(
            "aks-spot-12345678-vmss000000",
            &[
                (POOL, "spot"),
                (MODE, "user"),
                ("kubernetes.azure.com/scalesetpriority", "spot"),
            ],
        ),
        &[taint(
            "kubernetes.azure.com/scalesetpriority",
            Some("spot"),
            NO_SCHEDULE,
        )],
    );
    vec![
        system("aks-system-12345678-vmss000000"),
        system("aks-system-12345678-vmss000001"),
        user("aks-integrations-87654321-vmss000000"),
        user("aks-integrations-87654321-vmss000001"),
        spot,
    ]
}

fn names(nodes: Vec<&NodeFacts>) -> Vec<&str> {
    nodes.into_iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn aks_an_ordinary_pod_avoids_system_and_spot_pools() {
    let nodes = aks_nodes();
    assert_eq!(
        names(eligible_nodes(&pod("{}"), &nodes)),
        [
            "aks-integrations-87654321-vmss000000",
            "aks-integrations-87654321-vmss000001"
        ]
    );
}

#[test]
fn aks_a_pool_selector_picks_its_pool() {
    let nodes = aks_nodes();
    let spec = pod("{nodeSelector: {kubernetes.azure.com/agentpool: integrations}}");
    assert_eq!(eligible_nodes(&spec, &nodes).len(), 2);
    // Selecting the system pool without the toleration lands nowhere.
    let spec = pod("{nodeSelector: {kubernetes.azure.com/agentpool: system}}");
    assert!(eligible_nodes(&spec, &nodes).is_empty());
    match eligible(&spec, &nodes[0]) {
        Err(Ineligible::Taint { key, value, effect }) => {
            assert_eq!(
                (key.as_str(), value.as_str()),
                ("CriticalAddonsOnly", "true")
            );
            assert_eq!(effect, NO_SCHEDULE);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn aks_a_critical_addon_lands_on_system_nodes_only_with_mode_affinity() {
    let nodes = aks_nodes();
    let spec = pod(
        "{tolerations: [{key: CriticalAddonsOnly, operator: Exists}], \
          affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: \
          {nodeSelectorTerms: [{matchExpressions: \
          [{key: kubernetes.azure.com/mode, operator: In, values: [system]}]}]}}}}",
    );
    assert_eq!(
        names(eligible_nodes(&spec, &nodes)),
        [
            "aks-system-12345678-vmss000000",
            "aks-system-12345678-vmss000001"
        ]
    );
    // Tolerating without the affinity spreads to system and user pools.
    let spec = pod("{tolerations: [{key: CriticalAddonsOnly, operator: Equal, value: 'true', effect: NoSchedule}]}");
    assert_eq!(eligible_nodes(&spec, &nodes).len(), 4);
}

#[test]
fn aks_a_spot_tolerating_pod_with_a_pool_affinity() {
    let nodes = aks_nodes();
    let spec = pod(
        "{tolerations: [{key: kubernetes.azure.com/scalesetpriority, operator: Equal, \
          value: spot, effect: NoSchedule}], \
          affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: \
          {nodeSelectorTerms: [{matchExpressions: \
          [{key: kubernetes.azure.com/agentpool, operator: NotIn, values: [system]}]}]}}}}",
    );
    assert_eq!(
        names(eligible_nodes(&spec, &nodes)),
        [
            "aks-integrations-87654321-vmss000000",
            "aks-integrations-87654321-vmss000001",
            "aks-spot-12345678-vmss000000"
        ]
    );
}

#[test]
fn node_facts_from_a_node_object() {
    let node: Node = serde_yaml_ng::from_str(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: aks-system-12345678-vmss000000
  labels: {kubernetes.azure.com/agentpool: system, kubernetes.azure.com/mode: system}
spec:
  unschedulable: true
  taints:
    - {key: CriticalAddonsOnly, value: "true", effect: NoSchedule}
    - {key: node.kubernetes.io/unschedulable, effect: NoSchedule, timeAdded: "2025-03-01T10:00:00Z"}
status:
  conditions:
    - {type: MemoryPressure, status: "False"}
    - {type: Ready, status: "True"}
"#,
    )
    .unwrap();
    let facts = NodeFacts::from_node(&node).unwrap();
    assert_eq!(facts.name, "aks-system-12345678-vmss000000");
    assert_eq!(facts.labels[POOL], "system");
    assert_eq!(facts.taints.len(), 2);
    assert!(facts.unschedulable && facts.ready);

    let bare: Node =
        serde_yaml_ng::from_str("{apiVersion: v1, kind: Node, metadata: {name: n}}").unwrap();
    let facts = NodeFacts::from_node(&bare).unwrap();
    assert!(!facts.ready && !facts.unschedulable && facts.taints.is_empty());
    let unknown: Node = serde_yaml_ng::from_str(
        "{apiVersion: v1, kind: Node, metadata: {name: n}, status: {conditions: [{type: Ready, status: Unknown}]}}",
    )
    .unwrap();
    assert!(!NodeFacts::from_node(&unknown).unwrap().ready);
    let nameless: Node =
        serde_yaml_ng::from_str("{apiVersion: v1, kind: Node, metadata: {}}").unwrap();
    assert_eq!(NodeFacts::from_node(&nameless), None);
}

#[test]
fn reasons_read_well() {
    assert_eq!(
        Ineligible::Taint {
            key: "CriticalAddonsOnly".into(),
            value: "true".into(),
            effect: NO_SCHEDULE.into()
        }
        .to_string(),
        "node has untolerated taint CriticalAddonsOnly=true:NoSchedule"
    );
    assert_eq!(
        Ineligible::NodeAffinity { invalid: vec![] }.to_string(),
        "node matches no required node affinity term"
    );
    let spec = affinity("[{matchExpressions: [{key: cores, operator: Gt, values: [x]}]}]");
    assert_eq!(
        eligible(&spec, &node("n", &[])).unwrap_err().to_string(),
        "node matches no required node affinity term (invalid: \
         nodeSelectorTerms[0]: matchExpressions[0]: cores: \"x\" is not an integer)"
    );
}
