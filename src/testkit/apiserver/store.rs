//! The server's objects and the wire behaviour of each verb: list, get,
//! watch, create, replace, patch and delete, with resourceVersions,
//! generations, optimistic concurrency and status subresources as the real
//! API server applies them. Validation lives in [`super::validate`].

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::validate;
use super::Respond;

/// Where a request points: `resource` is the API prefix plus plural
/// (`api/v1/pods`, `apis/apps/v1/deployments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// The API group ("" for the core group).
    pub fn group(&self) -> &str {
        let segs: Vec<&str> = self.resource.split('/').collect();
        match segs.as_slice() {
            ["apis", group, ..] => group,
            _ => "",
        }
    }

    /// The plural resource name.
    pub fn plural(&self) -> &str {
        self.resource.rsplit('/').next().unwrap_or_default()
    }

    /// `plural.group`, as the API server names the resource in messages.
    pub fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// Custom resources (CRDs) as prewarm meets them.
    pub fn is_custom(&self) -> bool {
        matches!(self.group(), "prewarm.dev" | "keda.sh")
    }

    /// Whether writes to the main resource ignore `.status` (and writes to
    /// `/status` change nothing else).
    pub fn has_status_subresource(&self) -> bool {
        matches!(
            self.plural(),
            "pods"
                | "nodes"
                | "namespaces"
                | "deployments"
                | "replicasets"
                | "statefulsets"
                | "daemonsets"
                | "jobs"
                | "deploygroups"
                | "scaledobjects"
        )
    }
}

pub(crate) fn parse_path(path: &str) -> Option<Target> {
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

pub(crate) struct Parked {
    pub target: Target,
    pub query: BTreeMap<String, String>,
    pub since: u64,
    pub respond: Respond,
}

/// An HTTP status code and JSON body.
pub(crate) type Reply = (u16, Value);

#[derive(Default)]
pub(crate) struct Inner {
    /// resource → (namespace or "", name) → object.
    pub objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// (resourceVersion, resource, event type, object).
    pub events: Vec<(u64, String, &'static str, Value)>,
    pub rv: u64,
    pub uid: u64,
    pub requests: Vec<super::Recorded>,
    pub parked: Vec<Parked>,
}

pub(crate) fn query_map(q: &str) -> BTreeMap<String, String> {
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

/// A `Status` reply, shaped like the real server's.
pub(crate) fn status(code: u16, reason: &str, message: String) -> Reply {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code, "message": message}),
    )
}

pub(crate) fn not_found(t: &Target, name: &str) -> Reply {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.qualified()),
    )
}

pub(crate) fn key_of(obj: &Value) -> (String, String) {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn store(&mut self, resource: &str, kind: &'static str, mut obj: Value) -> Value {
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
    pub fn wake(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            let lines = self.watch_lines(&p.target, &p.query, p.since);
            if lines.is_empty() {
                self.parked.push(p);
            } else {
                super::respond(p.respond, 200, lines);
            }
        }
    }

    pub fn watch_lines(&self, t: &Target, q: &BTreeMap<String, String>, since: u64) -> Vec<u8> {
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

    pub fn list(&self, t: &Target, q: &BTreeMap<String, String>) -> Value {
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

    pub fn get(&self, t: &Target, name: &str) -> Option<&Value> {
        let ns = t.namespace.clone().unwrap_or_default();
        self.objects
            .get(&t.resource)
            .and_then(|m| m.get(&(ns, name.to_string())))
    }

    pub fn create(&mut self, t: &Target, body: Option<Value>) -> Reply {
        let Some(mut obj) = body.filter(Value::is_object) else {
            return status(400, "BadRequest", "body is not an object".into());
        };
        if let Some(ns) = &t.namespace {
            let given = obj.pointer("/metadata/namespace").and_then(Value::as_str);
            if given.is_some_and(|g| g != ns) {
                return status(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                );
            }
            obj["metadata"]["namespace"] = json!(ns);
        }
        if obj.pointer("/metadata/name").is_none() {
            let prefix = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("obj-")
                .to_string();
            obj["metadata"]["name"] = json!(format!("{prefix}{}", self.rv + 1));
        }
        if let Err(e) = validate::create(t, &obj) {
            return e;
        }
        let name = key_of(&obj).1;
        if self.get(t, &name).is_some() {
            return status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
            );
        }
        if t.has_status_subresource() && t.is_custom() {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        self.uid += 1;
        obj["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
        obj["metadata"]["generation"] = json!(1);
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        (201, self.store(&t.resource, "ADDED", obj))
    }

    /// PUT: the body replaces the object, guarded by its resourceVersion.
    pub fn replace(&mut self, t: &Target, name: &str, body: Option<Value>) -> Reply {
        let Some(current) = self.get(t, name).cloned() else {
            return not_found(t, name);
        };
        let Some(body) = body.filter(Value::is_object) else {
            return status(400, "BadRequest", "body is not an object".into());
        };
        if body.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            return status(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL".into(),
            );
        }
        let given_rv = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if given_rv.is_none() && t.is_custom() {
            return validate::invalid(
                t,
                name,
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            );
        }
        self.write(t, name, &current, body)
    }

    pub fn patch(
        &mut self,
        t: &Target,
        name: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Reply {
        let Some(current) = self.get(t, name).cloned() else {
            return not_found(t, name);
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
        self.write(t, name, &current, next)
    }

    /// The common half of PUT and PATCH: the resourceVersion precondition,
    /// status subresource semantics, validation, generation, storage.
    fn write(&mut self, t: &Target, name: &str, current: &Value, mut next: Value) -> Reply {
        let rv = |o: &Value| {
            o.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let Some(given) = rv(&next) {
            if Some(&given) != rv(current).as_ref() {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.qualified()
                    ),
                );
            }
        }
        // Identity and server-owned fields are not the client's to change.
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "namespace",
            "name",
            "resourceVersion",
        ] {
            next["metadata"][f] = current["metadata"][f].clone();
        }
        if t.has_status_subresource() {
            next = split_status(t, current, next);
        }
        if let Err(e) = validate::update(t, name, current, &next) {
            return e;
        }
        if t.subresource.is_none() && spec_changed(current, &next) {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        if &next == current {
            // A no-op write keeps the resourceVersion and tells no watcher.
            return (200, next);
        }
        (200, self.store(&t.resource, "MODIFIED", next))
    }

    pub fn delete(&mut self, t: &Target, name: &str) -> Reply {
        match self.get(t, name).cloned() {
            Some(o) => (200, self.store(&t.resource, "DELETED", o)),
            None => not_found(t, name),
        }
    }
}

/// Everything but metadata and status, the part generations count.
fn spec_changed(a: &Value, b: &Value) -> bool {
    let rest = |o: &Value| -> Value {
        let mut o = o.clone();
        if let Some(m) = o.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        o
    };
    rest(a) != rest(b)
}

/// A write to `/status` changes only the status; a write to the object
/// itself keeps the stored status.
fn split_status(t: &Target, current: &Value, next: Value) -> Value {
    let mut out = current.clone();
    if t.subresource.as_deref() == Some("status") {
        out["status"] = next.get("status").cloned().unwrap_or(Value::Null);
        if out["status"].is_null() {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
        out["metadata"]["resourceVersion"] = next["metadata"]["resourceVersion"].clone();
        return out;
    }
    let mut out = next;
    match current.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
    }
    out
}
