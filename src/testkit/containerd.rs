//! Throwaway real containerd instances (1.7 or 2.x) for tests, benches and
//! the demo: each has its own root, state dir, socket and registry hosts
//! dir, with CRI's ImageService on the same socket. Needs root.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// containerd 1.7 (Debian trixie), config version 2.
    V17,
    /// containerd 2.x (Debian sid), config version 3.
    V2,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V17 => "1.7",
            Version::V2 => "2.x",
        }
    }

    /// The binary: `$PREWARM_CONTAINERD_17` / `$PREWARM_CONTAINERD_2`, else
    /// the copy `scripts/setup.sh` unpacked under `.tools/`.
    pub fn binary(self) -> PathBuf {
        let (var, suite) = match self {
            Version::V17 => ("PREWARM_CONTAINERD_17", "trixie"),
            Version::V2 => ("PREWARM_CONTAINERD_2", "sid"),
        };
        if let Ok(p) = std::env::var(var) {
            return PathBuf::from(p);
        }
        let tools = std::env::var("PREWARM_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
        tools.join(format!("containerd-{suite}/usr/bin/containerd"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd binary {0} not found: run scripts/setup.sh")]
    Missing(PathBuf),
    #[error("containerd: {0}")]
    Io(#[from] std::io::Error),
    #[error("containerd did not come up within 20s; log tail:\n{0}")]
    Timeout(String),
}

pub struct TestContainerd {
    pub version: Version,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub hosts_dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestContainerd {
    /// Starts an instance in a fresh temp dir.
    pub async fn start(version: Version) -> Result<Self, ContainerdError> {
        Self::start_with_snapshotter(version, "overlayfs").await
    }

    /// Starts an instance whose CRI plugin unpacks into `snapshotter`.
    pub async fn start_with_snapshotter(
        version: Version,
        snapshotter: &str,
    ) -> Result<Self, ContainerdError> {
        // Under /var/tmp: overlayfs cannot stack on a tmpfs-backed /tmp everywhere.
        let base = Path::new("/var/tmp");
        let tmp = tempfile::Builder::new()
            .prefix("prewarm-ctd-")
            .tempdir_in(if base.exists() {
                base
            } else {
                Path::new("/tmp")
            })?;
        let dir = tmp.path().to_path_buf();
        let mut this = Self::start_in_with(version, &dir, snapshotter).await?;
        this._tmp = Some(tmp);
        Ok(this)
    }

    /// Starts an instance whose files live in `dir` (kept afterwards).
    pub async fn start_in(version: Version, dir: &Path) -> Result<Self, ContainerdError> {
        Self::start_in_with(version, dir, "overlayfs").await
    }

    async fn start_in_with(
        version: Version,
        dir: &Path,
        snapshotter: &str,
    ) -> Result<Self, ContainerdError> {
        let bin = version.binary();
        if !bin.exists() {
            return Err(ContainerdError::Missing(bin));
        }
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let root = dir.join("root");
        // containerd makes its content store on the first write; a node's
        // has long existed (the kubelet pulled the agent's own image), and
        // the disk floor is measured on it.
        std::fs::create_dir_all(root.join(crate::node::setup::CONTENT_STORE_DIR))?;
        let hosts_dir = dir.join("certs.d");
        std::fs::create_dir_all(&hosts_dir)?;
        std::fs::write(dir.join("config.toml"), config(version, dir, snapshotter))?;
        let mut this = Self {
            version,
            dir: dir.to_path_buf(),
            socket,
            root,
            hosts_dir,
            child: None,
            _tmp: None,
        };
        this.spawn().await?;
        Ok(this)
    }

    async fn spawn(&mut self) -> Result<(), ContainerdError> {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let child = Command::new(self.version.binary())
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if self.socket.exists() && tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ContainerdError::Timeout(self.log_tail()))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the daemon (SIGKILL: as abrupt as a crash).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn restart(&mut self) -> Result<(), ContainerdError> {
        self.stop().await;
        self.spawn().await
    }

    /// Restarts with debug logging, so a test can see what containerd's own
    /// pulls do (e.g. its fetcher's `fetch` line per blob).
    pub async fn restart_with_debug_log(&mut self) -> Result<(), ContainerdError> {
        let path = self.dir.join("config.toml");
        let mut config = std::fs::read_to_string(&path)?;
        config.push_str("\n[debug]\n  level = \"debug\"\n");
        std::fs::write(&path, config)?;
        self.restart().await
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Points containerd (and prewarm) at a mirror for `host` via hosts.toml.
    pub fn add_mirror(&self, host: &str, mirror_url: &str) -> std::io::Result<()> {
        let d = self.hosts_dir.join(host);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn config(version: Version, dir: &Path, snapshotter: &str) -> String {
    let d = dir.display();
    // 2.x pulls through the transfer service, which unpacks only for the
    // platform/snapshotter pairs it lists (by default overlayfs alone).
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let unpack = match snapshotter {
        "overlayfs" => String::new(),
        other => format!(
            "[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux/{arch}\"\n  snapshotter = \"{other}\"\n"
        ),
    };
    match version {
        Version::V17 => format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
        ),
        Version::V2 => format!(
            r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{d}/cni/bin"]
  conf_dir = "{d}/cni/conf"
[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{d}/nri.sock"
  plugin_path = "{d}/nri/plugins"
  plugin_config_path = "{d}/nri/conf.d"
{unpack}"#
        ),
    }
}
