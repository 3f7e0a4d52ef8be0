//! Builds the real node stack (registry client, containerd, disk probe and
//! engine) from the typed config. Used by `prewarm pull` and the agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{AgentConfig, DEFAULT_CONTAINERD_ROOT, DEFAULT_SNAPSHOTTER};
use crate::node::auth::workload::{WithWorkload, WorkloadCredentials};
use crate::node::auth::{KeyringConfig, ProviderSetup, ReloadingKeyring};
use crate::node::containerd::Containerd;
use crate::node::pace::StatvfsProbe;
use crate::node::pull::{Engine, PullObserver};
use crate::node::registry::HttpRegistry;
use crate::node::runtime::{
    version_overlaps_cri_well, version_supports_pinning, ImageStore, RuntimeError,
};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("registry credentials: {0}")]
    Keyring(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// containerd's content store is not there: in a pod, it is not
    /// mounted (retrying cannot help).
    #[error("containerd's content store {path} ({what}) cannot be read here: {reason}; the disk floor is measured on its filesystem, so it must be visible at that path: mount it (in the DaemonSet: hostPath {path}, type Directory, readOnly, at the same path), or {hint}")]
    ContentStore {
        path: String,
        what: String,
        reason: String,
        hint: &'static str,
    },
    #[error("runtime.snapshotter is {configured:?}, but containerd's CRI plugin unpacks images into {reported:?}; remove runtime.snapshotter (prewarm asks containerd) or set it to {reported:?}")]
    Snapshotter {
        configured: String,
        reported: String,
    },
}

pub struct NodeStack {
    pub containerd: Containerd,
    pub engine: Arc<Engine>,
    pub runtime_version: String,
    /// Whether this containerd honours the CRI pinned label (>= 1.7).
    pub pin_supported: bool,
    /// containerd's root; the disk floor guards its content store's filesystem.
    pub root: ContainerdRoot,
    /// Free space on that filesystem (the engine's disk floor uses the same).
    pub disk: Arc<StatvfsProbe>,
    /// The snapshotter CRI unpacks into; warm images are unpacked there.
    pub snapshotter: String,
    /// The registry credentials, re-read when their files change.
    pub credentials: Arc<ReloadingKeyring>,
    /// Workload pull-secret credentials of the intents applying now, tried
    /// before `credentials` (in memory only).
    pub workload: Arc<WorkloadCredentials>,
}

/// How the user names containerd's root, for errors about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSetting {
    /// `prewarm pull --root`.
    Flag,
    /// `runtime.root` in the agent config.
    ConfigKey,
}

impl SetupError {
    /// The process lacks a mount: retrying cannot fix it.
    pub fn needs_mount(&self) -> bool {
        matches!(self, SetupError::ContentStore { .. })
    }
}

/// containerd's content store (image blobs) under its root: the disk floor
/// is measured there, so only this directory of the root needs mounting
/// (the rest holds every container's root filesystem).
pub const CONTENT_STORE_DIR: &str = "io.containerd.content.v1.content";

impl RootSetting {
    fn hint(self) -> &'static str {
        match self {
            RootSetting::Flag => "pass --root to name containerd's root directory",
            RootSetting::ConfigKey => {
                "set runtime.root in the agent config to containerd's root directory"
            }
        }
    }

    /// Whose leases this process creates: a starting agent takes over
    /// only agents' leftovers, never a running `prewarm pull`'s.
    fn lease_owner(self) -> &'static str {
        match self {
            RootSetting::Flag => crate::node::leases::OWNER_CLI,
            RootSetting::ConfigKey => crate::node::leases::OWNER_AGENT,
        }
    }
}

/// Where containerd's root came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSource {
    /// `--root` or `runtime.root`.
    Configured,
    /// containerd's CRI status.
    Containerd,
    /// Neither said: [`DEFAULT_CONTAINERD_ROOT`].
    Default,
}

/// The directory whose filesystem the disk floor guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdRoot {
    pub path: PathBuf,
    pub source: RootSource,
}

impl ContainerdRoot {
    /// containerd's content store under this root.
    pub fn content_store(&self) -> PathBuf {
        self.path.join(CONTENT_STORE_DIR)
    }

    /// What the path is, for errors.
    pub fn describe(&self) -> &'static str {
        match self.source {
            RootSource::Configured => "containerd's root as configured",
            RootSource::Containerd => "containerd's root as containerd reports it",
            RootSource::Default => "the default containerd root; containerd did not report its own",
        }
    }
}

/// The disk probe on `root`'s content store, which must be a directory
/// here: never statvfs whatever filesystem happens to hold the path (in a
/// pod that mounts only the content store, the root is the pod's own).
pub fn content_store_probe(
    root: &ContainerdRoot,
    setting: RootSetting,
) -> Result<StatvfsProbe, SetupError> {
    let path = root.content_store();
    let what = format!("under {}", root.describe());
    let reason = match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("not a directory".to_string()),
        Err(e) => Some(e.to_string()),
    };
    match reason {
        None => Ok(StatvfsProbe::new(&path).described(
            &format!("containerd's content store, {what}"),
            setting.hint(),
        )),
        Some(reason) => Err(SetupError::ContentStore {
            path: path.display().to_string(),
            what,
            reason,
            hint: setting.hint(),
        }),
    }
}

/// The configured root, else the one containerd reports, else the default.
pub async fn resolve_root(configured: Option<&Path>, store: &dyn ImageStore) -> ContainerdRoot {
    let (path, source) = match configured {
        Some(p) => (p.to_path_buf(), RootSource::Configured),
        None => match store.root_dir().await {
            Ok(Some(p)) => (p, RootSource::Containerd),
            Ok(None) => (DEFAULT_CONTAINERD_ROOT.into(), RootSource::Default),
            Err(e) => {
                tracing::warn!(error = %e, "containerd did not report its root directory");
                (DEFAULT_CONTAINERD_ROOT.into(), RootSource::Default)
            }
        },
    };
    ContainerdRoot { path, source }
}

/// The snapshotter CRI unpacks into: as containerd reports it (a configured
/// one must agree), else as configured, else containerd's default.
pub async fn resolve_snapshotter(
    configured: Option<&str>,
    store: &dyn ImageStore,
) -> Result<String, SetupError> {
    let reported = match store.snapshotter().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "containerd did not report its CRI snapshotter");
            None
        }
    };
    match (configured, reported) {
        (Some(c), Some(r)) if c != r => Err(SetupError::Snapshotter {
            configured: c.to_string(),
            reported: r,
        }),
        (_, Some(r)) => Ok(r),
        (Some(c), None) => Ok(c.to_string()),
        (None, None) => Ok(DEFAULT_SNAPSHOTTER.to_string()),
    }
}

pub fn keyring(cfg: &AgentConfig) -> Result<ReloadingKeyring, SetupError> {
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
    ReloadingKeyring::new(KeyringConfig {
        docker_configs: cfg.registry.docker_config.clone(),
        provider,
    })
    .map_err(|e| SetupError::Keyring(e.to_string()))
}

/// The node stack for the agent (errors about the root name `runtime.root`).
pub async fn connect(
    cfg: &AgentConfig,
    observer: Arc<dyn PullObserver>,
) -> Result<NodeStack, SetupError> {
    connect_with(cfg, observer, RootSetting::ConfigKey).await
}

/// The node stack; errors about containerd's root say to change `setting`.
pub async fn connect_with(
    cfg: &AgentConfig,
    observer: Arc<dyn PullObserver>,
    setting: RootSetting,
) -> Result<NodeStack, SetupError> {
    let credentials = Arc::new(keyring(cfg)?);
    let workload = Arc::new(WorkloadCredentials::default());
    let source = WithWorkload {
        node: credentials.clone(),
        workload: workload.clone(),
    };
    let registry = Arc::new(HttpRegistry::new(
        cfg.registry.hosts_dir.clone(),
        Arc::new(source),
    ));
    let containerd = Containerd::connect(&cfg.runtime.socket, &cfg.runtime.namespace)
        .await?
        .with_lease_owner(setting.lease_owner());
    let runtime_version = containerd.version().await?;
    let root = resolve_root(cfg.runtime.root.as_deref(), &containerd).await;
    let disk = Arc::new(content_store_probe(&root, setting)?);
    tracing::info!(root = %root.path.display(), source = ?root.source, content_store = %disk.path().display(), "containerd content store for the disk floor");
    let snapshotter = resolve_snapshotter(cfg.runtime.snapshotter.as_deref(), &containerd).await?;
    tracing::info!(snapshotter, "CRI snapshotter warm images are unpacked in");
    let engine = Engine::new(
        registry,
        Arc::new(containerd.clone()),
        Arc::new(containerd.clone()),
        disk.clone(),
        cfg.pacing.clone(),
        observer,
    )
    .with_snapshotter(snapshotter.clone())
    .with_early_cri(version_overlaps_cri_well(&runtime_version));
    Ok(NodeStack {
        pin_supported: version_supports_pinning(&runtime_version),
        containerd,
        engine: Arc::new(engine),
        runtime_version,
        root,
        disk,
        snapshotter,
        credentials,
        workload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialProviderRef;
    use crate::node::fake::FakeRuntime;
    use crate::node::pace::DiskProbe;

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

    #[tokio::test]
    async fn root_is_configured_else_reported_else_default() {
        let rt = FakeRuntime::new("2.1.9");
        rt.lock().root_dir = Some("/mnt/containerd".into());
        let configured = resolve_root(Some(Path::new("/data/ctd")), &rt).await;
        assert_eq!(configured.path, Path::new("/data/ctd"));
        assert_eq!(configured.source, RootSource::Configured);
        let reported = resolve_root(None, &rt).await;
        assert_eq!(reported.path, Path::new("/mnt/containerd"));
        assert_eq!(reported.source, RootSource::Containerd);
        assert_eq!(
            reported.describe(),
            "containerd's root as containerd reports it"
        );
        rt.lock().root_dir = None;
        let default = resolve_root(None, &rt).await;
        assert_eq!(default.path, Path::new(DEFAULT_CONTAINERD_ROOT));
        assert_eq!(default.source, RootSource::Default);
        rt.lock().fail_status = true;
        assert_eq!(resolve_root(None, &rt).await, default);
    }

    /// containerd's word wins; a configured snapshotter that disagrees is
    /// refused by name; without a word the configured one, else overlayfs.
    #[tokio::test]
    async fn snapshotter_is_reported_else_configured_else_default() {
        let rt = FakeRuntime::new("1.7.24");
        rt.lock().snapshotter = Some("native".into());
        assert_eq!(resolve_snapshotter(None, &rt).await.unwrap(), "native");
        assert_eq!(
            resolve_snapshotter(Some("native"), &rt).await.unwrap(),
            "native"
        );
        let err = resolve_snapshotter(Some("overlayfs"), &rt)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime.snapshotter is \"overlayfs\", but containerd's CRI plugin unpacks images into \"native\"; remove runtime.snapshotter (prewarm asks containerd) or set it to \"native\""
        );
        rt.lock().snapshotter = None;
        assert_eq!(resolve_snapshotter(Some("zfs"), &rt).await.unwrap(), "zfs");
        assert_eq!(resolve_snapshotter(None, &rt).await.unwrap(), "overlayfs");
        rt.lock().fail_status = true;
        assert_eq!(resolve_snapshotter(None, &rt).await.unwrap(), "overlayfs");
    }

    /// The disk probe of a root that is not there names it, where it came
    /// from and the setting to change, for `prewarm pull` and the agent.
    #[tokio::test]
    async fn unreadable_root_errors_name_path_and_setting() {
        let rt = FakeRuntime::new("2.1.9");
        rt.lock().root_dir = Some("/nonexistent/containerd".into());
        let root = resolve_root(None, &rt).await;
        for (setting, want) in [
            (RootSetting::Flag, "--root"),
            (RootSetting::ConfigKey, "runtime.root in the agent config"),
        ] {
            let probe = StatvfsProbe::new(&root.path).described(root.describe(), setting.hint());
            let err = probe.usage().unwrap_err().to_string();
            assert!(
                err.starts_with("/nonexistent/containerd (containerd's root as containerd reports it): No such file or directory"),
                "{err}"
            );
            assert!(err.contains(want), "{err}");
        }
    }

    /// The probe is on the content store; a root without one (a directory
    /// that exists, as a mount's parents do in a pod) is refused with the
    /// path, the mount and the setting named, never measured.
    #[test]
    fn the_disk_floor_is_measured_on_the_content_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = ContainerdRoot {
            path: dir.path().to_path_buf(),
            source: RootSource::Containerd,
        };
        let content = dir.path().join(CONTENT_STORE_DIR);
        for (setting, want) in [
            (RootSetting::Flag, "--root"),
            (RootSetting::ConfigKey, "runtime.root in the agent config"),
        ] {
            let Err(err) = content_store_probe(&root, setting) else {
                panic!("a root without a content store was measured");
            };
            assert!(err.needs_mount());
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "containerd's content store {} (under containerd's root as containerd reports it) cannot be read here: No such file or directory",
                    content.display()
                )),
                "{msg}"
            );
            assert!(msg.contains("mount it") && msg.contains(want), "{msg}");
        }
        std::fs::write(&content, "").unwrap();
        let Err(err) = content_store_probe(&root, RootSetting::Flag) else {
            panic!("a file was taken for the content store");
        };
        assert!(err.to_string().contains("not a directory"), "{err}");
        std::fs::remove_file(&content).unwrap();
        std::fs::create_dir(&content).unwrap();
        let probe = content_store_probe(&root, RootSetting::ConfigKey).unwrap();
        assert_eq!(probe.path(), content);
        assert!(probe.usage().unwrap().total > 0);
    }
}
