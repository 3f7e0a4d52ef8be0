//! The node's container runtime as the pull engine sees it: two small traits,
//! one for containerd's content store and leases, one for the CRI image
//! service plus image labels. `containerd.rs` implements both over the real
//! socket; `fake.rs` implements them in memory for unit tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::node::auth::Credential;
use crate::node::leases::{LeaseInfo, LeaseResource};

/// CRI label that kubelet image GC honours (containerd >= 1.7).
pub const CRI_PINNED_LABEL: &str = "io.cri-containerd.pinned";
pub const CRI_PINNED_VALUE: &str = "pinned";
/// Our own marker: set together with the CRI label so we only ever unpin
/// images that prewarm pinned.
pub const PREWARM_PINNED_LABEL: &str = "prewarm.dev/pinned";
/// Set with our pin when an intent asked for the image: until when (RFC
/// 3339, UTC) the pin outlives the intent. Read back after a restart.
pub const PREWARM_HOLD_LABEL: &str = "prewarm.dev/hold-until";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd socket {socket}: {message}")]
    Unavailable { socket: String, message: String },
    #[error("containerd {op}: {status}")]
    Rpc {
        op: &'static str,
        status: String,
        code: tonic::Code,
    },
    #[error("content {digest} already exists")]
    AlreadyExists { digest: String },
    /// Another client (a CRI pull, another agent process) is writing the
    /// same ingest right now.
    #[error("content {digest} is being written by another client")]
    Locked { digest: String },
    #[error("content {digest} failed verification: {message}")]
    Verification { digest: String, message: String },
    #[error("CRI PullImage {image}: {message}")]
    CriPull {
        image: String,
        message: String,
        code: tonic::Code,
    },
}

impl RuntimeError {
    /// Worth retrying: the runtime restarted or was briefly unreachable.
    pub fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Unavailable { .. } | RuntimeError::Locked { .. } => true,
            RuntimeError::Rpc { code, .. } | RuntimeError::CriPull { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
            ),
            _ => false,
        }
    }

    pub(crate) fn rpc(op: &'static str, status: tonic::Status) -> Self {
        RuntimeError::Rpc {
            op,
            code: status.code(),
            status: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A containerd lease id; content written under it survives GC until the
/// lease is deleted or expires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(pub String);

/// Progress of a partially written blob (resumable ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestStatus {
    pub offset: u64,
}

/// One open ingest; written in order, then committed against its digest.
#[async_trait]
pub trait BlobWriter: Send {
    /// Bytes already accepted (resume point).
    fn offset(&self) -> u64;
    async fn write(&mut self, data: Bytes) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Gives up: the partial blob is deleted (its space freed) at once.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// containerd's content store and lease manager.
#[async_trait]
pub trait ContentStore: Send + Sync {
    /// A lease labelled as prewarm's and this process's
    /// ([`crate::node::leases::instance`]).
    async fn create_lease(&self, id: &str, expires: SystemTime) -> Result<LeaseId>;
    async fn delete_lease(&self, lease: &LeaseId) -> Result<()>;
    /// Every lease in the namespace, with its labels.
    async fn leases(&self) -> Result<Vec<LeaseInfo>>;
    /// What `lease` protects.
    async fn lease_resources(&self, lease: &LeaseId) -> Result<Vec<LeaseResource>>;
    async fn add_lease_resource(&self, lease: &LeaseId, resource: &LeaseResource) -> Result<()>;
    /// Protects existing content with the lease.
    async fn lease_content(&self, lease: &LeaseId, digest: &str) -> Result<()>;
    /// Size of committed content, None if absent.
    async fn content_size(&self, digest: &str) -> Result<Option<u64>>;
    /// Opens (or resumes) an ingest of `digest` under `lease`, named as
    /// containerd's own fetcher names it for `media_type`.
    /// Errors with `AlreadyExists` when the blob is already committed, and
    /// with `Locked` while another client writes the same ingest.
    async fn writer(
        &self,
        lease: &LeaseId,
        digest: &str,
        media_type: &str,
        size: u64,
        labels: BTreeMap<String, String>,
    ) -> Result<Box<dyn BlobWriter>>;
}

/// What CRI reports about an image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CriImage {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

/// A containerd image record (one per name: tag, digest and id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRecord {
    pub name: String,
    pub target_digest: String,
    pub labels: BTreeMap<String, String>,
}

/// CRI ImageService plus containerd's image records (for pin labels).
#[async_trait]
pub trait ImageStore: Send + Sync {
    async fn version(&self) -> Result<String>;
    /// containerd's root directory as containerd itself reports it (CRI
    /// status); `None` when it does not say.
    async fn root_dir(&self) -> Result<Option<PathBuf>>;
    async fn image_status(&self, image: &str) -> Result<Option<CriImage>>;
    /// The snapshotter CRI unpacks images into, as containerd reports it
    /// (CRI status); `None` when it does not say.
    async fn snapshotter(&self) -> Result<Option<String>>;
    /// Whether `image` is unpacked in `snapshotter`: the snapshot of its top
    /// layer's chain exists there, so starting a container unpacks nothing.
    async fn unpacked(&self, image: &CriImage, snapshotter: &str) -> Result<bool>;
    /// CRI PullImage: resolves, unpacks for the CRI snapshotter and records
    /// the image exactly as the kubelet's pull would. Returns the image id.
    async fn pull_image(
        &self,
        image: &str,
        credential: &Credential,
        timeout: Duration,
    ) -> Result<String>;
    /// Image records whose name or target matches the CRI image.
    async fn records_for(&self, image: &CriImage) -> Result<Vec<ImageRecord>>;
    /// Sets (Some) or removes (None) labels on one image record.
    async fn set_labels(&self, name: &str, labels: &[(&str, Option<&str>)]) -> Result<()>;
    /// All image records carrying `label` (any value).
    async fn records_with_label(&self, label: &str) -> Result<Vec<ImageRecord>>;
    /// What every container CRI knows of (running or not) names its image
    /// by: the image reference it was created from and the image id.
    async fn container_images(&self) -> Result<Vec<String>>;
}

/// Whether CRI PullImage should start while prewarm still writes the
/// image's blobs (containerd >= 2.0). containerd 1.7's fetcher notices a
/// blob another client committed only on a randomised backoff of up to 2 s
/// per blob; measured over the emulated WAN link (benches/README.md), the
/// early start made 1.7 warms 1.6× slower, so there CRI starts once every
/// blob is in.
pub fn version_overlaps_cri_well(version: &str) -> bool {
    let v = version.trim_start_matches('v');
    let major: u32 = v
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    major >= 2
}

/// Whether the runtime honours the CRI pinned label (containerd >= 1.7).
pub fn version_supports_pinning(version: &str) -> bool {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    major > 1 || (major == 1 && minor >= 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_support_by_version() {
        assert!(!version_supports_pinning("1.6.20~ds1"));
        assert!(version_supports_pinning("1.7.24~ds1"));
        assert!(version_supports_pinning("v2.1.9+unknown"));
        assert!(!version_supports_pinning("garbage"));
    }

    #[test]
    fn early_cri_start_by_version() {
        assert!(!version_overlaps_cri_well("1.7.24~ds1"));
        assert!(version_overlaps_cri_well("v2.1.9+unknown"));
        assert!(version_overlaps_cri_well("2.0.0"));
        assert!(!version_overlaps_cri_well("garbage"));
    }

    #[test]
    fn transient_classification() {
        let e = RuntimeError::rpc("write", tonic::Status::unavailable("restart"));
        assert!(e.is_transient());
        let e = RuntimeError::rpc("write", tonic::Status::failed_precondition("digest"));
        assert!(!e.is_transient());
    }
}
