//! Phase 1 of a warm, blob by blob: one download per digest on the node,
//! written into containerd under the ref containerd's own fetcher uses, so
//! a CRI pull running at the same time waits for these writes instead of
//! downloading the blobs again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Engine, PullError, DISK_RECHECK};
use crate::config::reference::ImageRef;
use crate::node::manifest::Descriptor;
use crate::node::pace::Budget;
use crate::node::registry::RegistryError;
use crate::node::retry::retry;
use crate::node::runtime::{BlobWriter, LeaseId, RuntimeError};
use crate::node::slots::SlotKey;

/// First and last pause between checks on a blob another client writes.
const LOCKED_POLL: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// How far one image's phase 1 has got, for starting CRI PullImage early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stage {
    /// Blobs neither committed nor held by an open writer (ours or another
    /// client's). At zero a CRI pull can start: it will wait for the writes
    /// in flight and find nothing to download itself.
    pub unclaimed: usize,
    /// Every blob is committed.
    pub fetched: bool,
}

/// One blob's claim on the image's [`Stage`]; counted once.
pub(super) struct Claim<'a> {
    stage: &'a watch::Sender<Stage>,
    done: AtomicBool,
}

impl<'a> Claim<'a> {
    pub(super) fn new(stage: &'a watch::Sender<Stage>) -> Self {
        Self {
            stage,
            done: AtomicBool::new(false),
        }
    }

    fn claim(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.stage
                .send_modify(|s| s.unclaimed = s.unclaimed.saturating_sub(1));
        }
    }
}

impl Engine {
    /// Makes `blob` present and protected by `lease`; returns bytes fetched.
    pub(super) async fn ensure_blob(
        &self,
        job: &BlobJob<'_>,
        blob: &Descriptor,
        claim: &Claim<'_>,
    ) -> Result<u64, PullError> {
        let BlobJob {
            image,
            lease,
            key,
            budget,
            cancel,
        } = *job;
        let name = image.to_string();
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        // One download per digest on this node, whichever image asks first.
        let lock = {
            let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(blob.digest.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let result = async {
            if self
                .lease_if_present(lease, &blob.digest)
                .await
                .map_err(rt_err)?
            {
                claim.claim();
                return Ok(0);
            }
            let mut labels = BTreeMap::new();
            labels.insert(
                format!("containerd.io/distribution.source.{}", image.registry),
                image.repository.clone(),
            );
            let _slot = self.blob_slots.acquire(key).await;
            // Counts bytes of failed attempts too: they crossed the network.
            let moved = AtomicU64::new(0);
            let attempt = Attempt {
                image,
                blob,
                lease,
                budget,
                moved: &moved,
                claim,
                writer: tokio::sync::Mutex::new(None),
            };
            retry(self.backoff(), cancel, || {
                self.download(&attempt, labels.clone())
            })
            .await?;
            Ok(moved.load(Ordering::Relaxed))
        }
        .await;
        drop(_guard);
        let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(&blob.digest);
        }
        result
    }

    /// One attempt: resumes the ingest where containerd has it and streams
    /// the rest through the bandwidth limiter. The writer outlives a failed
    /// attempt, so the ingest stays ours (a CRI pull keeps waiting for it
    /// instead of taking over, unpaced) until the next attempt resumes it.
    async fn download(
        &self,
        a: &Attempt<'_>,
        labels: BTreeMap<String, String>,
    ) -> Result<(), PullError> {
        let (image, blob) = (a.image, a.blob);
        let name = image.to_string();
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        let mut slot = a.writer.lock().await;
        let mut writer = match slot.take() {
            Some(w) => w,
            None => match self.open_writer(a, labels).await? {
                Some(w) => w,
                None => return Ok(()),
            },
        };
        let start = writer.offset();
        let mut got = start;
        if start < blob.size {
            let mut stream = match self.registry.blob(image, &blob.digest, start).await {
                Ok(s) => s,
                Err(source) => {
                    *slot = Some(writer);
                    return Err(PullError::Registry {
                        image: name.clone(),
                        source,
                    });
                }
            };
            let mut since_disk_check = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk: Bytes = match chunk {
                    Ok(c) => c,
                    // A cut stream is resumed by the next attempt.
                    Err(RegistryError::Transport { .. }) => break,
                    Err(source) => {
                        *slot = Some(writer);
                        return Err(PullError::Registry {
                            image: name.clone(),
                            source,
                        });
                    }
                };
                let n = chunk.len() as u64;
                if got + n > blob.size {
                    return Err(PullError::Registry {
                        image: name.clone(),
                        source: RegistryError::BadReply {
                            what: format!("blob {}", blob.digest),
                            message: format!("more than the {} bytes announced", blob.size),
                        },
                    });
                }
                a.budget.take(chunk.len()).await;
                writer.write(chunk).await.map_err(rt_err)?;
                got += n;
                a.moved.fetch_add(n, Ordering::Relaxed);
                self.observer.bytes(&name, n);
                since_disk_check += n;
                if since_disk_check >= DISK_RECHECK {
                    since_disk_check = 0;
                    if let Err(e) = self.check_disk(&name, blob.size - got) {
                        // Another writer took the space: free ours at once.
                        if let Err(a) = writer.abort().await {
                            tracing::warn!(digest = %blob.digest, error = %a, "could not abort the ingest");
                        }
                        return Err(e);
                    }
                }
            }
        }
        if got < blob.size {
            *slot = Some(writer);
            return Err(PullError::Truncated {
                image: name,
                digest: blob.digest.clone(),
                got,
                expected: blob.size,
            });
        }
        writer.commit().await.map_err(rt_err)
    }

    /// Our writer on the blob's ingest, or `None` once the blob is committed
    /// (by us earlier or by the client that held the ingest: then it waits,
    /// as containerd's own fetcher does, rather than download it twice).
    async fn open_writer(
        &self,
        a: &Attempt<'_>,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<Box<dyn BlobWriter>>, PullError> {
        let name = a.image.to_string();
        let rt_err = |source| PullError::Runtime {
            image: name.clone(),
            source,
        };
        let blob = a.blob;
        let mut pause = LOCKED_POLL.0;
        loop {
            let opened = self
                .content
                .writer(
                    a.lease,
                    &blob.digest,
                    &blob.media_type,
                    blob.size,
                    labels.clone(),
                )
                .await;
            match opened {
                Ok(w) => {
                    a.claim.claim();
                    return Ok(Some(w));
                }
                Err(RuntimeError::AlreadyExists { .. }) => {
                    a.claim.claim();
                    return Ok(None);
                }
                Err(RuntimeError::Locked { .. }) => a.claim.claim(),
                Err(e) => return Err(rt_err(e)),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCKED_POLL.1);
            if self
                .lease_if_present(a.lease, &blob.digest)
                .await
                .map_err(rt_err)?
            {
                return Ok(None);
            }
        }
    }

    /// Whether `digest` is committed; if so, `lease` now protects it too.
    async fn lease_if_present(&self, lease: &LeaseId, digest: &str) -> Result<bool, RuntimeError> {
        if self.content.content_size(digest).await?.is_none() {
            return Ok(false);
        }
        self.content.lease_content(lease, digest).await?;
        Ok(true)
    }

    /// Compressed bytes of `blobs` the content store does not hold yet.
    pub(super) async fn absent_bytes(&self, blobs: &[Descriptor]) -> Result<u64, RuntimeError> {
        let mut missing = 0;
        for b in blobs {
            if self.content.content_size(&b.digest).await?.is_none() {
                missing += b.size;
            }
        }
        Ok(missing)
    }

    pub(super) async fn put_small(
        &self,
        lease: &LeaseId,
        doc: &super::ManifestDoc,
    ) -> Result<(), RuntimeError> {
        let digest = doc.digest.as_str();
        if self.lease_if_present(lease, digest).await? {
            return Ok(());
        }
        let size = doc.body.len() as u64;
        let opened = self
            .content
            .writer(lease, digest, &doc.media_type, size, doc.labels.clone())
            .await;
        let mut w = match opened {
            Ok(w) => w,
            Err(RuntimeError::AlreadyExists { .. }) => return Ok(()),
            // A CRI pull is writing the same document: it will be there.
            Err(RuntimeError::Locked { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let offset = w.offset() as usize;
        if offset < doc.body.len() {
            w.write(doc.body.slice(offset..)).await?;
        }
        w.commit().await
    }
}

/// What every blob of one image's phase 1 shares.
#[derive(Clone, Copy)]
pub(super) struct BlobJob<'a> {
    pub image: &'a ImageRef,
    pub lease: &'a LeaseId,
    pub key: SlotKey,
    pub budget: &'a Budget,
    pub cancel: &'a CancellationToken,
}

/// What one download attempt works on.
struct Attempt<'a> {
    image: &'a ImageRef,
    blob: &'a Descriptor,
    lease: &'a LeaseId,
    budget: &'a Budget,
    moved: &'a AtomicU64,
    claim: &'a Claim<'a>,
    /// The open ingest, kept between attempts.
    writer: tokio::sync::Mutex<Option<Box<dyn BlobWriter>>>,
}
