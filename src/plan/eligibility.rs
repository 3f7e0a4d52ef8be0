//! Which nodes a pod template can land on.
//!
//! The static part of kube-scheduler's Filter phase, evaluated against a
//! node's labels, taints and flags, so the coordinator warms images only
//! where a rollout's pods can be placed:
//!
//! - `spec.nodeName` pins the pod to one node. Such a pod bypasses the
//!   scheduler, so NodeUnschedulable and NoSchedule taints do not apply; the
//!   kubelet's admission still checks node selector, node affinity and
//!   untolerated NoExecute taints.
//! - NodeUnschedulable: a cordoned node (`spec.unschedulable`) only takes pods
//!   that tolerate `node.kubernetes.io/unschedulable:NoSchedule`.
//! - NodeAffinity: every `nodeSelector` label must match, and one
//!   `requiredDuringSchedulingIgnoredDuringExecution` term must match.
//!   Preferred terms only score nodes, so they never exclude one.
//! - TaintToleration: every NoSchedule and NoExecute taint must be tolerated;
//!   PreferNoSchedule only scores.
//! - The node must be Ready (stricter than the scheduler, which relies on the
//!   `not-ready` taint): a node that is not ready cannot pull anything.
//!
//! Resource fit, host ports, volumes, topology spread and inter-pod affinity
//! depend on what runs where at scheduling time and are not evaluated, so the
//! result is the set of nodes a pod *can* land on, a superset of where it
//! will.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Taint the node lifecycle controller puts on cordoned nodes.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Taint effects.
pub const NO_SCHEDULE: &str = "NoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";

/// The field `matchFields` may select on (the only one API validation admits).
const FIELD_NODE_NAME: &str = "metadata.name";

/// What eligibility needs to know about a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
}

impl NodeFacts {
    /// Facts of a `Node` object; `None` when it has no name.
    pub fn from_node(node: &Node) -> Option<NodeFacts> {
        let name = node.metadata.name.clone().filter(|n| !n.is_empty())?;
        let spec = node.spec.as_ref();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        Some(NodeFacts {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready,
        })
    }
}

/// Why a pod cannot land on a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("node is not ready")]
    NotReady,
    #[error("pod is pinned to node {0:?} by spec.nodeName")]
    OtherNode(String),
    #[error("node is cordoned and the pod does not tolerate {TAINT_UNSCHEDULABLE}:NoSchedule")]
    Unschedulable,
    #[error("node does not match nodeSelector {key}={value}")]
    NodeSelector { key: String, value: String },
    /// No required node affinity term matches. `invalid` lists terms the
    /// scheduler could not parse (they match nothing).
    #[error("node matches no required node affinity term{}", invalid_suffix(.invalid))]
    NodeAffinity { invalid: Vec<String> },
    #[error("node has untolerated taint {key}={value}:{effect}")]
    Taint {
        key: String,
        value: String,
        effect: String,
    },
}

fn invalid_suffix(invalid: &[String]) -> String {
    if invalid.is_empty() {
        String::new()
    } else {
        format!(" (invalid: {})", invalid.join("; "))
    }
}

/// Whether a pod with `spec` can land on `node`, or the first reason it
/// cannot (checked in the order of the module documentation).
pub fn eligible(spec: &PodSpec, node: &NodeFacts) -> Result<(), Ineligible> {
    if !node.ready {
        return Err(Ineligible::NotReady);
    }
    let pinned = spec.node_name.as_deref().filter(|n| !n.is_empty());
    if let Some(wanted) = pinned {
        if wanted != node.name {
            return Err(Ineligible::OtherNode(wanted.to_string()));
        }
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    // NodeUnschedulable plugin: cordoned nodes need this exact toleration.
    if pinned.is_none() && node.unschedulable {
        let cordon = Taint {
            key: TAINT_UNSCHEDULABLE.to_string(),
            effect: NO_SCHEDULE.to_string(),
            ..Taint::default()
        };
        if !tolerated(tolerations, &cordon) {
            return Err(Ineligible::Unschedulable);
        }
    }
    // nodeSelector: every pair must be a node label (labels.SelectorFromSet).
    for (key, value) in spec.node_selector.iter().flatten() {
        if node.labels.get(key) != Some(value) {
            return Err(Ineligible::NodeSelector {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    if let Some(required) = required_affinity(spec) {
        match_node_selector(required, node)?;
    }
    // TaintToleration filter; the kubelet alone only rejects NoExecute.
    let blocking =
        |t: &&Taint| t.effect == NO_EXECUTE || (pinned.is_none() && t.effect == NO_SCHEDULE);
    if let Some(taint) = node
        .taints
        .iter()
        .filter(blocking)
        .find(|t| !tolerated(tolerations, t))
    {
        return Err(Ineligible::Taint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
            effect: taint.effect.clone(),
        });
    }
    Ok(())
}

/// The nodes a pod with `spec` can land on, in input order.
pub fn eligible_nodes<'a>(spec: &PodSpec, nodes: &'a [NodeFacts]) -> Vec<&'a NodeFacts> {
    nodes.iter().filter(|n| eligible(spec, n).is_ok()).collect()
}

/// Whether any toleration tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// `Toleration.ToleratesTaint` of k8s.io/api: an empty effect matches every
/// effect, an empty key matches every key (validation only allows it with
/// Exists), Exists ignores the value, Equal (the default) compares it, and
/// an unknown operator tolerates nothing.
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

fn required_affinity(spec: &PodSpec) -> Option<&NodeSelector> {
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
}

/// Terms are ORed. An empty list, an empty term and a term that does not
/// parse all match nothing (component-helpers `LazyErrorNodeSelector`).
fn match_node_selector(selector: &NodeSelector, node: &NodeFacts) -> Result<(), Ineligible> {
    let mut invalid = Vec::new();
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        match match_term(term, node) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => invalid.push(format!("nodeSelectorTerms[{i}]: {e}")),
        }
    }
    Err(Ineligible::NodeAffinity { invalid })
}

/// A term's matchExpressions (on labels) and matchFields (on the node name)
/// are ANDed. The whole term is parsed first: one invalid requirement makes
/// it an error even where another requirement already fails.
fn match_term(term: &NodeSelectorTerm, node: &NodeFacts) -> Result<bool, String> {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return Ok(false);
    }
    let mut errors = Vec::new();
    let labels: Vec<LabelReq> = parse_all(exprs, "matchExpressions", parse_label, &mut errors);
    let names: Vec<FieldReq> = parse_all(fields, "matchFields", parse_field, &mut errors);
    if !errors.is_empty() {
        return Err(errors.join(", "));
    }
    Ok(labels.iter().all(|r| r.matches(&node.labels)) && names.iter().all(|r| r.matches(node)))
}

fn parse_all<'a, T>(
    reqs: &'a [NodeSelectorRequirement],
    what: &str,
    parse: fn(&'a NodeSelectorRequirement) -> Result<T, String>,
    errors: &mut Vec<String>,
) -> Vec<T> {
    let mut parsed = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        match parse(req) {
            Ok(r) => parsed.push(r),
            Err(e) => errors.push(format!("{what}[{i}]: {e}")),
        }
    }
    parsed
}

/// A parsed matchExpressions requirement (apimachinery `labels.Requirement`).
enum LabelReq<'a> {
    In(&'a str, &'a [String]),
    NotIn(&'a str, &'a [String]),
    Exists(&'a str),
    DoesNotExist(&'a str),
    Gt(&'a str, i64),
    Lt(&'a str, i64),
}

/// `labels.NewRequirement` validation: In/NotIn need values, Exists and
/// DoesNotExist none, Gt/Lt exactly one base-10 integer.
fn parse_label(req: &NodeSelectorRequirement) -> Result<LabelReq<'_>, String> {
    let key = req.key.as_str();
    let values = req.values.as_deref().unwrap_or_default();
    if key.is_empty() {
        return Err("empty key".to_string());
    }
    let int = || match values {
        [v] => v
            .parse::<i64>()
            .map_err(|_| format!("{key}: {v:?} is not an integer")),
        _ => Err(format!("{key}: {} needs exactly one value", req.operator)),
    };
    match req.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => Err(format!("{key}: {} needs values", req.operator)),
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            Err(format!("{key}: {} takes no values", req.operator))
        }
        "In" => Ok(LabelReq::In(key, values)),
        "NotIn" => Ok(LabelReq::NotIn(key, values)),
        "Exists" => Ok(LabelReq::Exists(key)),
        "DoesNotExist" => Ok(LabelReq::DoesNotExist(key)),
        "Gt" => Ok(LabelReq::Gt(key, int()?)),
        "Lt" => Ok(LabelReq::Lt(key, int()?)),
        op => Err(format!("{key}: unsupported operator {op:?}")),
    }
}

impl LabelReq<'_> {
    /// `labels.Requirement.Matches`: NotIn and DoesNotExist match a missing
    /// label; Gt/Lt need a label that parses as an integer.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let int = |key: &str| labels.get(key).and_then(|v| v.parse::<i64>().ok());
        match *self {
            LabelReq::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            LabelReq::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            LabelReq::Exists(key) => labels.contains_key(key),
            LabelReq::DoesNotExist(key) => !labels.contains_key(key),
            LabelReq::Gt(key, bound) => int(key).is_some_and(|v| v > bound),
            LabelReq::Lt(key, bound) => int(key).is_some_and(|v| v < bound),
        }
    }
}

/// A parsed matchFields requirement: In or NotIn with exactly one value.
struct FieldReq<'a> {
    field: &'a str,
    value: &'a str,
    negate: bool,
}

fn parse_field(req: &NodeSelectorRequirement) -> Result<FieldReq<'_>, String> {
    let field = req.key.as_str();
    let negate = match req.operator.as_str() {
        "In" => false,
        "NotIn" => true,
        op => return Err(format!("{field}: unsupported field operator {op:?}")),
    };
    match req.values.as_deref().unwrap_or_default() {
        [value] => Ok(FieldReq {
            field,
            value,
            negate,
        }),
        _ => Err(format!("{field}: {} needs exactly one value", req.operator)),
    }
}

impl FieldReq<'_> {
    /// A field the node does not have reads as "" (fields.Set.Get).
    fn matches(&self, node: &NodeFacts) -> bool {
        let actual = if self.field == FIELD_NODE_NAME {
            node.name.as_str()
        } else {
            ""
        };
        (actual == self.value) != self.negate
    }
}

#[cfg(test)]
#[path = "eligibility_tests.rs"]
mod tests;
