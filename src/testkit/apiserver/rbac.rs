//! RBAC as the real API server's authorizer applies it, over the Roles,
//! ClusterRoles and their bindings shipped in `daemonset/`: every request a
//! client makes as a ServiceAccount is checked verb by verb, and refused
//! with the real server's 403 message when no rule allows it. Allowed
//! requests record the rule that allowed them, so a run can report rules no
//! scenario needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

/// Who a client is, as the API server's authenticator would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A ServiceAccount's identity: its user name and the groups the token
    /// authenticator adds.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// The coordinator as `daemonset/` deploys it.
    pub fn coordinator() -> Self {
        Self::service_account("prewarm-system", "prewarm-coordinator")
    }

    /// A cluster admin (`system:masters`), whom RBAC never refuses: for
    /// tests that set up objects through a client.
    pub fn admin() -> Self {
        Self {
            user: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// The node agent as `daemonset/` deploys it (its own namespace).
    pub fn agent() -> Self {
        Self::service_account("prewarm-node", "prewarm-agent")
    }
}

/// What a request asks for, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// `resource.group` as the API server names it in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn full_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }

    /// The real authorizer's refusal, word for word.
    pub fn forbidden_message(&self, user: &str) -> String {
        let subject = match &self.name {
            Some(n) => format!("{} \"{n}\"", self.qualified()),
            None => self.qualified(),
        };
        let scope = match &self.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            self.verb,
            self.full_resource(),
            self.group
        )
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    /// Paths outside the API (`/healthz`, `/v1/*`): a ClusterRole's only.
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

fn listed(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let resource = a.full_resource();
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == resource
                || (a.subresource.is_some() && r.strip_prefix("*/") == a.subresource.as_deref())
        });
        // resourceNames can only match requests that name an object.
        let name_ok = self.resource_names.is_empty()
            || a.name
                .as_ref()
                .is_some_and(|n| self.resource_names.contains(n));
        listed(&self.api_groups, &a.group) && resource_ok && listed(&self.verbs, &a.verb) && name_ok
    }

    /// The entry of `nonResourceURLs` that allows `verb` on `path`, matched
    /// as the real authorizer does: `*`, the exact path, or a prefix ending
    /// in `*`.
    fn allows_path(&self, path: &str, verb: &str) -> Option<&String> {
        if !listed(&self.verbs, verb) {
            return None;
        }
        self.non_resource_urls.iter().find(|u| {
            *u == "*"
                || *u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }
}

/// One Role or ClusterRole: `namespace` is None for a ClusterRole.
#[derive(Debug, Clone)]
struct RoleDef {
    file: String,
    kind: String,
    name: String,
    namespace: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Binding {
    /// None for a ClusterRoleBinding.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl Subject {
    fn matches(&self, who: &Identity) -> bool {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = self.namespace.as_deref().unwrap_or_default();
                who.user == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            "User" => who.user == self.name,
            "Group" => who.groups.contains(&self.name),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

/// The RBAC objects of one kustomization.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: Vec<RoleDef>,
    bindings: Vec<Binding>,
}

/// A rule's verb on one of its resources: the unit of the usage report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub role: String,
    pub resource: String,
    pub verb: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.role, self.verb, self.resource)
    }
}

#[derive(Deserialize)]
struct Kustomization {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn bad(path: &Path, message: impl std::fmt::Display) -> PolicyError {
    PolicyError::Read {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn str_at<'a>(doc: &'a serde_json::Value, ptr: &str) -> Option<&'a str> {
    doc.pointer(ptr).and_then(serde_json::Value::as_str)
}

impl Policy {
    /// The shipped install: `daemonset/` of this source tree.
    pub fn shipped() -> Self {
        static SHIPPED: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        SHIPPED
            .get_or_init(|| {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("daemonset");
                Policy::from_kustomization(&dir)
                    .unwrap_or_else(|e| panic!("RBAC of daemonset/: {e}"))
            })
            .clone()
    }

    /// Reads every Role, ClusterRole and binding among the kustomization's
    /// resources. Roles and RoleBindings state their `metadata.namespace`
    /// (a kustomization `namespace:`, if any, overrides it as kustomize
    /// would); one without a namespace is an error, since it would land in
    /// whatever namespace `kubectl` defaults to.
    pub fn from_kustomization(dir: &Path) -> Result<Self, PolicyError> {
        let kpath = dir.join("kustomization.yaml");
        let k: Kustomization =
            serde_yaml_ng::from_str(&read(&kpath)?).map_err(|e| bad(&kpath, e))?;
        let mut policy = Policy::default();
        for file in &k.resources {
            let path = dir.join(file);
            if path.is_dir() {
                continue;
            }
            policy.add_file(file, &path, k.namespace.as_deref())?;
        }
        Ok(policy)
    }

    /// This policy with the RBAC objects of one more manifest file (e.g. a
    /// namespace's RoleBinding to `prewarm-deploygroup` from
    /// config/integrations-deploygroup.yaml), each in the namespace its
    /// `metadata.namespace` states; other kinds in the file are ignored. A
    /// relative path is read from the source tree's root. Panics with the
    /// path and the reason when the file cannot be read (tests only).
    pub fn with_file(mut self, path: impl AsRef<Path>) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path.as_ref());
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.add_file(&file, &path, None)
            .unwrap_or_else(|e| panic!("RBAC of {}: {e}", path.display()));
        self
    }

    fn add_file(&mut self, file: &str, path: &Path, ns: Option<&str>) -> Result<(), PolicyError> {
        let text = read(path)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(doc).map_err(|e| bad(path, e))?;
            self.add(file, &doc, ns).map_err(|e| bad(path, e))?;
        }
        Ok(())
    }

    fn add(&mut self, file: &str, doc: &serde_json::Value, ns: Option<&str>) -> Result<(), String> {
        let kind = str_at(doc, "/kind").unwrap_or_default();
        let name = str_at(doc, "/metadata/name")
            .unwrap_or_default()
            .to_string();
        // Roles and RoleBindings only: the others are cluster-wide.
        let namespace = match kind {
            "Role" | "RoleBinding" => Some(
                ns.or_else(|| str_at(doc, "/metadata/namespace"))
                    .map(str::to_string)
                    .ok_or_else(|| format!("{kind} {name}: no metadata.namespace"))?,
            ),
            _ => None,
        };
        match kind {
            "Role" | "ClusterRole" => {
                let rules: Vec<Rule> = serde_json::from_value(doc["rules"].clone())
                    .map_err(|e| format!("{kind} {name}: rules: {e}"))?;
                self.roles.push(RoleDef {
                    file: file.to_string(),
                    kind: kind.to_string(),
                    name,
                    namespace,
                    rules,
                });
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let subjects: Vec<Subject> = serde_json::from_value(doc["subjects"].clone())
                    .map_err(|e| format!("{kind} {name}: subjects: {e}"))?;
                self.bindings.push(Binding {
                    namespace,
                    role_kind: str_at(doc, "/roleRef/kind").unwrap_or_default().to_string(),
                    role_name: str_at(doc, "/roleRef/name").unwrap_or_default().to_string(),
                    subjects,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// The roles bound to `who` that apply to a request in `namespace`.
    fn roles_for<'a>(
        &'a self,
        who: &'a Identity,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a RoleDef> + 'a {
        self.bindings
            .iter()
            .filter(move |b| b.subjects.iter().any(|s| s.matches(who)))
            .filter(move |b| b.namespace.is_none() || b.namespace.as_deref() == namespace)
            .flat_map(move |b| {
                self.roles.iter().filter(move |r| {
                    r.kind == b.role_kind
                        && r.name == b.role_name
                        && (r.kind == "ClusterRole" || r.namespace == b.namespace)
                })
            })
    }

    /// The grant that allows the request, or None (403). `system:masters`
    /// is allowed everything, as the real server's superuser group.
    pub fn authorize(&self, who: &Identity, a: &Attributes) -> Option<Grant> {
        if who.groups.iter().any(|g| g == "system:masters") {
            return Some(Grant {
                role: "system:masters".into(),
                resource: a.qualified_with_sub(),
                verb: a.verb.clone(),
            });
        }
        self.roles_for(who, a.namespace.as_deref()).find_map(|r| {
            r.rules.iter().find(|rule| rule.allows(a)).map(|_| Grant {
                role: format!("{} {} ({})", r.kind, r.name, r.file),
                resource: a.qualified_with_sub(),
                verb: a.verb.clone(),
            })
        })
    }

    /// The grant that allows `verb` on the non-resource `path` (as a
    /// SubjectAccessReview's nonResourceAttributes ask), or None. Only
    /// ClusterRoleBindings grant paths, as in the real authorizer.
    pub fn authorize_path(&self, who: &Identity, path: &str, verb: &str) -> Option<Grant> {
        if who.groups.iter().any(|g| g == "system:masters") {
            return Some(Grant {
                role: "system:masters".into(),
                resource: path.to_string(),
                verb: verb.to_string(),
            });
        }
        self.roles_for(who, None)
            .filter(|r| r.kind == "ClusterRole")
            .find_map(|r| {
                r.rules.iter().find_map(|rule| {
                    rule.allows_path(path, verb).map(|url| Grant {
                        role: format!("{} {} ({})", r.kind, r.name, r.file),
                        resource: url.clone(),
                        verb: verb.to_string(),
                    })
                })
            })
    }

    /// This policy plus a RoleBinding in `namespace` of ClusterRole `role`
    /// to `who`: what a namespace owner grants, e.g. `prewarm-deploygroup`.
    pub fn with_role_binding(self, namespace: &str, role: &str, who: &Identity) -> Self {
        self.bind_cluster_role(Some(namespace), role, who)
    }

    /// This policy plus a ClusterRoleBinding of ClusterRole `role` to the
    /// user `who` (what an administrator adds, e.g. for `prewarm-view`).
    pub fn with_cluster_role_binding(self, role: &str, who: &Identity) -> Self {
        self.bind_cluster_role(None, role, who)
    }

    /// Binds ClusterRole `role` to the user `who`, in `namespace` (a
    /// RoleBinding) or cluster-wide (a ClusterRoleBinding).
    fn bind_cluster_role(mut self, namespace: Option<&str>, role: &str, who: &Identity) -> Self {
        self.bindings.push(Binding {
            namespace: namespace.map(str::to_string),
            role_kind: "ClusterRole".into(),
            role_name: role.to_string(),
            subjects: vec![Subject {
                kind: "User".into(),
                name: who.user.clone(),
                namespace: None,
            }],
        });
        self
    }

    /// This policy with `verb` on `resource` (`plural.group`, or a core
    /// plural) taken out of every rule: what a narrower install would be.
    pub fn without(mut self, resource: &str, verb: &str) -> Self {
        let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
        let mut split = Vec::new();
        for r in &mut self.roles {
            for rule in &mut r.rules {
                let hit = rule.api_groups.iter().any(|g| g == group)
                    && rule.resources.iter().any(|x| x == plural)
                    && rule.verbs.iter().any(|v| v == verb);
                if !hit {
                    continue;
                }
                // Keep the rule's other resources with every verb.
                let mut rest = rule.clone();
                rest.resources.retain(|x| x != plural);
                if !rest.resources.is_empty() {
                    split.push((r.name.clone(), rest));
                }
                rule.resources = vec![plural.to_string()];
                rule.verbs.retain(|v| v != verb);
            }
        }
        for (name, rule) in split {
            if let Some(r) = self.roles.iter_mut().find(|r| r.name == name) {
                r.rules.push(rule);
            }
        }
        self
    }

    /// Every (role, resource, verb) the policy grants, for the usage report.
    pub fn grants(&self) -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for r in &self.roles {
            for rule in &r.rules {
                for url in &rule.non_resource_urls {
                    for v in &rule.verbs {
                        out.insert(Grant {
                            role: format!("{} {} ({})", r.kind, r.name, r.file),
                            resource: url.clone(),
                            verb: v.clone(),
                        });
                    }
                }
                for g in &rule.api_groups {
                    for res in &rule.resources {
                        for v in &rule.verbs {
                            let resource = if g.is_empty() {
                                res.clone()
                            } else {
                                match res.split_once('/') {
                                    Some((main, sub)) => format!("{main}.{g}/{sub}"),
                                    None => format!("{res}.{g}"),
                                }
                            };
                            out.insert(Grant {
                                role: format!("{} {} ({})", r.kind, r.name, r.file),
                                resource,
                                verb: v.clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

impl Attributes {
    /// `resource.group[/subresource]`, as grants are keyed.
    fn qualified_with_sub(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.qualified()),
            None => self.qualified(),
        }
    }
}

/// Grants used by this process, written to `$PREWARM_RBAC_USAGE_DIR/<pid>.tsv`
/// (when set) so the suite can report grants no scenario needed.
static USED: Mutex<BTreeSet<Grant>> = Mutex::new(BTreeSet::new());

/// The environment variable naming the usage directory.
pub const USAGE_DIR_ENV: &str = "PREWARM_RBAC_USAGE_DIR";

pub(crate) fn record_use(g: Grant) {
    if g.role == "system:masters" {
        return;
    }
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    if used.insert(g) {
        flush(&used);
    }
}

fn flush(used: &BTreeSet<Grant>) {
    let Some(dir) = std::env::var_os(USAGE_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    let text: String = used
        .iter()
        .map(|g| format!("{}\t{}\t{}\n", g.role, g.resource, g.verb))
        .collect();
    let _ = std::fs::write(dir.join(format!("{}.tsv", std::process::id())), text);
}

/// Grants recorded in `dir` by earlier test processes.
pub fn recorded_uses(dir: &Path) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut f = line.split('\t');
            if let (Some(role), Some(resource), Some(verb)) = (f.next(), f.next(), f.next()) {
                out.insert(Grant {
                    role: role.into(),
                    resource: resource.into(),
                    verb: verb.into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod loader_tests {
    use super::*;

    fn coordinator_may(p: &Policy, verb: &str, resource: &str, ns: &str) -> bool {
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        let a = Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: Some(ns.into()),
            name: Some("x".into()),
        };
        p.authorize(&Identity::coordinator(), &a).is_some()
    }

    /// The shipped Roles bind in the namespaces their files state; an
    /// extra file's RoleBinding binds in its own namespace only.
    #[test]
    fn namespaces_come_from_each_object() {
        let shipped = Policy::shipped();
        assert!(coordinator_may(&shipped, "get", "pods", "prewarm-node"));
        assert!(!coordinator_may(&shipped, "get", "pods", "prewarm-system"));
        assert!(coordinator_may(
            &shipped,
            "create",
            "leases.coordination.k8s.io",
            "prewarm-system"
        ));
        assert!(!coordinator_may(
            &shipped,
            "create",
            "leases.coordination.k8s.io",
            "prewarm-node"
        ));
        assert!(!coordinator_may(
            &shipped,
            "patch",
            "deployments.apps",
            "erp"
        ));
        let bound = shipped.with_file("config/integrations-deploygroup.yaml");
        assert!(coordinator_may(&bound, "patch", "deployments.apps", "erp"));
        assert!(coordinator_may(&bound, "create", "jobs.batch", "erp"));
        assert!(!coordinator_may(
            &bound,
            "patch",
            "deployments.apps",
            "shop"
        ));
    }

    /// A Role or RoleBinding without a namespace would land wherever
    /// kubectl defaults to: an error naming it, not a cluster-wide grant.
    #[test]
    fn a_role_binding_without_a_namespace_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            "resources: [rbac.yaml]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rbac.yaml"),
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {name: loose}\nroleRef: {kind: ClusterRole, name: admin}\n\
             subjects: [{kind: ServiceAccount, name: a, namespace: b}]\n",
        )
        .unwrap();
        let err = Policy::from_kustomization(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("rbac.yaml: RoleBinding loose: no metadata.namespace"),
            "{err}"
        );
    }
}
