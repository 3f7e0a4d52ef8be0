//! The real runtime: containerd's content, lease and image services and the
//! CRI ImageService, all over the node's containerd socket.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::{
    content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::RemoveSnapshotRequest,
    snapshots::StatSnapshotRequest, version_client::VersionClient, AbortRequest,
    AddResourceRequest, CreateRequest, DeleteRequest, GetImageRequest, InfoRequest,
    ListImagesRequest, ListResourcesRequest, ListStatusesRequest, Resource, UpdateImageRequest,
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    AuthConfig, ImageSpec, ImageStatusRequest, ListContainersRequest, PullImageRequest,
    StatusRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use crate::node::auth::Credential;
use crate::node::leases::{self, LeaseInfo, LeaseResource};
use crate::node::runtime::{
    BlobWriter, ContentStore, CriImage, ImageRecord, ImageStore, LeaseId, Result, RuntimeError,
};

/// Writes are batched into chunks of this size before each round trip.
pub const WRITE_CHUNK: usize = 1 << 20;
/// Writes sent ahead of containerd's answers on one ingest.
const WRITES_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
    /// The `prewarm.dev/owner` of the leases this process creates.
    lease_owner: &'static str,
}

impl Containerd {
    /// Labels this process's leases as `owner`'s (`leases::OWNER_*`).
    pub fn with_lease_owner(mut self, owner: &'static str) -> Self {
        self.lease_owner = owner;
        self
    }

    /// Connects lazily: the socket may not exist yet (or containerd may be
    /// restarting); each call reports that as `Unavailable`.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        let unavailable = |message: String| RuntimeError::Unavailable {
            socket: socket.display().to_string(),
            message,
        };
        if !socket.exists() {
            return Err(unavailable("no such socket".into()));
        }
        let path = socket.to_path_buf();
        let channel = tonic::transport::Endpoint::try_from("http://[::]")
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        let this = Self {
            channel,
            namespace: namespace.to_string(),
            socket: socket.to_path_buf(),
            lease_owner: leases::OWNER_AGENT,
        };
        // Fail fast with a clear error when nothing listens there.
        this.version()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(this)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// CRI `Status` verbose info; `None` without a CRI runtime service.
    async fn cri_status_info(&self) -> Result<Option<std::collections::HashMap<String, String>>> {
        let mut client = RuntimeServiceClient::new(self.channel.clone());
        let req = Request::new(StatusRequest { verbose: true });
        match client.status(req).await {
            Ok(r) => Ok(Some(r.into_inner().info)),
            // No CRI runtime service here: it cannot say.
            Err(s) if s.code() == Code::Unimplemented => Ok(None),
            Err(s) => Err(self.map_err("cri.Status", s)),
        }
    }

    /// Removes the snapshot `key` from `snapshotter` (tests take an
    /// image's unpacked layers away with it).
    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let req = self.req(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        });
        client
            .remove(req)
            .await
            .map(|_| ())
            .map_err(|s| self.map_err("snapshots.Remove", s))
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    fn map_err(&self, op: &'static str, status: tonic::Status) -> RuntimeError {
        if status.code() == Code::Unavailable {
            return RuntimeError::Unavailable {
                socket: self.socket.display().to_string(),
                message: format!("{op}: {}", status.message()),
            };
        }
        RuntimeError::rpc(op, status)
    }

    /// Whether `snapshotter` holds a committed snapshot named `key`
    /// (for unpacked layers the key is the layer chain id).
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let req = self.req(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        });
        match client.stat(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.map_err("snapshots.Stat", s)),
        }
    }

    /// Ids of every lease in the namespace (tests assert none leak).
    pub async fn lease_ids(&self) -> Result<Vec<String>> {
        let leases = ContentStore::leases(self).await?;
        Ok(leases.into_iter().map(|l| l.id).collect())
    }

    /// Ingests in progress as (ref, bytes written so far) (tests wait on
    /// and assert these).
    pub async fn ingests(&self) -> Result<Vec<(String, u64)>> {
        let mut client = ContentClient::new(self.channel.clone());
        let resp = client
            .list_statuses(self.req(ListStatusesRequest { filters: vec![] }))
            .await
            .map_err(|s| self.map_err("content.ListStatuses", s))?;
        Ok(resp
            .into_inner()
            .statuses
            .into_iter()
            .map(|s| (s.r#ref, s.offset.max(0) as u64))
            .collect())
    }

    /// Names of every image record in the namespace.
    pub async fn image_names(&self) -> Result<Vec<String>> {
        let mut client = ImagesClient::new(self.channel.clone());
        let resp = client
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| self.map_err("images.List", s))?;
        Ok(resp
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.name)
            .collect())
    }

    /// Labels of a committed blob (e.g. `containerd.io/gc.ref.snapshot.*`).
    pub async fn content_labels(&self, digest: &str) -> Result<Option<BTreeMap<String, String>>> {
        let mut client = ContentClient::new(self.channel.clone());
        match client
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info.map(|i| i.labels.into_iter().collect())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.map_err("content.Info", s)),
        }
    }

    fn cri(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(16 << 20)
    }
}

#[async_trait]
impl ContentStore for Containerd {
    async fn create_lease(&self, id: &str, expires: SystemTime) -> Result<LeaseId> {
        let mut client = LeasesClient::new(self.channel.clone());
        let expire = humantime::format_rfc3339_seconds(expires).to_string();
        let mut labels = std::collections::HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), expire);
        labels.insert(
            leases::OWNER_LABEL.to_string(),
            self.lease_owner.to_string(),
        );
        labels.insert(
            leases::INSTANCE_LABEL.to_string(),
            leases::instance().to_string(),
        );
        let req = self.req(CreateRequest {
            id: id.to_string(),
            labels,
        });
        client
            .create(req)
            .await
            .map_err(|s| self.map_err("leases.Create", s))?;
        Ok(LeaseId(id.to_string()))
    }

    async fn delete_lease(&self, lease: &LeaseId) -> Result<()> {
        let mut client = LeasesClient::new(self.channel.clone());
        let req = self.req(DeleteRequest {
            id: lease.0.clone(),
            sync: false,
        });
        match client.delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.map_err("leases.Delete", s)),
        }
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let mut client = LeasesClient::new(self.channel.clone());
        let resp = client
            .list(self.req(containerd_client::services::v1::ListRequest { filters: vec![] }))
            .await
            .map_err(|s| self.map_err("leases.List", s))?;
        Ok(resp
            .into_inner()
            .leases
            .into_iter()
            .map(|l| LeaseInfo {
                id: l.id,
                labels: l.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn lease_resources(&self, lease: &LeaseId) -> Result<Vec<LeaseResource>> {
        let mut client = LeasesClient::new(self.channel.clone());
        let req = self.req(ListResourcesRequest {
            id: lease.0.clone(),
        });
        match client.list_resources(req).await {
            Ok(r) => Ok(r
                .into_inner()
                .resources
                .into_iter()
                .map(|r| LeaseResource {
                    id: r.id,
                    kind: r.r#type,
                })
                .collect()),
            Err(s) if s.code() == Code::NotFound => Ok(Vec::new()),
            Err(s) => Err(self.map_err("leases.ListResources", s)),
        }
    }

    async fn add_lease_resource(&self, lease: &LeaseId, resource: &LeaseResource) -> Result<()> {
        let mut client = LeasesClient::new(self.channel.clone());
        let req = self.req(AddResourceRequest {
            id: lease.0.clone(),
            resource: Some(Resource {
                id: resource.id.clone(),
                r#type: resource.kind.clone(),
            }),
        });
        client
            .add_resource(req)
            .await
            .map_err(|s| self.map_err("leases.AddResource", s))?;
        Ok(())
    }

    async fn lease_content(&self, lease: &LeaseId, digest: &str) -> Result<()> {
        let mut client = LeasesClient::new(self.channel.clone());
        let req = self.req(AddResourceRequest {
            id: lease.0.clone(),
            resource: Some(Resource {
                id: digest.to_string(),
                r#type: "content".to_string(),
            }),
        });
        client
            .add_resource(req)
            .await
            .map_err(|s| self.map_err("leases.AddResource", s))?;
        Ok(())
    }

    async fn content_size(&self, digest: &str) -> Result<Option<u64>> {
        let mut client = ContentClient::new(self.channel.clone());
        match client
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info.map(|i| i.size.max(0) as u64)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.map_err("content.Info", s)),
        }
    }

    async fn writer(
        &self,
        lease: &LeaseId,
        digest: &str,
        media_type: &str,
        size: u64,
        labels: BTreeMap<String, String>,
    ) -> Result<Box<dyn BlobWriter>> {
        let mut client = ContentClient::new(self.channel.clone());
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(WRITES_IN_FLIGHT);
        let mut req = self.req(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Ok(l) = lease.0.parse() {
            req.metadata_mut().insert("containerd-lease", l);
        }
        // containerd's own ref for the blob: an interrupted write can be
        // resumed, and a CRI pull of the same blob waits for this one.
        let ingest_ref = crate::node::manifest::ingest_ref(media_type, digest);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest_ref.clone(),
            total: size as i64,
            expected: digest.to_string(),
            ..Default::default()
        };
        tx.send(stat).await.map_err(|_| self.closed(digest))?;
        let mut responses = match client.write(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.write_err(digest, s)),
        };
        let first = next_response(&mut responses)
            .await
            .map_err(|s| self.write_err(digest, s))?;
        let offset = first.offset.max(0) as u64;
        Ok(Box::new(ContainerdWriter {
            owner: self.clone(),
            tx,
            responses,
            ingest_ref,
            digest: digest.to_string(),
            size,
            offset,
            sent: offset,
            in_flight: VecDeque::new(),
            buffer: Vec::new(),
            labels,
        }))
    }
}

impl Containerd {
    fn closed(&self, digest: &str) -> RuntimeError {
        RuntimeError::Unavailable {
            socket: self.socket.display().to_string(),
            message: format!("write stream for {digest} closed"),
        }
    }

    fn write_err(&self, digest: &str, s: tonic::Status) -> RuntimeError {
        match s.code() {
            Code::AlreadyExists => RuntimeError::AlreadyExists {
                digest: digest.to_string(),
            },
            Code::FailedPrecondition | Code::InvalidArgument => RuntimeError::Verification {
                digest: digest.to_string(),
                message: s.message().to_string(),
            },
            // "ref k8s.io/1/layer-sha256:… locked for 2s (since …)"
            Code::Unavailable if s.message().contains(" locked") => RuntimeError::Locked {
                digest: digest.to_string(),
            },
            _ => self.map_err("content.Write", s),
        }
    }
}

async fn next_response(
    responses: &mut Streaming<WriteContentResponse>,
) -> std::result::Result<WriteContentResponse, tonic::Status> {
    match responses.message().await? {
        Some(r) => Ok(r),
        None => Err(tonic::Status::unavailable("write stream ended")),
    }
}

struct ContainerdWriter {
    owner: Containerd,
    tx: mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
    ingest_ref: String,
    digest: String,
    size: u64,
    /// Bytes containerd has confirmed.
    offset: u64,
    /// Bytes sent, confirmed or not.
    sent: u64,
    /// Offsets containerd should answer with, oldest first.
    in_flight: VecDeque<u64>,
    /// Filled up to `WRITE_CHUNK`, then moved into the request as is.
    buffer: Vec<u8>,
    labels: BTreeMap<String, String>,
}

impl ContainerdWriter {
    async fn send(&mut self, req: WriteContentRequest) -> Result<()> {
        let digest = self.digest.clone();
        self.tx
            .send(req)
            .await
            .map_err(|_| self.owner.closed(&digest))
    }

    async fn response(&mut self) -> Result<WriteContentResponse> {
        let digest = self.digest.clone();
        next_response(&mut self.responses)
            .await
            .map_err(|s| self.owner.write_err(&digest, s))
    }

    /// Waits for the oldest unanswered write and checks containerd's offset.
    async fn confirm_one(&mut self) -> Result<()> {
        let Some(expected) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let resp = self.response().await?;
        if resp.offset.max(0) as u64 != expected {
            return Err(RuntimeError::Verification {
                digest: self.digest.clone(),
                message: format!(
                    "containerd is at offset {}, expected {expected}",
                    resp.offset
                ),
            });
        }
        self.offset = expected;
        Ok(())
    }

    /// Sends the buffer without waiting for its answer: up to
    /// `WRITES_IN_FLIGHT` writes overlap containerd's hashing and disk writes.
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= WRITES_IN_FLIGHT {
            self.confirm_one().await?;
        }
        let data = std::mem::take(&mut self.buffer);
        let len = data.len() as u64;
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.ingest_ref.clone(),
            total: self.size as i64,
            expected: self.digest.clone(),
            offset: self.sent as i64,
            data,
            ..Default::default()
        };
        self.send(req).await?;
        self.sent += len;
        self.in_flight.push_back(self.sent);
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for ContainerdWriter {
    fn offset(&self) -> u64 {
        self.sent + self.buffer.len() as u64
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        if self.buffer.capacity() == 0 {
            // One allocation per chunk, not a doubling series of them.
            self.buffer.reserve_exact(WRITE_CHUNK + data.len());
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let ContainerdWriter {
            owner,
            tx,
            responses,
            ingest_ref,
            ..
        } = *self;
        // End the write stream first so containerd closes its side.
        drop((tx, responses));
        let mut client = ContentClient::new(owner.channel.clone());
        match client
            .abort(owner.req(AbortRequest {
                r#ref: ingest_ref.clone(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(owner.map_err("content.Abort", s)),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        while !self.in_flight.is_empty() {
            self.confirm_one().await?;
        }
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.ingest_ref.clone(),
            total: self.size as i64,
            expected: self.digest.clone(),
            offset: self.offset as i64,
            labels: std::mem::take(&mut self.labels).into_iter().collect(),
            ..Default::default()
        };
        self.send(req).await?;
        match self.response().await {
            Ok(_) => Ok(()),
            // Someone else committed the same blob meanwhile: that is success.
            Err(RuntimeError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn auth_config(credential: &Credential) -> Option<AuthConfig> {
    match credential {
        Credential::Anonymous => None,
        Credential::Basic { username, password } => Some(AuthConfig {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        }),
        Credential::IdentityToken(token) => Some(AuthConfig {
            identity_token: token.clone(),
            ..Default::default()
        }),
    }
}

#[async_trait]
impl ImageStore for Containerd {
    async fn version(&self) -> Result<String> {
        let mut client = VersionClient::new(self.channel.clone());
        let resp = client
            .version(Request::new(()))
            .await
            .map_err(|s| self.map_err("version", s))?;
        Ok(resp.into_inner().version)
    }

    async fn root_dir(&self) -> Result<Option<PathBuf>> {
        Ok(self
            .cri_status_info()
            .await?
            .and_then(|info| root_from_status_info(&info)))
    }

    async fn snapshotter(&self) -> Result<Option<String>> {
        Ok(self
            .cri_status_info()
            .await?
            .and_then(|info| snapshotter_from_status_info(&info)))
    }

    async fn unpacked(&self, image: &CriImage, snapshotter: &str) -> Result<bool> {
        let req = Request::new(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.id.clone(),
                ..Default::default()
            }),
            verbose: true,
        });
        let resp = self
            .cri()
            .image_status(req)
            .await
            .map_err(|s| self.map_err("cri.ImageStatus", s))?
            .into_inner();
        if resp.image.is_none() {
            return Ok(false);
        }
        match chain_from_image_info(&resp.info) {
            Some(chain) => self.snapshot_exists(snapshotter, &chain).await,
            // CRI does not say which snapshot: take its record as unpacked.
            None => Ok(true),
        }
    }

    async fn image_status(&self, image: &str) -> Result<Option<CriImage>> {
        let req = Request::new(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        });
        let resp = self
            .cri()
            .image_status(req)
            .await
            .map_err(|s| self.map_err("cri.ImageStatus", s))?;
        Ok(resp.into_inner().image.map(|i| CriImage {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
            size: i.size,
            pinned: i.pinned,
        }))
    }

    async fn pull_image(
        &self,
        image: &str,
        credential: &Credential,
        timeout: Duration,
    ) -> Result<String> {
        let mut req = Request::new(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: auth_config(credential),
            sandbox_config: None,
        });
        req.set_timeout(timeout);
        match self.cri().pull_image(req).await {
            Ok(r) => Ok(r.into_inner().image_ref),
            Err(s) if s.code() == Code::Unavailable => Err(self.map_err("cri.PullImage", s)),
            Err(s) => Err(RuntimeError::CriPull {
                image: image.to_string(),
                message: s.message().to_string(),
                code: s.code(),
            }),
        }
    }

    async fn records_for(&self, image: &CriImage) -> Result<Vec<ImageRecord>> {
        let mut names: Vec<String> = image.repo_tags.clone();
        names.extend(image.repo_digests.iter().cloned());
        names.push(image.id.clone());
        let mut client = ImagesClient::new(self.channel.clone());
        let mut out = Vec::new();
        for name in names {
            match client
                .get(self.req(GetImageRequest { name: name.clone() }))
                .await
            {
                Ok(r) => {
                    if let Some(img) = r.into_inner().image {
                        out.push(to_record(img));
                    }
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(self.map_err("images.Get", s)),
            }
        }
        Ok(out)
    }

    async fn set_labels(&self, name: &str, labels: &[(&str, Option<&str>)]) -> Result<()> {
        let mut client = ImagesClient::new(self.channel.clone());
        let current = client
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
            .map_err(|s| self.map_err("images.Get", s))?
            .into_inner()
            .image
            .ok_or_else(|| RuntimeError::rpc("images.Get", tonic::Status::not_found(name)))?;
        let mut image = current;
        let mut paths = Vec::new();
        for (key, value) in labels {
            paths.push(format!("labels.{key}"));
            match value {
                Some(v) => {
                    image.labels.insert(key.to_string(), v.to_string());
                }
                None => {
                    image.labels.remove(*key);
                }
            }
        }
        let req = self.req(UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
            source_date_epoch: None,
        });
        client
            .update(req)
            .await
            .map_err(|s| self.map_err("images.Update", s))?;
        Ok(())
    }

    async fn records_with_label(&self, label: &str) -> Result<Vec<ImageRecord>> {
        let mut client = ImagesClient::new(self.channel.clone());
        let req = self.req(ListImagesRequest {
            filters: vec![format!("labels.\"{label}\"")],
        });
        let resp = client
            .list(req)
            .await
            .map_err(|s| self.map_err("images.List", s))?;
        Ok(resp
            .into_inner()
            .images
            .into_iter()
            .map(to_record)
            .collect())
    }

    /// CRI ListContainers: every container of every pod, in any state (what
    /// the kubelet's image GC counts as in use).
    async fn container_images(&self) -> Result<Vec<String>> {
        let mut client =
            RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(16 << 20);
        let resp = client
            .list_containers(Request::new(ListContainersRequest { filter: None }))
            .await
            .map_err(|s| self.map_err("cri.ListContainers", s))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .flat_map(|c| {
                let spec = c.image.unwrap_or_default();
                [c.image_ref, spec.image, spec.user_specified_image]
            })
            .filter(|n| !n.is_empty())
            .collect())
    }
}

/// containerd's root from CRI `Status` verbose info: its `config` entry is
/// the CRI plugin's config as JSON, with `containerdRootDir` on containerd
/// 1.7 and 2.x. Falls back to the plugin's own `rootDir`, which lives under
/// containerd's root.
pub fn root_from_status_info(info: &std::collections::HashMap<String, String>) -> Option<PathBuf> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    ["containerdRootDir", "rootDir"]
        .iter()
        .filter_map(|key| config.get(key)?.as_str())
        .find(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// The snapshotter CRI unpacks into, from CRI `Status` verbose info: the CRI
/// plugin's config names it as `containerd.snapshotter` on containerd 1.7.
/// containerd 2.x (checked on 2.1.9) reports only the runtime half of its
/// CRI config there, without the images plugin's snapshotter.
pub fn snapshotter_from_status_info(
    info: &std::collections::HashMap<String, String>,
) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    let name = config.get("containerd")?.get("snapshotter")?.as_str()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The top layer's chain id from CRI `ImageStatus` verbose info (`chainID`
/// in its `info` entry), which names the image's unpacked snapshot.
pub fn chain_from_image_info(info: &std::collections::HashMap<String, String>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    let chain = v.get("chainID")?.as_str()?;
    (!chain.is_empty()).then(|| chain.to_string())
}

fn to_record(img: containerd_client::services::v1::Image) -> ImageRecord {
    ImageRecord {
        name: img.name,
        target_digest: img.target.map(|t| t.digest).unwrap_or_default(),
        labels: img.labels.into_iter().collect(),
    }
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
