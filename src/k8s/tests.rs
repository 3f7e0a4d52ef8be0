//! The API-backed source against kube's tower-test mock API server, in the
//! style of kube-rs controller-rs fixtures: each scenario asserts the exact
//! request and answers it.

use http::{Request, Response};
use kube::client::Body;

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (ApiNodeLabels, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (ApiNodeLabels::new(client), handle)
}

async fn answer(mut handle: Handle, path: &str, status: u16, body: &str) {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().path(), path);
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.as_bytes().to_vec()))
            .expect("response"),
    );
}

#[tokio::test]
async fn reads_the_nodes_labels() {
    let (api, handle) = mock();
    let server = tokio::spawn(answer(
        handle,
        "/api/v1/nodes/aks-integrations-1",
        200,
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"aks-integrations-1",
            "labels":{"kubernetes.azure.com/agentpool":"integrations","kubernetes.io/os":"linux"}}}"#,
    ));
    let labels = api.labels("aks-integrations-1").await.unwrap();
    server.await.unwrap();
    assert_eq!(
        labels
            .get("kubernetes.azure.com/agentpool")
            .map(String::as_str),
        Some("integrations")
    );
    assert_eq!(labels.len(), 2);
}

#[tokio::test]
async fn missing_node_is_a_clear_error() {
    let (api, handle) = mock();
    let server = tokio::spawn(answer(
        handle,
        "/api/v1/nodes/gone",
        404,
        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"gone\" not found","reason":"NotFound","code":404}"#,
    ));
    let err = api.labels("gone").await.unwrap_err();
    server.await.unwrap();
    assert_eq!(err.to_string(), "node gone: no such node");
}

#[tokio::test]
async fn malformed_api_object_is_an_error_not_a_crash() {
    let (api, handle) = mock();
    let server = tokio::spawn(answer(
        handle,
        "/api/v1/nodes/n1",
        200,
        r#"{"metadata": 7}"#,
    ));
    let err = api.labels("n1").await.unwrap_err();
    server.await.unwrap();
    assert!(err.to_string().starts_with("node n1:"), "{err}");
}

#[test]
fn parses_label_lists() {
    let l = parse_labels(
        "kubernetes.azure.com/agentpool=integrations, topology.kubernetes.io/zone=westeurope-1",
    )
    .unwrap();
    assert_eq!(l.len(), 2);
    assert!(parse_labels("nolabel").is_err());
    assert!(parse_labels("=x").is_err());
    assert_eq!(parse_labels("").unwrap().len(), 0);
}

/// As the agent's ServiceAccount against the in-memory server enforcing
/// daemonset/'s RBAC: reading its own Node is allowed.
#[tokio::test]
async fn the_agents_rbac_allows_reading_its_node() {
    let api = crate::testkit::apiserver::MockApi::new();
    api.put(
        "api/v1/nodes",
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "aks-integrations-1",
                         "labels": {"kubernetes.azure.com/agentpool": "integrations"}}}),
    );
    let labels = ApiNodeLabels::new(api.agent_client())
        .labels("aks-integrations-1")
        .await
        .unwrap();
    assert_eq!(labels.len(), 1);
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}
