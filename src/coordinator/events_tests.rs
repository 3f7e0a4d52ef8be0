//! ImagesWarm Events: the exact object, and the exact requests against
//! kube's tower-test mock API server.

use chrono::TimeZone;
use http::{Method, Request, Response};
use kube::client::Body;

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn orders_sync() -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: "integrations".into(),
        name: "orders-sync".into(),
    }
}

fn expected(name: &str, time: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "integrations"},
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "orders-sync",
            "namespace": "integrations",
            "uid": "5b0f6c1e-2d7a-4c39-9a43-7f0e8d1b2a61",
        },
        "reason": "ImagesWarm",
        "message": "3 images warm on 2 nodes",
        "type": "Normal",
        "source": {"component": "prewarm.dev/coordinator"},
        "reportingComponent": "prewarm.dev/coordinator",
        "reportingInstance": "prewarm-coordinator-7c9d-x2k9p",
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    })
}

#[test]
fn the_event_object_is_exact() {
    let now = Utc.with_ymd_and_hms(2025, 3, 4, 8, 0, 0).unwrap() + chrono::Duration::nanoseconds(5);
    let e = warm_event_object(
        &orders_sync(),
        Some("5b0f6c1e-2d7a-4c39-9a43-7f0e8d1b2a61"),
        "prewarm-coordinator-7c9d-x2k9p",
        "3 images warm on 2 nodes",
        now,
    );
    let name = format!("orders-sync.{:x}", now.timestamp_nanos_opt().unwrap());
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        expected(&name, "2025-03-04T08:00:00Z")
    );
}

#[test]
fn long_messages_are_cut_on_a_character_boundary() {
    let long = "é".repeat(MAX_MESSAGE);
    let e = warm_event_object(&orders_sync(), None, "i", &long, Utc::now());
    let m = e.message.unwrap();
    assert!(m.len() <= MAX_MESSAGE && m.len() >= MAX_MESSAGE - 1);
    assert!(m.chars().all(|c| c == 'é'));
    assert_eq!(e.involved_object.uid, None);
}

async fn next(
    handle: &mut Handle,
) -> (
    Method,
    String,
    serde_json::Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) = handle.next_request().await.expect("a request");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, path, body, send)
}

fn respond(
    send: tower_test::mock::SendResponse<Response<Body>>,
    status: u16,
    body: &serde_json::Value,
) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

#[tokio::test]
async fn posts_the_event_on_the_workload_with_its_uid() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert_eq!(
            path,
            "/apis/apps/v1/namespaces/integrations/deployments/orders-sync"
        );
        let fixture = include_str!("../../tests/fixtures/rollout/deployment-mid-rollout.yaml");
        let first = serde_yaml_ng::Deserializer::from_str(fixture)
            .next()
            .unwrap();
        let deployment = <serde_json::Value as serde::Deserialize>::deserialize(first).unwrap();
        assert_eq!(deployment["kind"], "Deployment");
        respond(send, 200, &deployment);

        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/api/v1/namespaces/integrations/events");
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        let time = body["firstTimestamp"].as_str().unwrap().to_string();
        assert_eq!(body, expected(&name, &time));
        // client-go's naming: <name>.<hex nanoseconds>, of the same instant.
        let nanos = u64::from_str_radix(name.strip_prefix("orders-sync.").unwrap(), 16).unwrap();
        let at = DateTime::parse_from_rfc3339(&time).unwrap();
        assert_eq!(nanos as i64 / 1_000_000_000, at.timestamp());
        let mut created = body.clone();
        created["metadata"]["resourceVersion"] = "9001".into();
        respond(send, 201, &created);
    });
    let event = warm_event_as(
        &client,
        "prewarm-coordinator-7c9d-x2k9p",
        &orders_sync(),
        "3 images warm on 2 nodes",
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert_eq!(event.metadata.resource_version.as_deref(), Some("9001"));
}

#[tokio::test]
async fn a_missing_workload_is_an_error_and_nothing_is_posted() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert_eq!(path, "/apis/apps/v1/namespaces/streaming/statefulsets/gone");
        respond(
            send,
            404,
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "statefulsets.apps \"gone\" not found"}),
        );
        // The client is dropped without another request.
        assert!(handle.next_request().await.is_none());
    });
    let gone = WorkloadRef {
        kind: WorkloadKind::StatefulSet,
        namespace: "streaming".into(),
        name: "gone".into(),
    };
    let err = warm_event_as(&client, "i", &gone, "m").await.unwrap_err();
    drop(client);
    server.await.unwrap();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}

/// Against the shipped RBAC: the leader reads each kind of workload for its
/// uid and records the Event in the workload's namespace, refused nothing.
#[tokio::test]
async fn warm_events_are_allowed_by_the_shipped_rbac_for_every_workload_kind() {
    use crate::testkit::apiserver::MockApi;
    let api = MockApi::new();
    let kinds = [
        (
            WorkloadKind::Deployment,
            "apis/apps/v1/deployments",
            "Deployment",
        ),
        (
            WorkloadKind::StatefulSet,
            "apis/apps/v1/statefulsets",
            "StatefulSet",
        ),
        (
            WorkloadKind::DaemonSet,
            "apis/apps/v1/daemonsets",
            "DaemonSet",
        ),
    ];
    for (kind, resource, k) in kinds {
        api.put(
            resource,
            serde_json::json!({"apiVersion": "apps/v1", "kind": k,
                "metadata": {"name": "w", "namespace": "integrations", "uid": format!("uid-{k}")},
                "spec": {}}),
        );
        let w = WorkloadRef {
            kind,
            namespace: "integrations".into(),
            name: "w".into(),
        };
        let got = warm_event_as(&api.coordinator_client(), "i", &w, "warm").await;
        let event = got.unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(
            event.involved_object.uid.as_deref(),
            Some(format!("uid-{k}").as_str())
        );
    }
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}
