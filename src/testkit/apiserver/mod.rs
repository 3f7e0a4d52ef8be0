//! An in-memory Kubernetes API server on kube's tower-test mock, for tests
//! and benches of the coordinator's controllers and the agent's API calls.
//!
//! It behaves like the real server where prewarm meets it:
//! - **RBAC.** Every request of a client made with [`MockApi::client_as`]
//!   is authorized against the Roles, ClusterRoles and bindings of
//!   `daemonset/` for that identity and refused with the real 403 message
//!   when no rule allows it; the grants used are recorded for the suite's
//!   unused-rule report ([`rbac`]).
//! - **Optimistic concurrency.** A write carrying a stale
//!   `metadata.resourceVersion` is a 409 Conflict; a custom resource cannot
//!   be replaced without one; a no-op write changes nothing.
//! - **Status subresources.** Writes to an object keep its status; writes
//!   to `/status` change only the status; generations count spec changes.
//! - **Validation** ([`validate`]): gated pods may only be narrowed, other
//!   pod updates are `Forbidden`; Leases and Events are checked.
//! - **TokenReview** answers for tokens issued with [`MockApi::issue_token`]
//!   (a review without audiences asks for the server's own, [`API_AUDIENCE`]).
//! - **SubjectAccessReview** answers by evaluating the same RBAC for the
//!   user and groups it names, resource and non-resource (`nonResourceURLs`)
//!   attributes alike.
//!
//! It lists, gets, watches (label and field selectors), creates, replaces,
//! patches (JSON Patch; merge and strategic merge treated as merge) and
//! deletes JSON objects, and records every request so tests can assert the
//! exact patches sent. It models no controller: tests play the controllers
//! through [`MockApi::put`] and [`MockApi::update`], which act as a cluster
//! admin and bypass RBAC and validation.
//!
//! Watches are answered as they would be by a server whose watch ends after
//! each batch of events: the request is held until an event newer than its
//! `resourceVersion` exists, then answered with those events, and the
//! client's watcher re-watches from the last one.

mod hold;
pub mod rbac;
mod store;
mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::Notify;

pub use hold::Hold;
pub use rbac::{Identity, Policy};
use store::{key_of, parse_path, query_map, status, Inner, Parked, Reply, Target};

type Respond = tower_test::mock::SendResponse<http::Response<Body>>;

/// The audience of tokens for the API server itself (`kubectl create
/// token` without `--audience`): what a TokenReview without audiences asks.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// One request as the server saw it, and its answer's status code.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
    /// The identity's user name.
    pub user: String,
    pub code: u16,
    pub at: Instant,
}

/// What a ServiceAccount token issued by [`MockApi::issue_token`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundToken {
    pub namespace: String,
    pub service_account: String,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub audiences: Vec<String>,
}

/// An API server outage, as [`MockApi::set_outage`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outage {
    #[default]
    None,
    /// Every request is answered 503 ServiceUnavailable at once.
    Refuse,
    /// Requests are held unanswered until the outage ends (then served):
    /// a stalled server, which only client timeouts get past.
    Stall,
}

/// The server's state; clone it freely, every clone is the same server.
#[derive(Clone)]
pub struct MockApi {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    policy: Arc<Policy>,
    tokens: Arc<Mutex<BTreeMap<String, BoundToken>>>,
    outage: Arc<tokio::sync::watch::Sender<Outage>>,
    holds: Arc<Mutex<Vec<Arc<hold::HoldState>>>>,
}

impl Default for MockApi {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn respond(send: Respond, code: u16, body: Vec<u8>) {
    let resp = http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body));
    if let Ok(r) = resp {
        send.send_response(r);
    }
}

/// RBAC's verb for a request.
fn verb(method: &str, t: &Target, q: &BTreeMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, t.name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

impl MockApi {
    /// A server enforcing the RBAC shipped in `daemonset/`.
    pub fn new() -> Self {
        Self::with_policy(Policy::shipped())
    }

    /// A server enforcing `policy` (e.g. a test's own, narrower one).
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::default(),
            policy: Arc::new(policy),
            tokens: Arc::default(),
            outage: Arc::new(tokio::sync::watch::channel(Outage::None).0),
            holds: Arc::default(),
        }
    }

    /// Holds the requests for which `matches(method, path)` is true, after
    /// the first `pass` of them, until the [`Hold`] is released (see
    /// [`Hold`]).
    pub fn hold(
        &self,
        pass: usize,
        matches: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Hold {
        let state = hold::HoldState::new(pass, matches);
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state.clone());
        Hold { state }
    }

    /// Starts or ends an outage. Requests already parked as watches keep
    /// waiting; new ones see the outage.
    pub fn set_outage(&self, outage: Outage) {
        self.outage.send_replace(outage);
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

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Requests the server refused with 403.
    pub fn forbidden(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.code == 403)
            .collect()
    }

    /// Makes TokenReview authenticate `token` as described.
    pub fn issue_token(&self, token: &str, bound: BoundToken) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), bound);
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

    /// A client authenticated as `who` (one task per client).
    pub fn client_as(&self, who: Identity) -> kube::Client {
        let (svc, mut handle) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let api = self.clone();
        let who = Arc::new(who);
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let api = api.clone();
                let who = who.clone();
                tokio::spawn(async move { api.handle(req, send, &who).await });
            }
        });
        kube::Client::new(svc, "default")
    }

    /// A client with the coordinator's ServiceAccount.
    pub fn coordinator_client(&self) -> kube::Client {
        self.client_as(Identity::coordinator())
    }

    /// A client with the agent's ServiceAccount.
    pub fn agent_client(&self) -> kube::Client {
        self.client_as(Identity::agent())
    }

    async fn handle(&self, req: http::Request<Body>, send: Respond, who: &Identity) {
        let mut outage = self.outage.subscribe();
        let now = *outage.borrow_and_update();
        if now == Outage::Stall {
            // Held until the outage ends; a dropped client just goes away.
            let _ = outage.wait_for(|o| *o != Outage::Stall).await;
        }
        if *outage.borrow() == Outage::Refuse {
            let (code, body) = status(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
            );
            return respond(send, code, serde_json::to_vec(&body).unwrap_or_default());
        }
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for h in holds {
            h.gate(&method, &path).await;
        }
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let q = query_map(&query);
        let mut inner = self.lock();
        let outcome = match parse_path(&path) {
            None => Outcome::Reply(status(404, "NotFound", format!("no route {path}"))),
            Some(t) => match self.authorize(who, &method, &t, &q) {
                Err(r) => Outcome::Reply(r),
                Ok(()) => self.serve(&mut inner, &method, t, q, &content_type, body.clone()),
            },
        };
        inner.requests.push(Recorded {
            method,
            path,
            query,
            content_type,
            body,
            user: who.user.clone(),
            code: match &outcome {
                Outcome::Reply((code, _)) => *code,
                _ => 200,
            },
            at: Instant::now(),
        });
        match outcome {
            Outcome::Reply((code, body)) => {
                inner.wake();
                drop(inner);
                self.changed.notify_waiters();
                respond(send, code, serde_json::to_vec(&body).unwrap_or_default());
            }
            Outcome::Lines(lines) => {
                drop(inner);
                self.changed.notify_waiters();
                respond(send, 200, lines);
            }
            Outcome::Park(target, query, since) => {
                inner.parked.push(Parked {
                    target,
                    query,
                    since,
                    respond: send,
                });
                drop(inner);
                self.changed.notify_waiters();
            }
        }
    }

    /// RBAC for `who`; a refusal is the real server's 403.
    fn authorize(
        &self,
        who: &Identity,
        method: &str,
        t: &Target,
        q: &BTreeMap<String, String>,
    ) -> Result<(), Reply> {
        let a = rbac::Attributes {
            verb: verb(method, t, q).to_string(),
            group: t.group().to_string(),
            resource: t.plural().to_string(),
            subresource: t.subresource.clone(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        };
        match self.policy.authorize(who, &a) {
            Some(grant) => {
                rbac::record_use(grant);
                Ok(())
            }
            None => {
                let (code, mut body) = status(403, "Forbidden", a.forbidden_message(&who.user));
                body["details"] = json!({"group": a.group, "kind": a.resource});
                if let Some(n) = &a.name {
                    body["details"]["name"] = json!(n);
                }
                Err((code, body))
            }
        }
    }

    fn serve(
        &self,
        inner: &mut Inner,
        method: &str,
        t: Target,
        q: BTreeMap<String, String>,
        content_type: &str,
        body: Option<Value>,
    ) -> Outcome {
        let name = t.name.clone();
        let reply = match (method, name.as_deref()) {
            ("GET", None) if q.get("watch").is_some_and(|w| w == "true") => {
                let since = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let lines = inner.watch_lines(&t, &q, since);
                if lines.is_empty() {
                    return Outcome::Park(t, q, since);
                }
                return Outcome::Lines(lines);
            }
            ("GET", None) => (200, inner.list(&t, &q)),
            ("GET", Some(name)) => match inner.get(&t, name) {
                Some(o) => (200, o.clone()),
                None => store::not_found(&t, name),
            },
            ("POST", None) if t.plural() == "tokenreviews" => self.review(body),
            ("POST", None) if t.plural() == "subjectaccessreviews" => self.access_review(body),
            ("POST", None) => inner.create(&t, body),
            ("PATCH", Some(name)) => inner.patch(&t, name, content_type, body),
            ("PUT", Some(name)) => inner.replace(&t, name, body),
            ("DELETE", Some(name)) => inner.delete(&t, name),
            _ => status(405, "MethodNotAllowed", format!("{method} {}", t.resource)),
        };
        Outcome::Reply(reply)
    }

    /// TokenReview: authenticates tokens from [`Self::issue_token`] whose
    /// audiences meet the review's, with the pod-bound extras.
    fn review(&self, body: Option<Value>) -> Reply {
        let body = body.unwrap_or(Value::Null);
        let token = body
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let wanted: Vec<String> = body
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // No audiences: the API server's own, as the real one does.
        let wanted = if wanted.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            wanted
        };
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let status = match tokens.get(token) {
            None => {
                json!({"authenticated": false, "error": "[invalid bearer token, service account token has been invalidated]"})
            }
            Some(b) if !wanted.iter().any(|w| b.audiences.contains(w)) => {
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences do not match the target audiences]"})
            }
            Some(b) => {
                let mut extra = serde_json::Map::new();
                if let Some(p) = &b.pod {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([p]));
                }
                if let Some(n) = &b.node {
                    extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
                }
                let who = Identity::service_account(&b.namespace, &b.service_account);
                json!({"authenticated": true, "audiences": wanted,
                       "user": {"username": who.user, "uid": format!("sa-{}", b.service_account),
                                "groups": who.groups, "extra": extra}})
            }
        };
        let mut out = body.clone();
        out["status"] = status;
        (201, out)
    }

    /// SubjectAccessReview: whether the user and groups of the spec may do
    ///     /// what its resource or non-resource attributes say, by the policy's RBAC.
    fn access_review(&self, body: Option<Value>) -> Reply {
        let body = body.unwrap_or(Value::Null);
        let spec = &body["spec"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let who = Identity {
            user: text(&spec["user"]),
            groups: spec["groups"]
                .as_array()
                .map(|g| g.iter().map(text).collect())
                .unwrap_or_default(),
        };
        let grant = if let Some(nr) = spec.get("nonResourceAttributes") {
            self.policy
                .authorize_path(&who, &text(&nr["path"]), &text(&nr["verb"]))
        } else if let Some(ra) = spec.get("resourceAttributes") {
            let opt = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
            let a = rbac::Attributes {
                verb: text(&ra["verb"]),
                group: text(&ra["group"]),
                resource: text(&ra["resource"]),
                subresource: opt(&ra["subresource"]),
                namespace: opt(&ra["namespace"]),
                name: opt(&ra["name"]),
            };
            self.policy.authorize(&who, &a)
        } else {
            return status(
                422,
                "Invalid",
                "SubjectAccessReview: exactly one of nonResourceAttributes, resourceAttributes must be specified".into(),
            );
        };
        let status = match grant {
            Some(g) => {
                let reason = format!("RBAC: allowed by {}", g.role);
                rbac::record_use(g);
                json!({"allowed": true, "reason": reason})
            }
            None => json!({"allowed": false}),
        };
        let mut out = body.clone();
        out["status"] = status;
        (201, out)
    }
}

enum Outcome {
    Reply(Reply),
    /// Watch events ready now.
    Lines(Vec<u8>),
    /// A watch with nothing newer yet: held until there is.
    Park(Target, BTreeMap<String, String>, u64),
}

#[cfg(test)]
mod tests;
