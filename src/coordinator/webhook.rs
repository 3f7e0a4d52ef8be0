//! Optional mutating admission webhook: adds the `prewarm.dev/warm`
//! scheduling gate to pods labelled `prewarm.dev/gate=true` when they are
//! created, so workloads opt in with the label alone. The API server calls
//! it only for those pods (the webhook configuration's objectSelector) and
//! ignores it when it fails (`failurePolicy: Ignore`), so the cluster never
//! stalls on it; such a pod is then simply not gated.
//!
//! [`review`] is pure (AdmissionReview in, AdmissionReview out); [`routes`]
//! is its endpoint, served on the coordinator's HTTPS listener.

use crate::plan::gate::{GATE, GATE_LABEL};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

/// Path the webhook configuration points at.
pub const PATH: &str = "/mutate-pods";

/// The JSON Patch that gates `pod`, or `None` when it needs none: not
/// labelled, already gated, or already bound to a node (the API server
/// refuses gates on those).
pub fn gate_patch(pod: &Value) -> Option<Value> {
    let labelled = pod["metadata"]["labels"][GATE_LABEL].as_str() == Some("true");
    let bound = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if !labelled || bound {
        return None;
    }
    match pod["spec"]["schedulingGates"].as_array() {
        Some(gates) if gates.iter().any(|g| g["name"] == GATE) => None,
        Some(_) => Some(json!([
            {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": GATE}}
        ])),
        None => Some(json!([
            {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": GATE}]}
        ])),
    }
}

/// Answers one AdmissionReview. Anything that is not a pod CREATE is
/// allowed unchanged; a review without `request.uid` is an error.
pub fn review(body: &Value) -> Result<Value, String> {
    let req = &body["request"];
    let uid = req["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or("not an AdmissionReview: request.uid is missing")?;
    let mut response = json!({"uid": uid, "allowed": true});
    let is_pod_create = req["operation"] == "CREATE" && req["kind"]["kind"] == "Pod";
    if let Some(patch) = is_pod_create.then(|| gate_patch(&req["object"])).flatten() {
        let bytes = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

async fn mutate(Json(body): Json<Value>) -> Result<Json<Value>, (StatusCode, String)> {
    review(&body)
        .map(Json)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))
}

/// The webhook's route, served on the HTTPS listener ([`super::https`]).
pub fn routes() -> Router {
    Router::new().route(PATH, post(mutate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(operation: &str, pod: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                           "operation": operation, "object": pod}})
    }

    fn decoded(resp: &Value) -> Option<Value> {
        let p = resp["response"]["patch"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn labelled_pods_get_the_gate_once() {
        let pod = json!({"metadata": {"labels": {"prewarm.dev/gate": "true"}},
                         "spec": {"containers": [{"name": "c", "image": "r/a:1"}]}});
        let resp = review(&admission("CREATE", pod)).unwrap();
        assert_eq!(resp["response"]["uid"], "u-1");
        assert_eq!(resp["response"]["allowed"], true);
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        assert_eq!(
            decoded(&resp).unwrap(),
            json!([{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "prewarm.dev/warm"}]}])
        );
        // Other gates stay; ours is appended.
        let other = json!({"metadata": {"labels": {"prewarm.dev/gate": "true"}},
                           "spec": {"schedulingGates": [{"name": "quota"}]}});
        assert_eq!(
            decoded(&review(&admission("CREATE", other)).unwrap()).unwrap(),
            json!([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "prewarm.dev/warm"}}])
        );
    }

    #[test]
    fn others_pass_unchanged() {
        let gated = json!({"metadata": {"labels": {"prewarm.dev/gate": "true"}},
                           "spec": {"schedulingGates": [{"name": "prewarm.dev/warm"}]}});
        let unlabelled = json!({"metadata": {"labels": {"app": "x"}}, "spec": {}});
        let opted_out = json!({"metadata": {"labels": {"prewarm.dev/gate": "false"}}, "spec": {}});
        let bound = json!({"metadata": {"labels": {"prewarm.dev/gate": "true"}},
                           "spec": {"nodeName": "n1"}});
        for pod in [gated, unlabelled, opted_out, bound.clone()] {
            let resp = review(&admission("CREATE", pod)).unwrap();
            assert_eq!(resp["response"]["allowed"], true);
            assert!(resp["response"].get("patch").is_none(), "{resp}");
        }
        let resp = review(&admission("UPDATE", bound)).unwrap();
        assert!(resp["response"].get("patch").is_none());
    }

    #[test]
    fn a_body_that_is_not_a_review_is_refused() {
        let err = review(&json!({"kind": "Pod"})).unwrap_err();
        assert_eq!(err, "not an AdmissionReview: request.uid is missing");
    }
}
