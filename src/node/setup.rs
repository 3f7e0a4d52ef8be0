//! Builds the real node stack (registry client, containerd, disk probe and
//! engine) from the typed config. Used by `prewarm pull` and the agent.

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::node::auth::{Keyring, KeyringConfig, ProviderSetup};
use crate::node::containerd::Containerd;
use crate::node::pace::StatvfsProbe;
use crate::node::pull::{Engine, PullObserver};
use crate::node::registry::HttpRegistry;
use crate::node::runtime::{version_supports_pinning, ImageStore, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("registry credentials: {0}")]
    Keyring(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub struct NodeStack {
    pub containerd: Containerd,
    pub engine: Arc<Engine>,
    pub runtime_version: String,
    /// Whether this containerd honours the CRI pinned label (>= 1.7).
    pub pin_supported: bool,
}

pub fn keyring(cfg: &AgentConfig) -> Result<Keyring, SetupError> {
    // Where the provider files are not mounted (daemonset/components/aks
    // adds them) the config is absent in the pod: "not configured", not an
    // error. An empty file or a directory, which create-on-missing mounts
    // leave behind, counts as absent too.
    let provider = cfg
        .registry
        .credential_provider
        .as_ref()
        .filter(|p| {
            let present = std::fs::read_to_string(&p.config)
                .map(|t| !t.trim().is_empty())
                .unwrap_or(false);
            if !present {
                tracing::info!(config = %p.config.display(), "no credential provider config on this node; skipping providers");
            }
            present
        })
        .map(|p| ProviderSetup {
            config: p.config.clone(),
            bin_dir: p.bin_dir.clone(),
        });
    Keyring::new(KeyringConfig {
        docker_configs: cfg.registry.docker_config.clone(),
        provider,
    })
    .map_err(|e| SetupError::Keyring(e.to_string()))
}

pub async fn connect(
    cfg: &AgentConfig,
    observer: Arc<dyn PullObserver>,
) -> Result<NodeStack, SetupError> {
    let keyring = Arc::new(keyring(cfg)?);
    let registry = Arc::new(HttpRegistry::new(cfg.registry.hosts_dir.clone(), keyring));
    let containerd = Containerd::connect(&cfg.runtime.socket, &cfg.runtime.namespace).await?;
    let runtime_version = containerd.version().await?;
    let engine = Engine::new(
        registry,
        Arc::new(containerd.clone()),
        Arc::new(containerd.clone()),
        Arc::new(StatvfsProbe::new(&cfg.runtime.root)),
        cfg.pacing.clone(),
        observer,
    );
    Ok(NodeStack {
        pin_supported: version_supports_pinning(&runtime_version),
        containerd,
        engine: Arc::new(engine),
        runtime_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialProviderRef;

    fn config_with_provider(
        config: std::path::PathBuf,
        bin_dir: std::path::PathBuf,
    ) -> AgentConfig {
        let mut cfg = AgentConfig::default();
        cfg.registry.docker_config = Vec::new();
        cfg.registry.credential_provider = Some(CredentialProviderRef { config, bin_dir });
        cfg
    }

    /// On a node without the AKS component's mounts the provider files are
    /// absent in the pod: that is "no provider", not an error, whatever the
    /// bin dir looks like. A path that is a directory or an empty file
    /// (what a create-on-missing mount would leave) counts as absent too.
    #[test]
    fn absent_provider_files_mean_no_provider() {
        let dir = tempfile::tempdir().unwrap();
        let missing_bin = dir.path().join("no-bin-dir");
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "").unwrap();
        for config in [
            dir.path().join("absent.yaml"),
            dir.path().to_path_buf(),
            empty,
        ] {
            let cfg = config_with_provider(config.clone(), missing_bin.clone());
            keyring(&cfg).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        }
    }

    /// A provider config that is there but whose plugins are not is an
    /// error naming the path, as the kubelet would refuse it.
    #[test]
    fn a_present_config_without_its_bin_dir_is_an_error() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
        let dir = tempfile::tempdir().unwrap();
        let missing_bin = dir.path().join("no-bin-dir");
        let cfg = config_with_provider(
            fixtures.join("credential-provider-config.yaml"),
            missing_bin.clone(),
        );
        let err = keyring(&cfg).unwrap_err().to_string();
        assert!(err.contains(&missing_bin.display().to_string()), "{err}");
    }
}
