//! The validation the real API server applies where prewarm's writes meet
//! it: pod updates (KEP-3838: a gated pod's scheduling directives may only
//! be narrowed; after the gate is gone nothing but the image and a few
//! fields may change), Leases and Events. Messages follow the real ones.

use serde_json::{json, Map, Value};

use super::store::{status, Reply, Target};

/// A 422 `Invalid` for `name` with the causes joined as the server does.
pub(crate) fn invalid(t: &Target, name: &str, causes: &str) -> Reply {
    let kind = kind_of(t);
    status(
        422,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {causes}"),
    )
}

fn kind_of(t: &Target) -> &'static str {
    match t.plural() {
        "pods" => "Pod",
        "leases" => "Lease",
        "events" => "Event",
        "jobs" => "Job",
        "deployments" => "Deployment",
        "deploygroups" => "DeployGroup",
        "scaledobjects" => "ScaledObject",
        "configmaps" => "ConfigMap",
        _ => "Object",
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn create(t: &Target, obj: &Value) -> Result<(), Reply> {
    let causes = match t.plural() {
        "leases" => lease(obj),
        "events" => event(obj),
        "pods" => gates_only_deleted(&Value::Null, obj, false),
        _ => Vec::new(),
    };
    finish(t, name_of(obj), causes)
}

pub(crate) fn update(t: &Target, name: &str, old: &Value, new: &Value) -> Result<(), Reply> {
    let causes = match (t.plural(), t.subresource.as_deref()) {
        ("leases", None) => lease(new),
        ("pods", None) => pod_update(old, new),
        _ => Vec::new(),
    };
    finish(t, name, causes)
}

fn finish(t: &Target, name: &str, causes: Vec<String>) -> Result<(), Reply> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(t, name, &causes.join(", ")))
    }
}

fn lease(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let spec = &obj["spec"];
    if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            out.push(format!(
                "spec.leaseDurationSeconds: Invalid value: {d}: must be greater than 0"
            ));
        }
    }
    if let Some(n) = spec.get("leaseTransitions").and_then(Value::as_i64) {
        if n < 0 {
            out.push(format!(
                "spec.leaseTransitions: Invalid value: {n}: must be greater than or equal to 0"
            ));
        }
    }
    out
}

fn event(obj: &Value) -> Vec<String> {
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    let involved = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str);
    match (ns, involved) {
        (Some(ns), Some(io)) if !io.is_empty() && io != ns => vec![format!(
            "involvedObject.namespace: Invalid value: \"{io}\": does not match event.namespace"
        )],
        _ => Vec::new(),
    }
}

fn gate_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(|g| g["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// validateOnlyDeletedSchedulingGates: a gate may be removed, never added
/// (on create every gate is new and allowed).
fn gates_only_deleted(old: &Value, new: &Value, updating: bool) -> Vec<String> {
    if !updating {
        return Vec::new();
    }
    let before = gate_names(old);
    gate_names(new)
        .iter()
        .enumerate()
        .filter(|(_, g)| !before.contains(g))
        .map(|(i, g)| {
            format!(
                "spec.schedulingGates[{i}].name: Forbidden: only deletion is allowed, but found new scheduling gate '{g}'"
            )
        })
        .collect()
}

const POD_UPDATE_FORBIDDEN: &str = "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// ValidatePodUpdate, for the fields prewarm touches: the gate list, and
/// while the stored pod is gated, nodeSelector additions and required node
/// affinity narrowing; any other spec change but images is forbidden.
fn pod_update(old: &Value, new: &Value) -> Vec<String> {
    let mut out = gates_only_deleted(old, new, true);
    let gated = !gate_names(old).is_empty();
    let o = &old["spec"];
    let n = &new["spec"];
    if gated {
        out.extend(node_selector_additions_only(o, n));
        out.extend(node_affinity_narrowed_only(o, n));
    }
    // What may change is taken from the old spec; what is left must match.
    let munged = munge(o, n, gated);
    if &munged != o {
        out.push(POD_UPDATE_FORBIDDEN.to_string());
    }
    out
}

fn munge(old: &Value, new: &Value, gated: bool) -> Value {
    let mut m = new.clone();
    for list in ["containers", "initContainers"] {
        if let (Some(mc), Some(oc)) = (
            m.get_mut(list).and_then(Value::as_array_mut),
            old.get(list).and_then(Value::as_array),
        ) {
            for (c, o) in mc.iter_mut().zip(oc) {
                c["image"] = o["image"].clone();
            }
        }
    }
    let mut keep = vec!["schedulingGates", "activeDeadlineSeconds", "tolerations"];
    if gated {
        keep.push("nodeSelector");
    }
    let Some(obj) = m.as_object_mut() else {
        return m;
    };
    for k in keep {
        copy_field(obj, old, k);
    }
    if gated {
        // Node affinity (required and preferred) is checked on its own.
        let old_na = old.pointer("/affinity/nodeAffinity").cloned();
        let aff = obj.entry("affinity").or_insert_with(|| json!({}));
        if let Some(a) = aff.as_object_mut() {
            match old_na {
                Some(na) => {
                    a.insert("nodeAffinity".into(), na);
                }
                None => {
                    a.remove("nodeAffinity");
                }
            }
        }
        if aff.as_object().is_some_and(Map::is_empty) && old.get("affinity").is_none() {
            obj.remove("affinity");
        }
    }
    m
}

fn copy_field(obj: &mut Map<String, Value>, old: &Value, k: &str) {
    match old.get(k) {
        Some(v) => {
            obj.insert(k.to_string(), v.clone());
        }
        None => {
            obj.remove(k);
        }
    }
}

fn node_selector_additions_only(o: &Value, n: &Value) -> Vec<String> {
    let Some(old) = o.get("nodeSelector").and_then(Value::as_object) else {
        return Vec::new();
    };
    let new = n.get("nodeSelector").and_then(Value::as_object);
    let kept = old
        .iter()
        .all(|(k, v)| new.and_then(|m| m.get(k)) == Some(v));
    if kept {
        Vec::new()
    } else {
        let shown = n.get("nodeSelector").cloned().unwrap_or(Value::Null);
        vec![format!(
            "spec.nodeSelector: Invalid value: {shown}: only additions to spec.nodeSelector are allowed (no mutations or deletions)"
        )]
    }
}

fn required_terms(spec: &Value) -> Option<&Vec<Value>> {
    spec.pointer(
        "/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    )
    .and_then(Value::as_array)
}

/// validateNodeAffinityMutation: no required terms before means anything
/// goes; otherwise the same number of terms, each only extended at its end.
fn node_affinity_narrowed_only(o: &Value, n: &Value) -> Vec<String> {
    let path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
    let Some(old) = required_terms(o).filter(|t| !t.is_empty()) else {
        return Vec::new();
    };
    let empty = Vec::new();
    let new = required_terms(n).unwrap_or(&empty);
    if old.len() != new.len() {
        return vec![format!(
            "{path}: Invalid value: {}: no additions/deletions to non-empty NodeSelectorTerms list are allowed",
            Value::Array(new.clone())
        )];
    }
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (ot, nt))| !only_additions(ot, nt))
        .map(|(i, (_, nt))| {
            format!("{path}[{i}]: Invalid value: {nt}: only additions are allowed (no mutations or deletions)")
        })
        .collect()
}

fn only_additions(old: &Value, new: &Value) -> bool {
    ["matchExpressions", "matchFields"].iter().all(|k| {
        let empty = Vec::new();
        let o = old.get(*k).and_then(Value::as_array).unwrap_or(&empty);
        let n = new.get(*k).and_then(Value::as_array).unwrap_or(&empty);
        o.len() <= n.len() && n[..o.len()] == o[..]
    })
}
