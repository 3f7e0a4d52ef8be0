//! A keyring rebuilt when its files change: a rotated pull secret (docker
//! config) or an edited credential-provider config is used by the next
//! pull, without a restart. The files are compared by content, as the
//! agent's config reload does (a mounted Secret changes by a symlink swap).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::{AuthError, Credential, Keyring, KeyringConfig};

/// Where a registry client gets credential candidates from, and a number
/// that changes when they may have changed (cached lookups are then redone).
#[async_trait]
pub trait CredentialSource: Send + Sync {
    async fn lookup(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Vec<Credential>, AuthError>;

    /// [`CredentialSource::lookup`] with a pod's own credentials tried
    /// first, as the kubelet does; `Anonymous` only when nothing matched.
    async fn lookup_after(
        &self,
        image: &str,
        host: &str,
        repository: &str,
        workload: Vec<Credential>,
    ) -> Result<Vec<Credential>, AuthError> {
        let node = self.lookup(image, host, repository).await?;
        if workload.is_empty() {
            return Ok(node);
        }
        let mut all = workload;
        all.extend(node.into_iter().filter(|c| !c.is_anonymous()));
        Ok(all)
    }

    fn generation(&self) -> u64 {
        0
    }
}

#[async_trait]
impl CredentialSource for Keyring {
    async fn lookup(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Vec<Credential>, AuthError> {
        Keyring::lookup(self, image, host, repository).await
    }

    async fn lookup_after(
        &self,
        image: &str,
        host: &str,
        repository: &str,
        workload: Vec<Credential>,
    ) -> Result<Vec<Credential>, AuthError> {
        let now = std::time::Instant::now();
        Ok(self
            .lookup_with_workload(image, host, repository, workload, now)
            .await?
            .credentials)
    }
}

/// Content of each watched file; `None` while it is absent or unreadable.
type Contents = Vec<(PathBuf, Option<Vec<u8>>)>;

/// A [`Keyring`] re-read from its files when their content changes.
#[derive(Debug)]
pub struct ReloadingKeyring {
    config: KeyringConfig,
    current: RwLock<Arc<Keyring>>,
    seen: Mutex<Contents>,
    generation: AtomicU64,
}

impl ReloadingKeyring {
    /// Builds the keyring now; errors as [`Keyring::new`].
    pub fn new(config: KeyringConfig) -> Result<Self, AuthError> {
        let seen = read_all(&config);
        let keyring = Keyring::new(config.clone())?;
        Ok(Self {
            config,
            current: RwLock::new(Arc::new(keyring)),
            seen: Mutex::new(seen),
            generation: AtomicU64::new(0),
        })
    }

    /// Re-reads the files; when any changed, rebuilds the keyring and
    /// returns `Ok(true)`. A new keyring that does not build is an error
    /// and the previous one stays in use (the same change is not retried
    /// until the files change again).
    pub fn reload_if_changed(&self) -> Result<bool, AuthError> {
        let now = read_all(&self.config);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let keyring = Keyring::new(self.config.clone())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The files watched, for logs.
    pub fn files(&self) -> Vec<PathBuf> {
        watched(&self.config)
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl CredentialSource for ReloadingKeyring {
    async fn lookup(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Vec<Credential>, AuthError> {
        let keyring = self.keyring();
        keyring.lookup(image, host, repository).await
    }

    async fn lookup_after(
        &self,
        image: &str,
        host: &str,
        repository: &str,
        workload: Vec<Credential>,
    ) -> Result<Vec<Credential>, AuthError> {
        let keyring = self.keyring();
        CredentialSource::lookup_after(&*keyring, image, host, repository, workload).await
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

fn watched(config: &KeyringConfig) -> Vec<PathBuf> {
    let mut paths = config.docker_configs.clone();
    paths.extend(config.provider.as_ref().map(|p| p.config.clone()));
    paths
}

fn read_all(config: &KeyringConfig) -> Contents {
    watched(config)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).ok();
            (p, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_config(user: &str, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{auth}"}}}}}}"#)
    }

    async fn creds(k: &ReloadingKeyring) -> Vec<Credential> {
        CredentialSource::lookup(k, "reg.example:5000/app:1", "reg.example:5000", "app")
            .await
            .unwrap()
    }

    fn basic(password: &str) -> Vec<Credential> {
        vec![Credential::Basic {
            username: "u".into(),
            password: password.into(),
        }]
    }

    #[tokio::test]
    async fn a_rotated_pull_secret_is_used_after_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, docker_config("u", "old")).unwrap();
        let k = ReloadingKeyring::new(KeyringConfig {
            docker_configs: vec![path.clone()],
            provider: None,
        })
        .unwrap();
        assert_eq!(creds(&k).await, basic("old"));
        assert!(!k.reload_if_changed().unwrap(), "nothing changed");
        assert_eq!(k.generation(), 0);

        std::fs::write(&path, docker_config("u", "new")).unwrap();
        assert!(k.reload_if_changed().unwrap());
        assert_eq!(k.generation(), 1);
        assert_eq!(creds(&k).await, basic("new"));

        // A broken file keeps the last good keyring.
        std::fs::write(&path, "{not json").unwrap();
        let err = k.reload_if_changed().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(creds(&k).await, basic("new"));
        assert!(!k.reload_if_changed().unwrap(), "same broken file");

        // Removed: no credentials any more (anonymous), as at start.
        std::fs::remove_file(&path).unwrap();
        assert!(k.reload_if_changed().unwrap());
        assert_eq!(creds(&k).await, vec![Credential::Anonymous]);
        assert_eq!(k.files(), vec![path]);
    }
}
