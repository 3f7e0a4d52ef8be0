//! The API objects deploy groups read: their resources, a DeployGroup
//! parsed with the failing field named, a member's ScaledObject and the
//! template a rollback restores. Pure: no API calls.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use crate::plan::deploy::ScaledObs;
use crate::wire::deploygroup::{self as dg, template_hash, DeployGroup, PAUSED_ANNOTATION};

pub fn deploygroup_resource() -> ApiResource {
    ApiResource {
        group: dg::GROUP.into(),
        version: dg::VERSION.into(),
        api_version: dg::API_VERSION.into(),
        kind: dg::KIND.into(),
        plural: dg::PLURAL.into(),
    }
}

pub fn scaledobject_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

/// Parses a watched object; the error names the field that is wrong.
pub fn parse_group(obj: &DynamicObject) -> Result<DeployGroup, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let de = serde_json::from_value::<Value>(value).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize::<_, DeployGroup>(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// The ScaledObject for `deployment`: the one named `explicit`, else the one
/// whose `scaleTargetRef` names the Deployment.
pub fn find_scaled_object(
    objects: &[DynamicObject],
    deployment: &str,
    explicit: Option<&str>,
) -> Option<ScaledObs> {
    let found = objects.iter().find(|o| match explicit {
        Some(name) => o.metadata.name.as_deref() == Some(name),
        None => {
            let target = &o.data["spec"]["scaleTargetRef"];
            let kind = target["kind"].as_str().unwrap_or("Deployment");
            kind == "Deployment" && target["name"].as_str() == Some(deployment)
        }
    })?;
    let paused = found
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true");
    Some(ScaledObs {
        name: found.metadata.name.clone().unwrap_or_default(),
        paused,
    })
}

/// The template a rollback restores: that of the Deployment's ReplicaSet
/// whose template (without `pod-template-hash`) hashes to `deployed`.
pub fn previous_template(
    replica_sets: &[ReplicaSet],
    deployment_uid: &str,
    deployed: &str,
) -> Option<PodTemplateSpec> {
    replica_sets
        .iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == deployment_uid && o.controller == Some(true))
        })
        .filter_map(|rs| rs.spec.as_ref()?.template.clone())
        .map(|mut t| {
            if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove("pod-template-hash");
            }
            t
        })
        .find(|t| template_hash(t) == deployed)
}
