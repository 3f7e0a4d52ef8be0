//! An in-memory Kubernetes API server on kube's tower-test mock, for tests
//! and benches of the coordinator's controllers: it lists, gets, watches,
//! creates, patches (JSON Patch, merge and strategic merge treated as merge)
//! and deletes JSON objects, and records every request so tests can assert
//! the exact patches sent. It is a model of the API's wire behaviour, not of
//! its validation or of any controller.
//!
//! Watches are answered as they would be by a server whose watch ends after
//! each batch of events: the request is held until an event newer than its
//! `resourceVersion` exists, then answered with those events, and the
//! client's watcher re-watches from the last one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::Notify;

type Respond = tower_test::mock::SendResponse<http::Response<Body>>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
    pub at: Instant,
}

/// Where a request points: `resource` is the API prefix plus plural
/// (`api/v1/pods`, `apis/apps/v1/deployments`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix_len = match *segs.first()? {
        "api" => 2,
        "apis" => 3,
        _ => return None,
    };
    if segs.len() <= prefix_len {
        return None;
    }
    let prefix = segs[..prefix_len].join("/");
    let rest = &segs[prefix_len..];
    let (namespace, rest) = if rest[0] == "namespaces" && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Target {
        resource: format!("{prefix}/{}", rest[0]),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

struct Parked {
    target: Target,
    query: BTreeMap<String, String>,
    since: u64,
    respond: Respond,
}

#[derive(Default)]
struct Inner {
    /// resource → (namespace or "", name) → object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// (resourceVersion, resource, event type, object).
    events: Vec<(u64, String, &'static str, Value)>,
    rv: u64,
    uid: u64,
    requests: Vec<Recorded>,
    parked: Vec<Parked>,
}

/// The server's state; clone it freely, every clone is the same server.
#[derive(Clone, Default)]
pub struct MockApi {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, k| v.get(k))
}

/// Equality-based label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`).
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').filter(|s| !s.is_empty()).all(|req| {
        if let Some((k, v)) = req.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = req.split_once('=') {
            get(k.trim()) == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = req.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(req.trim()).is_some()
        }
    })
}

/// Field selectors `path=value` / `path!=value`; a missing field is "".
fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|req| {
        let value = |p: &str| {
            field(obj, p.trim())
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .unwrap_or_default()
        };
        if let Some((k, v)) = req.split_once("!=") {
            value(k) != v
        } else if let Some((k, v)) = req.split_once('=') {
            value(k) == v.trim_start_matches('=')
        } else {
            true
        }
    })
}

fn selected(obj: &Value, t: &Target, q: &BTreeMap<String, String>) -> bool {
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    (t.namespace.is_none() || t.namespace.as_deref() == ns)
        && q.get("labelSelector").is_none_or(|s| labels_match(obj, s))
        && q.get("fieldSelector").is_none_or(|s| fields_match(obj, s))
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code, "message": message}),
    )
}

fn respond(send: Respond, code: u16, body: Vec<u8>) {
    let resp = http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body));
    if let Ok(r) = resp {
        send.send_response(r);
    }
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn store(&mut self, resource: &str, kind: &'static str, mut obj: Value) -> Value {
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let map = self.objects.entry(resource.to_string()).or_default();
        if kind == "DELETED" {
            map.remove(&key);
        } else {
            map.insert(key, obj.clone());
        }
        self.events
            .push((rv, resource.to_string(), kind, obj.clone()));
        obj
    }

    /// Answers parked watches that now have events.
    fn wake(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            let lines = self.watch_lines(&p.target, &p.query, p.since);
            if lines.is_empty() {
                self.parked.push(p);
            } else {
                respond(p.respond, 200, lines);
            }
        }
    }

    fn watch_lines(&self, t: &Target, q: &BTreeMap<String, String>, since: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (rv, resource, kind, obj) in &self.events {
            if *rv > since && *resource == t.resource && selected(obj, t, q) {
                let line = json!({"type": kind, "object": obj});
                out.extend(serde_json::to_vec(&line).unwrap_or_default());
                out.push(b'\n');
            }
        }
        out
    }

    fn list(&self, t: &Target, q: &BTreeMap<String, String>) -> Value {
        let items: Vec<Value> = self
            .objects
            .get(&t.resource)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|o| selected(o, t, q))
            .cloned()
            .collect();
        json!({"apiVersion": "v1", "kind": "List",
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    fn get(&self, t: &Target, name: &str) -> Option<&Value> {
        let ns = t.namespace.clone().unwrap_or_default();
        self.objects
            .get(&t.resource)
            .and_then(|m| m.get(&(ns, name.to_string())))
    }
}

fn key_of(obj: &Value) -> (String, String) {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

impl MockApi {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces `obj` in `resource` (e.g. `api/v1/pods`), as a
    /// controller or user would, and tells watchers.
    pub fn put(&self, resource: &str, mut obj: Value) -> Value {
        let mut inner = self.lock();
        let exists = inner
            .objects
            .get(resource)
            .is_some_and(|m| m.contains_key(&key_of(&obj)));
        if obj.pointer("/metadata/uid").is_none() {
            inner.uid += 1;
            obj["metadata"]["uid"] = json!(format!("uid-{}", inner.uid));
        }
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        let out = inner.store(resource, kind, obj);
        inner.wake();
        drop(inner);
        self.changed.notify_waiters();
        out
    }

    /// Changes a stored object in place (e.g. a Deployment's status, as its
    /// controller would); `None` when it does not exist.
    pub fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut obj = self.object(resource, namespace, name)?;
        f(&mut obj);
        Some(self.put(resource, obj))
    }

    pub fn remove(&self, resource: &str, namespace: &str, name: &str) {
        let mut inner = self.lock();
        if let Some(obj) = inner
            .objects
            .get(resource)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
        {
            inner.store(resource, "DELETED", obj);
            inner.wake();
        }
    }

    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(resource)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests other than GET (creates, patches, deletes).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// Waits until `pred` holds for the recorded requests, or `timeout`;
    /// returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            // Not under the lock: `pred` may look at the server's objects.
            if pred(&self.requests()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.requests());
            }
        }
    }

    /// A client served by this server (one task per client).
    pub fn client(&self) -> kube::Client {
        let (svc, mut handle) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let api = api.clone();
                tokio::spawn(async move { api.handle(req, send).await });
            }
        });
        kube::Client::new(svc, "default")
    }

    async fn handle(&self, req: http::Request<Body>, send: Respond) {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let rec = Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
            at: Instant::now(),
        };
        let q = query_map(&query);
        let mut inner = self.lock();
        inner.requests.push(rec);
        let Some(t) = parse_path(&path) else {
            let (c, b) = status(404, "NotFound", format!("no route {path}"));
            drop(inner);
            self.changed.notify_waiters();
            return respond(send, c, serde_json::to_vec(&b).unwrap_or_default());
        };
        let result = match (method.as_str(), &t.name) {
            ("GET", None) if q.get("watch").is_some_and(|w| w == "true") => {
                let since = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let lines = inner.watch_lines(&t, &q, since);
                if lines.is_empty() {
                    inner.parked.push(Parked {
                        target: t,
                        query: q,
                        since,
                        respond: send,
                    });
                    drop(inner);
                    self.changed.notify_waiters();
                    return;
                }
                drop(inner);
                self.changed.notify_waiters();
                return respond(send, 200, lines);
            }
            ("GET", None) => (200, inner.list(&t, &q)),
            ("GET", Some(name)) => match inner.get(&t, name) {
                Some(o) => (200, o.clone()),
                None => status(404, "NotFound", format!("{} {name} not found", t.resource)),
            },
            ("POST", None) => create(&mut inner, &t, body),
            ("PATCH", Some(name)) => patch(&mut inner, &t, name, &content_type, body),
            ("PUT", Some(name)) => match (inner.get(&t, name).is_some(), body) {
                (true, Some(b)) => (200, inner.store(&t.resource, "MODIFIED", b)),
                _ => status(404, "NotFound", format!("{} {name} not found", t.resource)),
            },
            ("DELETE", Some(name)) => match inner.get(&t, name).cloned() {
                Some(o) => (200, inner.store(&t.resource, "DELETED", o)),
                None => status(404, "NotFound", format!("{} {name} not found", t.resource)),
            },
            _ => status(405, "MethodNotAllowed", format!("{method} {path}")),
        };
        inner.wake();
        drop(inner);
        self.changed.notify_waiters();
        respond(
            send,
            result.0,
            serde_json::to_vec(&result.1).unwrap_or_default(),
        );
    }
}

fn create(inner: &mut Inner, t: &Target, body: Option<Value>) -> (u16, Value) {
    let Some(mut obj) = body.filter(Value::is_object) else {
        return status(400, "BadRequest", "body is not an object".into());
    };
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if obj.pointer("/metadata/name").is_none() {
        let prefix = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("obj-")
            .to_string();
        obj["metadata"]["name"] = json!(format!("{prefix}{}", inner.rv + 1));
    }
    let name = key_of(&obj).1;
    if inner.get(t, &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.resource),
        );
    }
    inner.uid += 1;
    obj["metadata"]["uid"] = json!(format!("uid-{}", inner.uid));
    obj["metadata"]["generation"] = json!(1);
    (201, inner.store(&t.resource, "ADDED", obj))
}

fn patch(
    inner: &mut Inner,
    t: &Target,
    name: &str,
    content_type: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let Some(current) = inner.get(t, name).cloned() else {
        return status(404, "NotFound", format!("{} {name} not found", t.resource));
    };
    let Some(body) = body else {
        return status(400, "BadRequest", "patch body is not JSON".into());
    };
    let mut next = current.clone();
    if content_type.starts_with("application/json-patch+json") {
        let ops: json_patch::Patch = match serde_json::from_value(body) {
            Ok(p) => p,
            Err(e) => return status(400, "BadRequest", format!("bad JSON patch: {e}")),
        };
        if let Err(e) = json_patch::patch(&mut next, &ops) {
            return status(422, "Invalid", format!("JSON patch failed: {e}"));
        }
    } else {
        json_patch::merge(&mut next, &body);
    }
    if t.subresource.is_none() && next.get("spec") != current.get("spec") {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        next["metadata"]["generation"] = json!(generation + 1);
    }
    (200, inner.store(&t.resource, "MODIFIED", next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    fn pod(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "ns", "labels": labels},
               "spec": {"containers": [{"name": "c", "image": "r/a:1"}]}})
    }

    #[test]
    fn paths_parse() {
        let t = parse_path("/apis/apps/v1/namespaces/ns/deployments/d/status").unwrap();
        assert_eq!(t.resource, "apis/apps/v1/deployments");
        assert_eq!(t.namespace.as_deref(), Some("ns"));
        assert_eq!(t.name.as_deref(), Some("d"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_path("/api/v1/namespaces/ns").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.name.as_deref()),
            ("api/v1/namespaces", Some("ns"))
        );
        assert_eq!(parse_path("/api/v1/pods").unwrap().namespace, None);
        assert!(parse_path("/healthz").is_none());
    }

    #[tokio::test]
    async fn lists_by_selector_patches_and_records() {
        let api = MockApi::new();
        api.put("api/v1/pods", pod("a", json!({"gate": "true"})));
        api.put("api/v1/pods", pod("b", json!({})));
        let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
        let listed = pods
            .list(&kube::api::ListParams::default().labels("gate=true"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        let ops = json!([{"op": "test", "path": "/metadata/name", "value": "a"},
                         {"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]);
        let p: json_patch::Patch = serde_json::from_value(ops.clone()).unwrap();
        let patched = pods
            .patch("a", &PatchParams::default(), &Patch::Json::<()>(p))
            .await
            .unwrap();
        assert_eq!(patched.metadata.annotations.unwrap()["x"], "y");
        let w = api.writes();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].body.as_ref(), Some(&ops));
        assert!(w[0].content_type.starts_with("application/json-patch+json"));
        // A failing test op is refused and changes nothing.
        let bad: json_patch::Patch =
            serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "z"}]))
                .unwrap();
        assert!(pods
            .patch("a", &PatchParams::default(), &Patch::Json::<()>(bad))
            .await
            .is_err());
        // Creating an existing object is a conflict.
        let dup: Pod = serde_json::from_value(pod("a", json!({}))).unwrap();
        let err = pods.create(&PostParams::default(), &dup).await.unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[tokio::test]
    async fn watch_delivers_later_changes() {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let api = MockApi::new();
        api.put("api/v1/pods", pod("a", json!({"gate": "true"})));
        let pods: Api<Pod> = Api::all(api.client());
        let cfg = watcher::Config::default().labels("gate=true");
        let mut stream = watcher::watcher(pods, cfg).boxed();
        let mut seen = Vec::new();
        let feeder = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            feeder.put("api/v1/pods", pod("b", json!({})));
            feeder.put("api/v1/pods", pod("c", json!({"gate": "true"})));
        });
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                seen.push(p.metadata.name.unwrap_or_default());
            }
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(seen, vec!["a", "c"]);
    }
}
