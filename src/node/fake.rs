//! In-memory fakes of the runtime and registry boundaries, for unit tests of
//! the engine and the agent. The same behaviours are checked against the
//! real containerd and registry in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::config::reference::ImageRef;
use crate::node::auth::Credential;
use crate::node::leases::{self, LeaseInfo, LeaseResource};
use crate::node::manifest;
use crate::node::pace::{DiskProbe, DiskUsage};
use crate::node::registry::{sha256_hex, FetchedManifest, Registry, RegistryError};
use crate::node::runtime::{
    BlobWriter, ContentStore, CriImage, ImageRecord, ImageStore, LeaseId, Result, RuntimeError,
    CRI_PINNED_LABEL, CRI_PINNED_VALUE,
};

/// What CRI would resolve a name to: (top digest, config digest, blob digests).
pub type CatalogEntry = (String, String, Vec<String>);

#[derive(Default)]
pub struct FakeState {
    pub content: HashMap<String, Bytes>,
    pub ingests: HashMap<String, Vec<u8>>,
    pub leases: HashMap<String, Vec<String>>,
    /// Labels of the leases that have any.
    pub lease_labels: HashMap<String, BTreeMap<String, String>>,
    pub deleted_leases: Vec<String>,
    pub records: BTreeMap<String, ImageRecord>,
    pub cri_pulls: Vec<String>,
    /// Fail the next N CRI pulls with Unavailable (containerd restart).
    pub fail_cri_pulls: u32,
    /// Image references of the containers CRI lists.
    pub containers: Vec<String>,
    /// The root CRI status reports; `None`: it does not say.
    pub root_dir: Option<PathBuf>,
    /// Fail CRI status (a containerd without the CRI runtime service).
    pub fail_status: bool,
    /// The snapshotter CRI status reports (`None`: it does not say); CRI
    /// pulls unpack into it, `overlayfs` when it does not say.
    pub snapshotter: Option<String>,
    /// Image ids (config digests) → snapshotters they are unpacked in.
    pub unpacked: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Ingests with an open writer (their lock is held), by digest.
    pub writing: std::collections::BTreeSet<String>,
    /// Ingests another client (a kubelet's CRI pull) holds: writers get
    /// `Locked` until [`FakeRuntime::finish_held`].
    pub held: std::collections::BTreeSet<String>,
    /// Ingest refs writers were opened with, in order.
    pub ingest_refs: Vec<String>,
    /// Blobs present when each CRI pull was called, in call order: a pull
    /// that started before its download finished saw fewer than all.
    pub present_at_cri_pull: Vec<usize>,
}

/// A containerd stand-in: content store, leases, image records and a CRI
/// pull that "unpacks" by checking every referenced blob is present.
#[derive(Clone)]
pub struct FakeRuntime {
    pub state: Arc<Mutex<FakeState>>,
    pub version: String,
    /// Manifests CRI would resolve, by CRI name → (top digest, config digest, blobs).
    pub catalog: Arc<Mutex<HashMap<String, CatalogEntry>>>,
    /// Woken whenever an ingest is committed, aborted or released.
    pub changed: Arc<tokio::sync::Notify>,
}

impl FakeRuntime {
    pub fn new(version: &str) -> Self {
        Self {
            state: Arc::default(),
            version: version.to_string(),
            catalog: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Another client holds `digest`'s ingest until [`Self::finish_held`].
    pub fn hold(&self, digest: &str) {
        self.lock().held.insert(digest.to_string());
    }

    /// The other client commits `body` and releases its ingest.
    pub fn finish_held(&self, digest: &str, body: Bytes) {
        let mut st = self.lock();
        st.held.remove(digest);
        st.content.insert(digest.to_string(), body);
        drop(st);
        self.changed.notify_waiters();
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What containerd's fetcher does with a blob another client is
    /// writing: waits for it. The fake insists every other blob is present
    /// (the real CRI would fetch it itself, which prewarm must never leave
    /// to it).
    async fn wait_for_writers(&self, image: &str, blobs: &[String]) -> Result<()> {
        {
            let mut st = self.lock();
            let present = blobs.iter().filter(|b| st.content.contains_key(*b)).count();
            st.present_at_cri_pull.push(present);
        }
        loop {
            let changed = self.changed.notified();
            match self.blobs_ready(image, blobs) {
                Ok(true) => return Ok(()),
                Ok(false) => changed.await,
                Err(e) => return Err(e),
            }
        }
    }

    /// All present (true), some still being written (false), or one that
    /// nobody writes (an error).
    fn blobs_ready(&self, image: &str, blobs: &[String]) -> Result<bool> {
        let st = self.lock();
        let mut ready = true;
        for b in blobs.iter().filter(|b| !st.content.contains_key(*b)) {
            if !st.writing.contains(b) && !st.held.contains(b) {
                return Err(RuntimeError::CriPull {
                    image: image.to_string(),
                    message: format!("blob {b} was not prefetched"),
                    code: tonic::Code::Internal,
                });
            }
            ready = false;
        }
        Ok(ready)
    }

    fn pin_honoured(&self) -> bool {
        crate::node::runtime::version_supports_pinning(&self.version)
    }
}

struct FakeWriter {
    state: Arc<Mutex<FakeState>>,
    changed: Arc<tokio::sync::Notify>,
    digest: String,
    size: u64,
    buf: Vec<u8>,
}

impl Drop for FakeWriter {
    /// Closing the stream releases the ingest's lock, as containerd does.
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.writing.remove(&self.digest);
        drop(st);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl BlobWriter for FakeWriter {
    fn offset(&self) -> u64 {
        self.buf.len() as u64
    }
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Appended, not copied whole: large test blobs stay cheap.
        let ingest = st.ingests.entry(self.digest.clone()).or_default();
        ingest.truncate(self.buf.len() - data.len());
        ingest.extend_from_slice(&data);
        Ok(())
    }
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ingests.remove(&self.digest);
        if self.buf.len() as u64 != self.size || sha256_hex(&self.buf) != self.digest {
            return Err(RuntimeError::Verification {
                digest: self.digest.clone(),
                message: "unexpected commit digest".into(),
            });
        }
        let body = Bytes::from(std::mem::take(&mut self.buf));
        st.content.insert(self.digest.clone(), body);
        Ok(())
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ingests.remove(&self.digest);
        Ok(())
    }
}

#[async_trait]
impl ContentStore for FakeRuntime {
    async fn create_lease(&self, id: &str, _expires: SystemTime) -> Result<LeaseId> {
        let mut st = self.lock();
        st.leases.insert(id.to_string(), Vec::new());
        let labels = BTreeMap::from([
            (
                leases::OWNER_LABEL.to_string(),
                leases::OWNER_AGENT.to_string(),
            ),
            (
                leases::INSTANCE_LABEL.to_string(),
                leases::instance().to_string(),
            ),
        ]);
        st.lease_labels.insert(id.to_string(), labels);
        Ok(LeaseId(id.to_string()))
    }
    async fn delete_lease(&self, lease: &LeaseId) -> Result<()> {
        let mut st = self.lock();
        st.leases.remove(&lease.0);
        st.lease_labels.remove(&lease.0);
        st.deleted_leases.push(lease.0.clone());
        Ok(())
    }
    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let st = self.lock();
        Ok(st
            .leases
            .keys()
            .map(|id| LeaseInfo {
                id: id.clone(),
                labels: st.lease_labels.get(id).cloned().unwrap_or_default(),
            })
            .collect())
    }
    /// Digests of committed blobs are `content`; the rest are ingests,
    /// named as the real writer names them.
    async fn lease_resources(&self, lease: &LeaseId) -> Result<Vec<LeaseResource>> {
        let st = self.lock();
        let held = st.leases.get(&lease.0).cloned().unwrap_or_default();
        Ok(held
            .into_iter()
            .map(|d| match st.content.contains_key(&d) {
                true => LeaseResource {
                    id: d,
                    kind: "content".into(),
                },
                false => LeaseResource {
                    id: format!("prewarm-{d}"),
                    kind: "ingests".into(),
                },
            })
            .collect())
    }
    async fn add_lease_resource(&self, lease: &LeaseId, resource: &LeaseResource) -> Result<()> {
        let digest = resource.id.trim_start_matches("prewarm-").to_string();
        match self.lock().leases.get_mut(&lease.0) {
            Some(l) => {
                l.push(digest);
                Ok(())
            }
            None => Err(RuntimeError::rpc(
                "leases.AddResource",
                tonic::Status::not_found(lease.0.clone()),
            )),
        }
    }
    async fn lease_content(&self, lease: &LeaseId, digest: &str) -> Result<()> {
        if let Some(l) = self.lock().leases.get_mut(&lease.0) {
            l.push(digest.to_string());
        }
        Ok(())
    }
    async fn content_size(&self, digest: &str) -> Result<Option<u64>> {
        Ok(self.lock().content.get(digest).map(|b| b.len() as u64))
    }
    async fn writer(
        &self,
        lease: &LeaseId,
        digest: &str,
        media_type: &str,
        size: u64,
        _labels: BTreeMap<String, String>,
    ) -> Result<Box<dyn BlobWriter>> {
        let mut st = self.lock();
        if st.content.contains_key(digest) {
            return Err(RuntimeError::AlreadyExists {
                digest: digest.to_string(),
            });
        }
        if st.held.contains(digest) || st.writing.contains(digest) {
            return Err(RuntimeError::Locked {
                digest: digest.to_string(),
            });
        }
        st.writing.insert(digest.to_string());
        st.ingest_refs
            .push(manifest::ingest_ref(media_type, digest));
        if let Some(l) = st.leases.get_mut(&lease.0) {
            l.push(digest.to_string());
        }
        let buf = st.ingests.get(digest).cloned().unwrap_or_default();
        Ok(Box::new(FakeWriter {
            changed: self.changed.clone(),
            state: self.state.clone(),
            digest: digest.to_string(),
            size,
            buf,
        }))
    }
}

#[async_trait]
impl ImageStore for FakeRuntime {
    async fn version(&self) -> Result<String> {
        Ok(self.version.clone())
    }
    async fn root_dir(&self) -> Result<Option<PathBuf>> {
        let st = self.lock();
        if st.fail_status {
            let status = tonic::Status::unimplemented("runtime.v1.RuntimeService");
            return Err(RuntimeError::rpc("cri.Status", status));
        }
        Ok(st.root_dir.clone())
    }
    async fn snapshotter(&self) -> Result<Option<String>> {
        let st = self.lock();
        if st.fail_status {
            let status = tonic::Status::unimplemented("runtime.v1.RuntimeService");
            return Err(RuntimeError::rpc("cri.Status", status));
        }
        Ok(st.snapshotter.clone())
    }
    async fn unpacked(&self, image: &CriImage, snapshotter: &str) -> Result<bool> {
        let st = self.lock();
        Ok(st
            .unpacked
            .get(&image.id)
            .is_some_and(|s| s.contains(snapshotter)))
    }
    async fn image_status(&self, image: &str) -> Result<Option<CriImage>> {
        let st = self.lock();
        let Some(rec) = st.records.get(image) else {
            return Ok(None);
        };
        let target = rec.target_digest.clone();
        let mut out = CriImage::default();
        for r in st.records.values().filter(|r| r.target_digest == target) {
            if r.name.starts_with("sha256:") {
                out.id = r.name.clone();
            } else if r.name.contains('@') {
                out.repo_digests.push(r.name.clone());
            } else {
                out.repo_tags.push(r.name.clone());
            }
            out.pinned |= self.pin_honoured()
                && r.labels.get(CRI_PINNED_LABEL).map(String::as_str) == Some(CRI_PINNED_VALUE);
        }
        Ok(Some(out))
    }
    async fn pull_image(&self, image: &str, _c: &Credential, _t: Duration) -> Result<String> {
        let entry = self
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
            .cloned();
        {
            let mut st = self.lock();
            if st.fail_cri_pulls > 0 {
                st.fail_cri_pulls -= 1;
                return Err(RuntimeError::Unavailable {
                    socket: "fake".into(),
                    message: "restarting".into(),
                });
            }
            st.cri_pulls.push(image.to_string());
        }
        let Some((top, config, blobs)) = entry else {
            return Err(RuntimeError::CriPull {
                image: image.to_string(),
                message: "not found".into(),
                code: tonic::Code::NotFound,
            });
        };
        self.wait_for_writers(image, &blobs).await?;
        let mut st = self.lock();
        let name = image.split(['@']).next().unwrap_or(image);
        let name = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => n.to_string(),
            _ => name.to_string(),
        };
        let id = config.clone();
        let snapshotter = st.snapshotter.clone().unwrap_or_else(|| "overlayfs".into());
        st.unpacked
            .entry(id.clone())
            .or_default()
            .insert(snapshotter);
        for n in [image.to_string(), format!("{name}@{top}"), id.clone()] {
            st.records.entry(n.clone()).or_insert(ImageRecord {
                name: n,
                target_digest: top.clone(),
                labels: BTreeMap::new(),
            });
        }
        Ok(id)
    }
    async fn records_for(&self, image: &CriImage) -> Result<Vec<ImageRecord>> {
        let st = self.lock();
        Ok(image
            .repo_tags
            .iter()
            .chain(&image.repo_digests)
            .chain(std::iter::once(&image.id))
            .filter_map(|n| st.records.get(n).cloned())
            .collect())
    }
    async fn set_labels(&self, name: &str, labels: &[(&str, Option<&str>)]) -> Result<()> {
        let mut st = self.lock();
        let rec = st
            .records
            .get_mut(name)
            .ok_or_else(|| RuntimeError::rpc("images.Update", tonic::Status::not_found(name)))?;
        for (k, v) in labels {
            match v {
                Some(v) => rec.labels.insert(k.to_string(), v.to_string()),
                None => rec.labels.remove(*k),
            };
        }
        Ok(())
    }
    async fn records_with_label(&self, label: &str) -> Result<Vec<ImageRecord>> {
        Ok(self
            .lock()
            .records
            .values()
            .filter(|r| r.labels.contains_key(label))
            .cloned()
            .collect())
    }
    async fn container_images(&self) -> Result<Vec<String>> {
        Ok(self.lock().containers.clone())
    }
}

/// A registry holding manifests and blobs in memory, with scripted faults.
#[derive(Clone, Default)]
pub struct FakeRegistry {
    pub manifests: Arc<Mutex<HashMap<String, (String, Bytes)>>>,
    pub blobs: Arc<Mutex<HashMap<String, Bytes>>>,
    /// Per-digest queue of faults consumed by successive blob requests.
    pub faults: Arc<Mutex<HashMap<String, Vec<BlobFault>>>>,
    pub blob_bytes_served: Arc<Mutex<u64>>,
    pub blob_requests: Arc<Mutex<Vec<(String, u64)>>>,
}

#[derive(Debug, Clone)]
pub enum BlobFault {
    /// Cut the body after this many bytes.
    Truncate(usize),
    /// Answer with this HTTP status (and Retry-After seconds).
    Status(u16, Option<u64>),
    /// Send the first chunk, then hold the rest until the test calls
    /// `notify_one` (a download in flight).
    Gate(Arc<tokio::sync::Notify>),
}

impl FakeRegistry {
    /// Stores an image: manifest by `name:tag` and by digest; returns the digest.
    pub fn add_manifest(&self, name_ref: &str, media_type: &str, body: Bytes) -> String {
        let digest = sha256_hex(&body);
        let mut m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(name_ref.to_string(), (media_type.to_string(), body.clone()));
        let name = name_ref
            .rsplit_once(':')
            .map(|(n, _)| n)
            .unwrap_or(name_ref);
        m.insert(format!("{name}@{digest}"), (media_type.to_string(), body));
        digest
    }

    pub fn add_blob(&self, data: Bytes) -> String {
        let digest = sha256_hex(&data);
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), data);
        digest
    }

    pub fn fault(&self, digest: &str, f: BlobFault) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default()
            .push(f);
    }

    /// Stores a single-platform OCI image made of `layers`; returns the
    /// manifest digest, config digest and blob digests.
    pub fn add_image(&self, name_tag: &str, layers: &[Bytes]) -> (String, String, Vec<String>) {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"n":"{name_tag}"}}"#
        ));
        let cfg_digest = self.add_blob(config.clone());
        let mut layer_json = Vec::new();
        let mut blobs = vec![cfg_digest.clone()];
        for l in layers {
            let d = self.add_blob(l.clone());
            layer_json.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            blobs.push(d);
        }
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_digest}","size":{}}},"layers":[{}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layer_json.join(",")
        );
        let digest = self.add_manifest(name_tag, manifest::OCI_MANIFEST, Bytes::from(body));
        (digest, cfg_digest, blobs)
    }
}

#[async_trait]
impl Registry for FakeRegistry {
    async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> std::result::Result<FetchedManifest, RegistryError> {
        let sep = if reference.contains(':') { "@" } else { ":" };
        let key = format!("{}{sep}{reference}", image.name());
        let m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let (media_type, body) = m
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                registry: image.registry.clone(),
                what: format!("manifest {key}"),
            })?;
        Ok(FetchedManifest {
            digest: sha256_hex(&body),
            media_type,
            body,
        })
    }

    async fn head_digest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> std::result::Result<Option<String>, RegistryError> {
        self.manifest(image, reference)
            .await
            .map(|m| Some(m.digest))
    }

    async fn blob(
        &self,
        image: &ImageRef,
        digest: &str,
        offset: u64,
    ) -> std::result::Result<
        BoxStream<'static, std::result::Result<Bytes, RegistryError>>,
        RegistryError,
    > {
        self.blob_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((digest.to_string(), offset));
        let fault = {
            let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            f.get_mut(digest).and_then(|q| {
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            })
        };
        let data = self
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                registry: image.registry.clone(),
                what: format!("blob {digest}"),
            })?;
        let mut body = data.slice(offset as usize..);
        let mut tail_err = None;
        let mut gate = None;
        match fault {
            Some(BlobFault::Status(status, after)) => {
                return Err(RegistryError::Http {
                    url: format!("fake/{digest}"),
                    status,
                    retry_after: after.map(Duration::from_secs),
                })
            }
            Some(BlobFault::Truncate(n)) => {
                body = body.slice(..n.min(body.len()));
                tail_err = Some(RegistryError::Transport {
                    url: format!("fake/{digest}"),
                    message: "connection reset".into(),
                });
            }
            Some(BlobFault::Gate(g)) => gate = Some(g),
            None => {}
        }
        *self
            .blob_bytes_served
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += body.len() as u64;
        let chunks: Vec<std::result::Result<Bytes, RegistryError>> = body
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .chain(tail_err.map(Err))
            .collect();
        let Some(gate) = gate else {
            return Ok(futures::stream::iter(chunks).boxed());
        };
        let mut chunks = chunks.into_iter();
        let first: Vec<_> = chunks.next().into_iter().collect();
        let rest = futures::stream::once(async move {
            gate.notified().await;
            futures::stream::iter(chunks)
        })
        .flatten();
        Ok(futures::stream::iter(first).chain(rest).boxed())
    }

    fn credential(&self, _image: &ImageRef) -> Credential {
        Credential::Anonymous
    }
}

/// A disk with a settable free space.
pub struct FakeDisk(pub Mutex<DiskUsage>);

impl DiskProbe for FakeDisk {
    fn usage(&self) -> std::io::Result<DiskUsage> {
        Ok(*self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
