//! A minimal Kubernetes API server on kube's tower-test mock: answers list
//! requests from a fixed set of objects, holds watches open, and records
//! every request. For tests of the coordinator's watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::client::Body;

pub type Handle = tower_test::mock::Handle<http::Request<Body>, http::Response<Body>>;

/// A `<Kind>List` body.
pub fn list(kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "100"},
        "items": items,
    })
}

/// A client wired to a mock server task serving `lists` (path → body; an
/// empty list for any other path). Returns the requests seen.
pub fn client(
    lists: BTreeMap<String, serde_json::Value>,
) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
    let (svc, handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(handle, lists, seen.clone()));
    (kube::Client::new(svc, "default"), seen)
}

/// Answers lists and holds watches open until the client goes away.
pub async fn serve(
    mut handle: Handle,
    lists: BTreeMap<String, serde_json::Value>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        if let Ok(mut s) = seen.lock() {
            s.push(format!("{path}?{query}"));
        }
        if query.contains("watch=true") {
            watches.push(send);
            continue;
        }
        let kind = path.rsplit('/').next().unwrap_or_default();
        let body = lists
            .get(&path)
            .cloned()
            .unwrap_or_else(|| list(kind, vec![]));
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
        if let Ok(r) = resp {
            send.send_response(r);
        }
    }
}
