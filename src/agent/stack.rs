//! The node stack as the reconcile loop sees it: the CRI image store, the
//! warm engine, the disk and the registry credentials; built by a
//! [`Connector`] (the real one connects to containerd, tests use fakes).

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::AgentConfig;
use crate::node::auth::workload::WorkloadCredentials;
use crate::node::auth::ReloadingKeyring;
use crate::node::pace::DiskProbe;
use crate::node::pull::{Engine, PullObserver};
use crate::node::runtime::ImageStore;
use crate::node::setup::{self, SetupError};

pub struct Stack {
    pub store: Arc<dyn ImageStore>,
    pub engine: Arc<Engine>,
    /// Free space on containerd's filesystem (the engine's disk floor uses the same).
    pub disk: Arc<dyn DiskProbe>,
    /// Whether this containerd honours the CRI pinned label (>= 1.7).
    pub pin_supported: bool,
    pub runtime_version: String,
    /// The snapshotter CRI unpacks into: warm means unpacked there.
    pub snapshotter: String,
    /// Registry credentials re-read when their files change.
    pub credentials: Option<Arc<ReloadingKeyring>>,
    /// The intents' workload pull-secret credentials, set every pass.
    pub workload: Option<Arc<WorkloadCredentials>>,
}

/// Builds the stack for a config.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(
        &self,
        cfg: &AgentConfig,
        observer: Arc<dyn PullObserver>,
    ) -> Result<Stack, SetupError>;
}

/// containerd over its socket, the HTTP registry client, statvfs.
pub struct RealConnector;

#[async_trait]
impl Connector for RealConnector {
    async fn connect(
        &self,
        cfg: &AgentConfig,
        observer: Arc<dyn PullObserver>,
    ) -> Result<Stack, SetupError> {
        let s = setup::connect(cfg, observer).await?;
        crate::node::leases::release_predecessors(&s).await;
        Ok(Stack {
            store: Arc::new(s.containerd),
            engine: s.engine,
            disk: s.disk,
            pin_supported: s.pin_supported,
            runtime_version: s.runtime_version,
            snapshotter: s.snapshotter,
            credentials: Some(s.credentials),
            workload: Some(s.workload),
        })
    }
}
