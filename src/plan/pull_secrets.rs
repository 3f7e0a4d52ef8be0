//! Workload pull secrets, pure (README, "Workload pull secrets"): which
//! Secrets a workload's pods pull with, what a `kubernetes.io/dockerconfigjson`
//! or `kubernetes.io/dockercfg` Secret holds, which of its entries an
//! intent's images need, and, on the agent, which credentials each
//! repository gets from the intents applying to its node.
//!
//! The kubelet's order (pkg/kubelet/kuberuntime/kuberuntime_image.go,
//! `PullImage`; pkg/credentialprovider/secrets/secrets.go,
//! `MakeDockerKeyring`): the pod's pull secrets, all in one keyring whose
//! matches come most specific first, BEFORE the node's keyring (its
//! `config.json`, then the credential-provider plugins); every matching
//! credential is tried in turn until a pull succeeds, and only when none
//! matched at all does it pull without credentials.
//!
//! Which secrets a pod has: its `spec.imagePullSecrets`; the ServiceAccount
//! admission plugin (plugin/pkg/admission/serviceaccount/admission.go)
//! copies its ServiceAccount's `imagePullSecrets` into a pod at creation
//! only when the pod names none. A template (rollouts) is not admitted yet,
//! so its ServiceAccount is read; an admitted pod (gated, pending) already
//! carries them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;

use crate::config::dockerconfig::{self, sort_most_specific, Credential, DockerConfigError};
use crate::config::dockerconfig::{RegistryPattern, Target};
use crate::config::reference::ImageRef;
use crate::wire::v1::{Intent, RegistryCredential};

/// Secret type and data key of a docker `config.json` pull secret.
pub const DOCKER_CONFIG_JSON: (&str, &str) =
    ("kubernetes.io/dockerconfigjson", ".dockerconfigjson");
/// Secret type and data key of a legacy `.dockercfg` pull secret.
pub const DOCKERCFG: (&str, &str) = ("kubernetes.io/dockercfg", ".dockercfg");
/// A pod without `serviceAccountName` runs as this one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Where a workload's pods get their pull secrets from.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadSecrets {
    pub namespace: String,
    /// `spec.imagePullSecrets[].name`, in order, each once.
    pub secrets: Vec<String>,
    /// The ServiceAccount whose `imagePullSecrets` admission would copy in:
    /// set for a template that names no secrets of its own.
    pub service_account: Option<String>,
}

impl WorkloadSecrets {
    /// A pod template, not admitted yet: its own secrets, else its
    /// ServiceAccount's.
    pub fn of_template(namespace: &str, spec: &PodSpec) -> Self {
        let mut w = Self::of_pod(namespace, spec);
        if w.secrets.is_empty() {
            let sa = spec
                .service_account_name
                .as_deref()
                .or(spec.service_account.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
            w.service_account = Some(sa.to_string());
        }
        w
    }

    /// An admitted pod: its secrets as admission left them.
    pub fn of_pod(namespace: &str, spec: &PodSpec) -> Self {
        let mut w = WorkloadSecrets {
            namespace: namespace.to_string(),
            ..Default::default()
        };
        let names = spec.image_pull_secrets.iter().flatten();
        w.add(names.map(|r| r.name.as_str()));
        w
    }

    /// Adds the secrets of another pod of the same intent (same namespace).
    pub fn merge(&mut self, other: &WorkloadSecrets) {
        self.add(other.secrets.iter().map(String::as_str));
        if self.service_account.is_none() {
            self.service_account = other.service_account.clone();
        }
    }

    fn add<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        for n in names.filter(|n| !n.is_empty()) {
            if !self.secrets.iter().any(|s| s == n) {
                self.secrets.push(n.to_string());
            }
        }
    }

    /// Nothing to read.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.service_account.is_none()
    }

    /// The Secrets the pods pull with, given the ServiceAccount's
    /// `imagePullSecrets` (when [`Self::service_account`] is set).
    pub fn names(&self, service_account_secrets: &[String]) -> Vec<String> {
        let mut w = self.clone();
        if w.secrets.is_empty() {
            w.add(service_account_secrets.iter().map(String::as_str));
        }
        w.secrets
    }
}

/// One usable entry of a pull secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// `namespace/secret-name`.
    pub source: String,
    pub pattern: RegistryPattern,
    /// Redacted in Debug.
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PullSecretError {
    #[error("Secret {secret}: type {kind:?} is not a pull secret ({} or {}); the kubelet ignores it too", DOCKER_CONFIG_JSON.0, DOCKERCFG.0)]
    NotAPullSecret { secret: String, kind: String },
    #[error("Secret {secret}: data[{field:?}] is missing or empty")]
    MissingData { secret: String, field: &'static str },
    #[error("Secret {secret}: data[{field:?}]: {message}")]
    Invalid {
        secret: String,
        field: &'static str,
        message: String,
    },
}

/// The entries of Secret `namespace/name` of type `kind` with `data`.
/// Errors name the Secret and the field, never its content.
pub fn parse_secret(
    namespace: &str,
    name: &str,
    kind: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<SecretEntry>, PullSecretError> {
    let source = format!("{namespace}/{name}");
    let kind = kind.unwrap_or_default();
    let field = if kind == DOCKER_CONFIG_JSON.0 {
        DOCKER_CONFIG_JSON.1
    } else if kind == DOCKERCFG.0 {
        DOCKERCFG.1
    } else {
        return Err(PullSecretError::NotAPullSecret {
            secret: source,
            kind: kind.to_string(),
        });
    };
    let bytes = match data.get(field) {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => b,
        _ => {
            return Err(PullSecretError::MissingData {
                secret: source,
                field,
            })
        }
    };
    let entries =
        dockerconfig::parse(bytes).map_err(|e: DockerConfigError| PullSecretError::Invalid {
            secret: source.clone(),
            field,
            message: e.to_string(),
        })?;
    Ok(entries
        .into_iter()
        .map(|e| SecretEntry {
            source: source.clone(),
            pattern: e.pattern,
            credential: e.credential,
        })
        .collect())
}

fn target(image: &str) -> Option<Target> {
    let r: ImageRef = image.parse().ok()?;
    Some(Target::new(&r.registry, &r.repository))
}

/// The entries `images` need (their key matches one of the images'
/// repositories, the kubelet's matching), most specific first, each once.
pub fn select(entries: &[SecretEntry], images: &[String]) -> Vec<RegistryCredential> {
    let targets: Vec<Target> = images.iter().filter_map(|i| target(i)).collect();
    let mut hits: Vec<(RegistryPattern, &SecretEntry)> = entries
        .iter()
        .filter(|e| targets.iter().any(|t| e.pattern.matches(t)))
        .map(|e| (e.pattern.clone(), e))
        .collect();
    sort_most_specific(&mut hits);
    let mut out: Vec<RegistryCredential> = Vec::new();
    for (_, e) in hits {
        let c = to_wire(e);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn to_wire(e: &SecretEntry) -> RegistryCredential {
    let mut c = RegistryCredential {
        registry: e.pattern.as_str().to_string(),
        source: e.source.clone(),
        ..Default::default()
    };
    match &e.credential {
        Credential::Basic { username, password } => {
            c.username = username.clone();
            c.password = password.clone();
        }
        Credential::IdentityToken(t) => c.identity_token = t.clone(),
        Credential::Anonymous => {}
    }
    c
}

/// Puts the credentials `intent`'s images need on it, only when it names
/// its nodes: an intent without nodes reaches every node its selector
/// matches, and secrets go only to nodes about to run the workload.
pub fn attach(intent: &mut Intent, entries: &[SecretEntry]) {
    intent.credentials = if intent.nodes.is_empty() {
        Vec::new()
    } else {
        select(entries, &intent.images)
    };
}

/// The credential of a wire entry; None for one with nothing in it.
fn credential(c: &RegistryCredential) -> Option<Credential> {
    if !c.identity_token.is_empty() {
        Some(Credential::IdentityToken(c.identity_token.clone()))
    } else if !c.username.is_empty() || !c.password.is_empty() {
        Some(Credential::Basic {
            username: c.username.clone(),
            password: c.password.clone(),
        })
    } else {
        None
    }
}

/// On the agent: the workload credentials per repository (`host/path`) of
/// the `applying` intents that name `node`, each intent's most specific
/// first, intents by priority (highest first) then id. An intent naming
/// no node brings none. Entries that do not parse are left out and
/// described in the second value (never their content).
pub fn for_node(
    intents: &[Intent],
    applying: &BTreeSet<String>,
    node: &str,
) -> (BTreeMap<String, Vec<Credential>>, Vec<String>) {
    let mut chosen: Vec<&Intent> = intents
        .iter()
        .filter(|i| applying.contains(&i.id) && !i.credentials.is_empty())
        .filter(|i| i.nodes.iter().any(|n| n == node))
        .collect();
    chosen.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let mut out: BTreeMap<String, Vec<Credential>> = BTreeMap::new();
    let mut bad = Vec::new();
    for i in chosen {
        let mut entries: Vec<(RegistryPattern, Credential)> = Vec::new();
        for (k, c) in i.credentials.iter().enumerate() {
            let at = || format!("intent {}: credentials[{k}] (from {})", i.id, c.source);
            match (RegistryPattern::from_docker_key(&c.registry), credential(c)) {
                (Ok(p), Some(cred)) => entries.push((p, cred)),
                (Err(why), _) => bad.push(format!("{}: registry {:?}: {why}", at(), c.registry)),
                (_, None) => bad.push(format!("{}: no username, password or token", at())),
            }
        }
        sort_most_specific(&mut entries);
        for raw in &i.images {
            let Ok(r) = raw.parse::<ImageRef>() else {
                continue;
            };
            let t = Target::new(&r.registry, &r.repository);
            let list = out.entry(r.name()).or_default();
            for (p, c) in &entries {
                if p.matches(&t) && !list.contains(c) {
                    list.push(c.clone());
                }
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    (out, bad)
}

#[cfg(test)]
#[path = "pull_secrets_tests.rs"]
mod tests;
