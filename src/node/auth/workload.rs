//! Workload credentials: the pull-secret entries the coordinator sends
//! with an intent (README, "Workload pull secrets"), tried before the
//! node's own for the repositories of that intent's images, as the kubelet
//! tries a pod's `imagePullSecrets` before the node's keyring
//! (pkg/credentialprovider/secrets/secrets.go, `MakeDockerKeyring`).
//!
//! They live in memory only, replaced whole on every reconcile pass from
//! the intents that apply to this node then: an intent that ends or is no
//! longer sent takes its credentials with it. Nothing here is written to
//! disk, logged or exported as a metric.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{AuthError, Credential, CredentialSource};

/// Ordered credentials per repository (`host[:port]/path`, no tag).
pub type WorkloadEntries = BTreeMap<String, Vec<Credential>>;

/// The workload credentials in use now.
#[derive(Default)]
pub struct WorkloadCredentials {
    entries: RwLock<WorkloadEntries>,
    generation: AtomicU64,
}

// Counts only: never a credential, not even a username.
impl fmt::Debug for WorkloadCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("WorkloadCredentials")
            .field("repositories", &e.len())
            .field("credentials", &e.values().map(Vec::len).sum::<usize>())
            .finish()
    }
}

impl WorkloadCredentials {
    /// Replaces every entry; true (and a new generation, so cached
    /// registry logins are redone) when they changed.
    pub fn set(&self, entries: WorkloadEntries) -> bool {
        let mut cur = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if *cur == entries {
            return false;
        }
        *cur = entries;
        self.generation.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The credentials for `repository` (`host/path`), in order.
    pub fn get(&self, repository: &str) -> Vec<Credential> {
        let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
        e.get(repository).cloned().unwrap_or_default()
    }

    /// How many repositories have workload credentials now.
    pub fn repositories(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

/// The node's credentials with the workload's tried first.
pub struct WithWorkload {
    pub node: Arc<dyn CredentialSource>,
    pub workload: Arc<WorkloadCredentials>,
}

#[async_trait]
impl CredentialSource for WithWorkload {
    async fn lookup(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Vec<Credential>, AuthError> {
        let first = self.workload.get(&format!("{host}/{repository}"));
        self.node.lookup_after(image, host, repository, first).await
    }

    fn generation(&self) -> u64 {
        self.node
            .generation()
            .wrapping_add(self.workload.generation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::auth::{Keyring, KeyringConfig};

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    fn node_keyring(dir: &std::path::Path, json: &str) -> Arc<dyn CredentialSource> {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        Arc::new(
            Keyring::new(KeyringConfig {
                docker_configs: vec![path],
                provider: None,
            })
            .unwrap(),
        )
    }

    /// The kubelet's order: the pod's secrets, then the node's keyring;
    /// no anonymous attempt once anything matched.
    #[tokio::test]
    async fn workload_credentials_come_first_and_anonymous_only_without_any() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_keyring(
            dir.path(),
            r#"{"auths":{"reg.example:5000":{"username":"node","password":"n"}}}"#,
        );
        let workload = Arc::new(WorkloadCredentials::default());
        let src = WithWorkload {
            node,
            workload: workload.clone(),
        };
        let lookup = |repo: &'static str| {
            let src = &src;
            async move {
                src.lookup(
                    &format!("reg.example:5000/{repo}:1"),
                    "reg.example:5000",
                    repo,
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(lookup("app").await, vec![basic("node", "n")]);
        let g0 = src.generation();
        let mut e = WorkloadEntries::new();
        e.insert("reg.example:5000/app".into(), vec![basic("pod", "p")]);
        assert!(workload.set(e.clone()));
        assert!(!workload.set(e), "same entries: no new generation");
        assert_ne!(src.generation(), g0);
        assert_eq!(
            lookup("app").await,
            vec![basic("pod", "p"), basic("node", "n")]
        );
        // Another repository of the same registry: not the workload's.
        assert_eq!(lookup("other").await, vec![basic("node", "n")]);

        // A registry the node has nothing for: the pod's only, no anonymous.
        let empty = node_keyring(dir.path(), "{}");
        let src = WithWorkload {
            node: empty,
            workload: workload.clone(),
        };
        let got = src
            .lookup("reg.example:5000/app:1", "reg.example:5000", "app")
            .await
            .unwrap();
        assert_eq!(got, vec![basic("pod", "p")]);
        let none = src
            .lookup("reg.example:5000/x:1", "reg.example:5000", "x")
            .await
            .unwrap();
        assert_eq!(none, vec![Credential::Anonymous]);

        // Ended: gone.
        assert!(workload.set(WorkloadEntries::new()));
        assert_eq!(workload.get("reg.example:5000/app"), vec![]);
    }

    #[test]
    fn debug_shows_counts_only() {
        let workload = WorkloadCredentials::default();
        let mut e = WorkloadEntries::new();
        e.insert(
            "reg.example/app".into(),
            vec![basic("robot-user", "s3cret-pw")],
        );
        workload.set(e);
        let shown = format!("{workload:?}");
        assert_eq!(
            shown,
            "WorkloadCredentials { repositories: 1, credentials: 1 }"
        );
    }
}
