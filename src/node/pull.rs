//! The warm engine. Phase 1 fetches every missing blob itself (parallel,
//! paced, resumable) into containerd's content store under a lease. Phase 2
//! asks CRI PullImage on the same socket, which finds all content present and
//! only resolves, unpacks and records the image exactly as a kubelet pull.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::reference::ImageRef;
use crate::config::{Pacing, Platform};
use crate::node::leases::Leftovers;
use crate::node::manifest::{self, Descriptor, ManifestError, Parsed};
use crate::node::pace::{disk_check, Bandwidth, Budget, DiskProbe, DiskRefusal};
use crate::node::pin;
use crate::node::registry::{FetchedManifest, Registry, RegistryError};
use crate::node::retry::{retry, Backoff, Transient};
use crate::node::runtime::{ContentStore, ImageStore, LeaseId, RuntimeError};
use crate::node::slots::{PrioritySlots, SlotKey};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{image}: {source}")]
    Registry {
        image: String,
        source: RegistryError,
    },
    #[error("{image}: {source}")]
    Runtime { image: String, source: RuntimeError },
    #[error("{image}: {source}")]
    Manifest {
        image: String,
        source: ManifestError,
    },
    #[error("{image}: {source}")]
    Disk { image: String, source: DiskRefusal },
    #[error("{image}: cannot read free disk space: {message}")]
    DiskProbe { image: String, message: String },
    #[error("{image}: blob {digest} ended after {got} of {expected} bytes")]
    Truncated {
        image: String,
        digest: String,
        got: u64,
        expected: u64,
    },
    #[error("{image}: cancelled")]
    Cancelled { image: String },
}

impl PullError {
    /// Short, stable reason for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::Registry { source, .. } => source.reason(),
            PullError::Runtime { source, .. } => match source {
                RuntimeError::Unavailable { .. } => "runtime_unavailable",
                RuntimeError::Verification { .. } => "digest_mismatch",
                RuntimeError::CriPull { .. } => "cri_pull",
                _ => "runtime",
            },
            PullError::Manifest { .. } => "manifest",
            PullError::Disk { .. } | PullError::DiskProbe { .. } => "disk_floor",
            PullError::Truncated { .. } => "truncated",
            PullError::Cancelled { .. } => "cancelled",
        }
    }
}

impl Transient for PullError {
    fn is_transient(&self) -> bool {
        match self {
            PullError::Registry { source, .. } => source.is_transient(),
            PullError::Runtime { source, .. } => source.is_transient(),
            PullError::Truncated { .. } => true,
            _ => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            PullError::Registry { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

/// Receives progress; the CLI draws bars, the agent feeds metrics and logs.
pub trait PullObserver: Send + Sync {
    fn resolved(&self, _image: &str, _total: u64, _missing: u64) {}
    fn bytes(&self, _image: &str, _n: u64) {}
    fn finished(&self, _image: &str, _result: &Result<PullOutcome, PullError>) {}
}

/// Bytes written between re-checks of the disk floor during a download
/// (one statvfs each).
const DISK_RECHECK: u64 = 4 << 20;

/// How long a CRI PullImage started early may wait for our downloads.
const CRI_WAIT_CEILING: Duration = Duration::from_secs(24 * 3600);

#[path = "pull_fetch.rs"]
mod fetch;
use fetch::{BlobJob, Claim, Stage};

pub struct NoopObserver;
impl PullObserver for NoopObserver {}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub pin: bool,
    pub platform: Platform,
    /// Budget for CRI PullImage (resolve + unpack) per attempt.
    pub cri_timeout: Duration,
    /// Higher pulls first when download slots are scarce (late windows).
    pub priority: i64,
    /// The window whose `pacing.bandwidth` this pull counts against: a
    /// budget shared by all of that window's pulls, inside the node's.
    pub bandwidth: Option<WindowBandwidth>,
}

/// A window's own bytes/s budget (0: no cap beyond the node's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowBandwidth {
    pub window: String,
    pub bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    pub image: String,
    /// Digest of what the reference resolved to (index or manifest).
    pub digest: String,
    pub image_id: String,
    /// Compressed bytes of the platform's manifest, config and layers.
    pub total_bytes: u64,
    /// Bytes this pull moved from the registry.
    pub fetched_bytes: u64,
    /// True when CRI already had this exact image: nothing was fetched.
    pub already_present: bool,
    /// Pinned (by us or someone else) and honoured by the runtime.
    pub pinned: bool,
    pub duration: Duration,
}

pub struct Engine {
    registry: Arc<dyn Registry>,
    content: Arc<dyn ContentStore>,
    images: Arc<dyn ImageStore>,
    disk: Arc<dyn DiskProbe>,
    pacing: Pacing,
    bandwidth: Arc<Bandwidth>,
    /// One budget per window, shared by its pulls; nested in `bandwidth`.
    window_budgets: Mutex<HashMap<String, Arc<Bandwidth>>>,
    pulls: PrioritySlots,
    /// Node-wide download slots, granted to the highest-priority, earliest
    /// started image first: it finishes downloading and unpacks while later
    /// images are still downloading.
    blob_slots: PrioritySlots,
    /// Start order of pulls, the tie-breaker after priority.
    started: std::sync::atomic::AtomicU64,
    blob_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    observer: Arc<dyn PullObserver>,
    /// What a previous agent process left, released once pulls settle.
    leftovers: Leftovers,
    /// The snapshotter CRI unpacks into; unset, asked from CRI each time.
    snapshotter: Option<String>,
    /// Start CRI PullImage while blobs still download (see
    /// [`crate::node::runtime::version_overlaps_cri_well`]).
    early_cri: bool,
}

impl Engine {
    pub fn new(
        registry: Arc<dyn Registry>,
        content: Arc<dyn ContentStore>,
        images: Arc<dyn ImageStore>,
        disk: Arc<dyn DiskProbe>,
        pacing: Pacing,
        observer: Arc<dyn PullObserver>,
    ) -> Self {
        Self {
            bandwidth: Arc::new(Bandwidth::new(pacing.bandwidth.0)),
            window_budgets: Mutex::new(HashMap::new()),
            pulls: PrioritySlots::new(pacing.max_concurrent_pulls.max(1)),
            blob_slots: PrioritySlots::new(pacing.max_concurrent_blobs.max(1)),
            started: std::sync::atomic::AtomicU64::new(0),
            registry,
            content,
            images,
            disk,
            pacing,
            blob_locks: Mutex::new(HashMap::new()),
            observer,
            leftovers: Leftovers::default(),
            snapshotter: None,
            early_cri: true,
        }
    }

    /// Whether CRI PullImage starts before the last blob is in.
    pub fn with_early_cri(mut self, early: bool) -> Self {
        self.early_cri = early;
        self
    }

    /// Checks warm images against `snapshotter` (the one CRI unpacks into).
    pub fn with_snapshotter(mut self, snapshotter: String) -> Self {
        self.snapshotter = Some(snapshotter);
        self
    }

    /// The snapshotter CRI unpacks into: as set, else as CRI reports it,
    /// else containerd's default.
    async fn cri_snapshotter(&self) -> String {
        if let Some(s) = &self.snapshotter {
            return s.clone();
        }
        match self.images.snapshotter().await {
            Ok(Some(s)) => s,
            _ => crate::config::DEFAULT_SNAPSHOTTER.to_string(),
        }
    }

    pub fn leftovers(&self) -> &Leftovers {
        &self.leftovers
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(&self.pacing.retry)
    }

    /// Warms one image; waits for a pull slot first.
    pub async fn warm(
        &self,
        image: &ImageRef,
        opts: &PullOptions,
        cancel: &CancellationToken,
    ) -> Result<PullOutcome, PullError> {
        let name = image.to_string();
        // Pull slots and download slots both go by priority, then start order.
        let key: SlotKey = (
            -opts.priority,
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let busy = self.leftovers.enter();
        let _slot = tokio::select! {
            slot = self.pulls.acquire(key) => slot,
            _ = cancel.cancelled() => return Err(PullError::Cancelled { image: name }),
        };
        let result = self.warm_inner(image, opts, key, cancel).await;
        self.leftovers.leave(busy, self.content.as_ref()).await;
        self.observer.finished(&name, &result);
        result
    }

    async fn warm_inner(
        &self,
        image: &ImageRef,
        opts: &PullOptions,
        key: SlotKey,
        cancel: &CancellationToken,
    ) -> Result<PullOutcome, PullError> {
        let started = Instant::now();
        let name = image.to_string();
        let reg_err = |source| PullError::Registry {
            image: name.clone(),
            source,
        };
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        let reference = match &image.digest {
            Some(d) => d.to_string(),
            None => image.tag.clone().unwrap_or_else(|| "latest".to_string()),
        };
        let cancelled = || PullError::Cancelled {
            image: name.clone(),
        };
        // Already in CRI at this exact digest: nothing to move. The digest
        // comes from the reference or a HEAD, so no body crosses the wire.
        let known = match &image.digest {
            Some(d) => Some(d.to_string()),
            None => tokio::select! {
                r = retry(self.backoff(), cancel, || async {
                    self.registry.head_digest(image, &reference).await.map_err(reg_err)
                }) => r?,
                _ = cancel.cancelled() => return Err(cancelled()),
            },
        };
        let cri_name = image.cri_name();
        if let Some(digest) = &known {
            if let Some(outcome) = self
                .already_present(image, &cri_name, digest, opts, started)
                .await?
            {
                return Ok(outcome);
            }
        }
        let top = tokio::select! {
            r = retry(self.backoff(), cancel, || async {
                self.registry.manifest(image, &reference).await.map_err(reg_err)
            }) => r?,
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        // Checked above already when the HEAD named this same digest.
        if known.as_deref() != Some(top.digest.as_str()) {
            if let Some(outcome) = self
                .already_present(image, &cri_name, &top.digest, opts, started)
                .await?
            {
                return Ok(outcome);
            }
        }

        let plan = tokio::select! {
            r = self.plan_blobs(image, top, opts, cancel) => r?,
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        let total: u64 = plan.blobs.iter().map(|b| b.size).sum::<u64>()
            + plan
                .manifests
                .iter()
                .map(|m| m.body.len() as u64)
                .sum::<u64>();
        let missing = self.absent_bytes(&plan.blobs).await.map_err(rt_err)?;
        self.observer.resolved(&name, total, missing);
        self.check_disk(&name, missing)?;

        let lease_id = format!("prewarm-{}", random_suffix());
        let expires = SystemTime::now() + self.lease_lifetime(total, &self.budget(opts));
        let lease = self
            .content
            .create_lease(&lease_id, expires)
            .await
            .map_err(rt_err)?;
        // Whatever happens now, the lease is released (or expires if we die).
        let result = tokio::select! {
            r = self.fetch_and_commit(image, &plan, &lease, opts, key, cancel) => r,
            _ = cancel.cancelled() => Err(cancelled()),
        };
        if let Err(e) = self.content.delete_lease(&lease).await {
            tracing::warn!(lease = %lease.0, error = %e, "could not delete lease; it expires on its own");
        }
        let (image_id, fetched, pinned) = result?;
        Ok(PullOutcome {
            image: name,
            digest: plan.top_digest,
            image_id,
            total_bytes: total,
            fetched_bytes: fetched,
            already_present: false,
            pinned,
            duration: started.elapsed(),
        })
    }

    async fn fetch_and_commit(
        &self,
        image: &ImageRef,
        plan: &BlobPlan,
        lease: &LeaseId,
        opts: &PullOptions,
        key: SlotKey,
        cancel: &CancellationToken,
    ) -> Result<(String, u64, bool), PullError> {
        let name = image.to_string();
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        let budget = &self.budget(opts);
        // Manifests first, labelled so GC keeps their children once the
        // lease goes: a CRI pull started before the blobs are in finds them.
        for m in &plan.manifests {
            self.put_small(lease, m).await.map_err(rt_err)?;
        }
        let (stage, _) = watch::channel(Stage {
            unclaimed: plan.blobs.len(),
            fetched: false,
        });
        let fetch = async {
            let stage = &stage;
            let job = &BlobJob {
                image,
                lease,
                key,
                budget,
                cancel,
            };
            let fetched = futures::stream::iter(plan.blobs.clone())
                .map(|blob| async move {
                    let claim = Claim::new(stage);
                    self.ensure_blob(job, &blob, &claim).await
                })
                .buffer_unordered(self.pacing.max_concurrent_blobs.max(1))
                .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
                .await?;
            stage.send_modify(|s| s.fetched = true);
            Ok::<_, PullError>(fetched)
        };
        let (fetched, image_id) =
            fetch_then_cri(fetch, self.cri_pull(image, opts, &stage, cancel)).await?;
        let cri_name = image.cri_name();
        let pinned = if opts.pin {
            match self.images.image_status(&cri_name).await.map_err(rt_err)? {
                Some(st) => pin::pin(self.images.as_ref(), &st).await.map_err(rt_err)?,
                None => false,
            }
        } else {
            false
        };
        Ok((image_id, fetched, pinned))
    }

    /// CRI PullImage, started as soon as every blob is committed or being
    /// written: containerd unpacks each layer while later ones still
    /// download. `cri_timeout` counts from when the last blob is in.
    async fn cri_pull(
        &self,
        image: &ImageRef,
        opts: &PullOptions,
        stage: &watch::Sender<Stage>,
        cancel: &CancellationToken,
    ) -> Result<String, PullError> {
        let name = image.to_string();
        let mut rx = stage.subscribe();
        let early = self.early_cri;
        if rx
            .wait_for(|s| s.fetched || (early && s.unclaimed == 0))
            .await
            .is_err()
        {
            return Err(PullError::Cancelled { image: name });
        }
        let credential = self.registry.credential(image);
        let cri_name = image.cri_name();
        retry(self.backoff(), cancel, || async {
            let mut rx = stage.subscribe();
            let deadline = async {
                let _ = rx.wait_for(|s| s.fetched).await;
                tokio::time::sleep(opts.cri_timeout).await;
            };
            // The RPC's own bound only catches a download that never ends.
            let ceiling = opts.cri_timeout + CRI_WAIT_CEILING;
            tokio::select! {
                r = self.images.pull_image(&cri_name, &credential, ceiling) => r,
                _ = deadline => Err(RuntimeError::CriPull {
                    image: cri_name.clone(),
                    message: format!("no answer {:?} after the last blob was in", opts.cri_timeout),
                    code: tonic::Code::DeadlineExceeded,
                }),
            }
            .map_err(|source| PullError::Runtime {
                image: name.clone(),
                source,
            })
        })
        .await
    }

    /// Compressed bytes this node still lacks for `image` on `opts.platform`
    /// (what a pull would move now). Used to estimate lead times.
    pub async fn missing_bytes(
        &self,
        image: &ImageRef,
        opts: &PullOptions,
        cancel: &CancellationToken,
    ) -> Result<u64, PullError> {
        let name = image.to_string();
        let reference = match &image.digest {
            Some(d) => d.to_string(),
            None => image.tag.clone().unwrap_or_else(|| "latest".to_string()),
        };
        let top = retry(self.backoff(), cancel, || async {
            self.registry
                .manifest(image, &reference)
                .await
                .map_err(|source| PullError::Registry {
                    image: name.clone(),
                    source,
                })
        })
        .await?;
        let plan = self.plan_blobs(image, top, opts, cancel).await?;
        self.absent_bytes(&plan.blobs)
            .await
            .map_err(|source| PullError::Runtime {
                image: name.clone(),
                source,
            })
    }

    /// The outcome for an image CRI already holds at `digest`, pinning it if asked.
    async fn already_present(
        &self,
        image: &ImageRef,
        cri_name: &str,
        digest: &str,
        opts: &PullOptions,
        started: Instant,
    ) -> Result<Option<PullOutcome>, PullError> {
        let name = image.to_string();
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        let wanted = format!("{}@{}", image.name(), digest);
        let Some(st) = self.images.image_status(cri_name).await.map_err(rt_err)? else {
            return Ok(None);
        };
        if !st.repo_digests.contains(&wanted) {
            return Ok(None);
        }
        // Recorded but not unpacked for CRI's snapshotter (snapshots
        // removed, or unpacked elsewhere): CRI PullImage unpacks it again.
        let snapshotter = self.cri_snapshotter().await;
        if !self
            .images
            .unpacked(&st, &snapshotter)
            .await
            .map_err(rt_err)?
        {
            tracing::info!(image = %name, snapshotter, "in CRI but not unpacked; unpacking again");
            return Ok(None);
        }
        let pinned = if opts.pin {
            pin::pin(self.images.as_ref(), &st).await.map_err(rt_err)?
        } else {
            st.pinned
        };
        self.observer.resolved(&name, st.size, 0);
        Ok(Some(PullOutcome {
            image: name,
            digest: digest.to_string(),
            image_id: st.id,
            total_bytes: st.size,
            fetched_bytes: 0,
            already_present: true,
            pinned,
            duration: started.elapsed(),
        }))
    }

    /// Resolves the platform manifest and lists every blob plus the manifest
    /// documents (with their GC reference labels).
    async fn plan_blobs(
        &self,
        image: &ImageRef,
        top: FetchedManifest,
        opts: &PullOptions,
        cancel: &CancellationToken,
    ) -> Result<BlobPlan, PullError> {
        let name = image.to_string();
        let man_err = |source| PullError::Manifest {
            image: name.clone(),
            source,
        };
        let top_digest = top.digest.clone();
        let mut manifests = Vec::new();
        let mut current = top;
        for depth in 0..2 {
            match manifest::parse(&current.media_type, &current.body).map_err(man_err)? {
                Parsed::Index(entries) => {
                    if depth > 0 {
                        return Err(man_err(ManifestError::Malformed(
                            "nested index".to_string(),
                        )));
                    }
                    let chosen = manifest::select_platform(&entries, &opts.platform)
                        .map_err(man_err)?
                        .descriptor
                        .clone();
                    let mut labels = BTreeMap::new();
                    labels.insert(
                        "containerd.io/gc.ref.content.m.0".into(),
                        chosen.digest.clone(),
                    );
                    manifests.push(ManifestDoc::new(&current, labels));
                    current = retry(self.backoff(), cancel, || async {
                        self.registry
                            .manifest(image, &chosen.digest)
                            .await
                            .map_err(|source| PullError::Registry {
                                image: name.clone(),
                                source,
                            })
                    })
                    .await?;
                }
                Parsed::Image { config, layers } => {
                    let mut labels = BTreeMap::new();
                    labels.insert(
                        "containerd.io/gc.ref.content.config".into(),
                        config.digest.clone(),
                    );
                    for (i, l) in layers.iter().enumerate() {
                        labels.insert(
                            format!("containerd.io/gc.ref.content.l.{i}"),
                            l.digest.clone(),
                        );
                    }
                    manifests.push(ManifestDoc::new(&current, labels));
                    let mut blobs = vec![config];
                    blobs.extend(layers);
                    // Children first, parents last.
                    manifests.reverse();
                    return Ok(BlobPlan {
                        top_digest,
                        blobs,
                        manifests,
                    });
                }
            }
        }
        Err(man_err(ManifestError::Malformed("nested index".into())))
    }

    fn check_disk(&self, image: &str, missing: u64) -> Result<(), PullError> {
        let usage = self.disk.usage().map_err(|e| PullError::DiskProbe {
            image: image.to_string(),
            message: e.to_string(),
        })?;
        disk_check(usage, &self.pacing.disk_floor, missing).map_err(|source| PullError::Disk {
            image: image.to_string(),
            source,
        })
    }

    /// The node's budget, and the window's one (shared by all its pulls).
    fn budget(&self, opts: &PullOptions) -> Budget {
        let window = opts.bandwidth.as_ref().map(|w| {
            let mut budgets = self
                .window_budgets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // A changed rate (config reload) starts a new budget; budgets
            // no pull uses any more are dropped.
            budgets.retain(|name, b| name == &w.window || Arc::strong_count(b) > 1);
            let current = budgets
                .get(&w.window)
                .filter(|b| b.rate() == w.bytes_per_sec);
            match current {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(Bandwidth::new(w.bytes_per_sec));
                    budgets.insert(w.window.clone(), b.clone());
                    b
                }
            }
        });
        Budget::new(self.bandwidth.clone(), window)
    }

    fn lease_lifetime(&self, total: u64, budget: &Budget) -> Duration {
        // Long enough for a paced pull of this size, short enough that
        // content from a dead agent is collected within hours.
        let paced = match budget.effective_rate() {
            0 => Duration::ZERO,
            bps => Duration::from_secs(total / bps * 3),
        };
        paced.max(Duration::from_secs(3600))
    }
}

/// Runs phase 1 and the early CRI pull together. A fetch error ends both at
/// once (it says more than CRI's view of the same failure); a CRI error is
/// reported once the fetch has finished, so its bytes are kept.
async fn fetch_then_cri(
    fetch: impl std::future::Future<Output = Result<u64, PullError>>,
    cri: impl std::future::Future<Output = Result<String, PullError>>,
) -> Result<(u64, String), PullError> {
    tokio::pin!(fetch, cri);
    let mut cri_result = None;
    loop {
        tokio::select! {
            r = &mut fetch => {
                let fetched = r?;
                let id = match cri_result.take() {
                    Some(r) => r?,
                    None => cri.await?,
                };
                return Ok((fetched, id));
            }
            r = &mut cri, if cri_result.is_none() => cri_result = Some(r),
        }
    }
}

struct ManifestDoc {
    digest: String,
    media_type: String,
    body: Bytes,
    labels: BTreeMap<String, String>,
}

impl ManifestDoc {
    fn new(m: &FetchedManifest, labels: BTreeMap<String, String>) -> Self {
        Self {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            body: m.body.clone(),
            labels,
        }
    }
}

struct BlobPlan {
    top_digest: String,
    blobs: Vec<Descriptor>,
    manifests: Vec<ManifestDoc>,
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
