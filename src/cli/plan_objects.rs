//! `prewarm plan --objects FILE`: reads a multi-document YAML file of
//! Kubernetes objects, validates the DeployGroups in it, and turns its
//! KEDA ScaledObjects (with their target Deployments and StatefulSets from
//! the same file) into the windows they imply for this node, as the
//! coordinator would send them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodSpec;
use serde::Deserialize;

use prewarm::plan::eligibility::{eligible, NodeFacts};
use prewarm::plan::keda::{self, KedaDefaults, ScaledObject, TargetKind, TargetRef};
use prewarm::wire::deploygroup::{self, DeployGroup};
use prewarm::wire::v1::WindowSpec;

/// What the file holds, and the windows for this node.
#[derive(Debug, Default)]
pub struct Objects {
    /// One line per object: what it is and what came of it.
    pub summary: Vec<String>,
    /// Windows whose target's pod template can land on this node.
    pub windows: Vec<WindowSpec>,
    /// Objects (YAML documents) in the file.
    pub count: usize,
}

/// `kind namespace/name` of document `i`, for messages.
fn describe(doc: &serde_json::Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("(no kind)");
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("");
    let name = doc["metadata"]["name"].as_str().unwrap_or("(no name)");
    match ns {
        "" => format!("{kind} {name}"),
        ns => format!("{kind} {ns}/{name}"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    file: &Path,
    i: usize,
    doc: &serde_json::Value,
) -> anyhow::Result<T> {
    serde_json::from_value(doc.clone()).map_err(|e| {
        anyhow!(
            "{}: document {}: {}: {e}",
            file.display(),
            i + 1,
            describe(doc)
        )
    })
}

/// Reads `file` and plans its ScaledObjects for a node with `labels`.
pub fn load(
    file: &Path,
    labels: &BTreeMap<String, String>,
    defaults: &KedaDefaults,
) -> anyhow::Result<Objects> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v = serde_json::Value::deserialize(d)
            .map_err(|e| anyhow!("{}: document {}: {e}", file.display(), i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        bail!("{}: no Kubernetes objects in the file", file.display());
    }
    let mut out = Objects {
        count: docs.len(),
        ..Objects::default()
    };
    let mut templates: BTreeMap<TargetRef, PodSpec> = BTreeMap::new();
    let mut scaled: Vec<ScaledObject> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let what = describe(doc);
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let target = |kind| TargetRef {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        };
        match doc["kind"].as_str().unwrap_or_default() {
            "ScaledObject" => scaled.push(parse(file, i, doc)?),
            "Deployment" => {
                let d: Deployment = parse(file, i, doc)?;
                let spec = d.spec.and_then(|s| s.template.spec).unwrap_or_default();
                templates.insert(target(TargetKind::Deployment), spec);
            }
            "StatefulSet" => {
                let s: StatefulSet = parse(file, i, doc)?;
                let spec = s.spec.and_then(|s| s.template.spec).unwrap_or_default();
                templates.insert(target(TargetKind::StatefulSet), spec);
            }
            deploygroup::KIND => {
                let g: DeployGroup = parse(file, i, doc)?;
                deploygroup::validate(&g.spec)
                    .map_err(|e| anyhow!("{}: document {}: {what}: {e}", file.display(), i + 1))?;
                let members: Vec<&str> = g
                    .spec
                    .members
                    .iter()
                    .map(|m| m.deployment.as_str())
                    .collect();
                out.summary
                    .push(format!("{what}: valid, members {}", members.join(" → ")));
            }
            _ => out
                .summary
                .push(format!("{what}: not read by prewarm plan")),
        }
    }
    let node = NodeFacts {
        name: String::new(),
        labels: labels.clone(),
        ready: true,
        ..NodeFacts::default()
    };
    for so in &scaled {
        let what = describe(&serde_json::json!({"kind": "ScaledObject", "metadata": {
            "namespace": so.metadata.namespace, "name": so.metadata.name}}));
        let target = match keda::target_of(so) {
            Ok(t) => t,
            Err(skip) => {
                out.summary
                    .push(format!("{what}: skipped: {}", skip.reason));
                continue;
            }
        };
        let Some(template) = templates.get(&target) else {
            out.summary.push(format!(
                "{what}: its target {} {}/{} is not in the file; no window",
                target.kind.as_str(),
                target.namespace,
                target.name
            ));
            continue;
        };
        let (windows, skipped) = keda::windows_of(so, template, defaults);
        for s in &skipped {
            let at = s
                .trigger
                .map(|t| format!(" triggers[{t}]"))
                .unwrap_or_default();
            out.summary
                .push(format!("{what}{at}: skipped: {}", s.reason));
        }
        let fits = eligible(template, &node);
        for w in windows {
            match &fits {
                Ok(()) => {
                    out.summary
                        .push(format!("{what}: window {} ({})", w.name, w.source));
                    out.windows.push(w);
                }
                Err(why) => out.summary.push(format!(
                    "{what}: window {} does not apply to this node ({why})",
                    w.name
                )),
            }
        }
        if skipped.is_empty() && !so.spec.triggers.iter().any(|t| t.kind == "cron") {
            out.summary
                .push(format!("{what}: no cron trigger; no window"));
        }
    }
    Ok(out)
}
