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
    // A hostPath FileOrCreate mount leaves an empty file on nodes without a
    // credential provider: that means "not configured", not an error.
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
