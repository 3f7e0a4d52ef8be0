//! The agent's side of pinning: what containerd records about prewarm's
//! pins (the records it marked, their holds, containers using them) as
//! observed data for the pure plan, the pin actions carried out, and the
//! images it keeps pinned past their reason, for the report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use super::metrics::Metrics;
use crate::node::pin;
use crate::node::runtime::{ImageRecord, ImageStore, Result, RuntimeError};
use crate::plan::warm::{plan, records_in_use, Action, Desired, HoldPolicy, Observed, Plan};

/// The image records prewarm pinned, by name.
pub struct Pins {
    pub ours: BTreeMap<String, ImageRecord>,
}

impl Pins {
    pub async fn observe(store: &dyn ImageStore) -> Result<Self> {
        let ours = pin::pinned_by_us(store)
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        Ok(Self { ours })
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.ours.keys().cloned().collect()
    }

    /// Hold-until of each of our records that carries a readable hold.
    pub fn holds(&self) -> BTreeMap<String, DateTime<Utc>> {
        self.ours
            .values()
            .filter_map(|r| Some((r.name.clone(), pin::hold_until(r)?)))
            .collect()
    }

    /// Our records whose image a container on this node uses (CRI
    /// ListContainers, every state, as the kubelet's image GC counts).
    pub async fn in_use(&self, store: &dyn ImageStore) -> Result<BTreeSet<String>> {
        let refs: BTreeSet<String> = match store.container_images().await {
            Ok(refs) => refs.into_iter().collect(),
            Err(RuntimeError::Rpc {
                code: tonic::Code::Unimplemented,
                status,
                ..
            }) => {
                static WARNED: OnceLock<()> = OnceLock::new();
                if WARNED.set(()).is_ok() {
                    tracing::warn!(%status, "CRI lists no containers here: pins are kept by holds only");
                }
                BTreeSet::new()
            }
            Err(e) => return Err(e),
        };
        let records: Vec<(String, String)> = self
            .ours
            .values()
            .map(|r| (r.name.clone(), r.target_digest.clone()))
            .collect();
        Ok(records_in_use(&records, &refs))
    }

    /// One name per image among `held` records, for the report: its tag
    /// if it has one, else its digest name, else its id.
    pub fn held_images(&self, held: &BTreeSet<String>) -> BTreeSet<String> {
        let mut by_target: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in held.iter().filter_map(|n| self.ours.get(n)) {
            by_target
                .entry(r.target_digest.as_str())
                .or_default()
                .push(r.name.as_str());
        }
        by_target
            .into_values()
            .filter_map(|names| {
                let rank = |n: &&str| match (n.starts_with("sha256:"), n.contains('@')) {
                    (false, false) => 0,
                    (false, true) => 1,
                    _ => 2,
                };
                names.into_iter().min_by_key(|n| (rank(n), *n))
            })
            .map(str::to_string)
            .collect()
    }

    /// The warm plan over `observed` completed with our pins and holds.
    /// Containers are listed only when a pin would otherwise go, so a quiet
    /// node costs no ListContainers.
    pub async fn plan(
        &self,
        store: &dyn ImageStore,
        desired: &[Desired],
        observed: &mut Observed,
        policy: &HoldPolicy,
        now: DateTime<Utc>,
    ) -> Result<Plan> {
        observed.pinned_by_us = self.names();
        observed.holds = self.holds();
        observed.in_use.clear();
        let first = plan(desired, observed, policy, now);
        if !first
            .actions
            .iter()
            .any(|a| matches!(a, Action::Unpin { .. }))
        {
            return Ok(first);
        }
        observed.in_use = self.in_use(store).await?;
        Ok(plan(desired, observed, policy, now))
    }

    /// Carries out a Pin, Hold or Unpin action.
    pub async fn apply(
        &self,
        store: &dyn ImageStore,
        action: &Action,
        metrics: &Metrics,
    ) -> Result<()> {
        let count = |change: &str| metrics.pin_changes.with_label_values(&[change]).inc();
        match action {
            Action::Pin { name, hold_until } => {
                if let Some(img) = store.image_status(name).await? {
                    let honoured = pin::pin_with_hold(store, &img, *hold_until).await?;
                    count("pin");
                    let hold_until = hold_until.map(pin::format_hold);
                    tracing::info!(image = %name, honoured, hold_until, "pinned");
                }
            }
            Action::Hold { name, until } => {
                if let Some(img) = store.image_status(name).await? {
                    let records = pin::hold(store, &img, *until).await?;
                    count("hold");
                    tracing::debug!(image = %name, records, until = %pin::format_hold(*until), "pin hold renewed");
                }
            }
            Action::Unpin { record } => {
                if let Some(r) = self.ours.get(record) {
                    pin::unpin_record(store, r).await?;
                    count("unpin");
                    tracing::info!(record = %record, "unpinned: no longer needed, no hold, no container uses it");
                }
            }
            Action::Warm { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fake::FakeRuntime;
    use crate::node::runtime::{PREWARM_HOLD_LABEL, PREWARM_PINNED_LABEL};
    use std::time::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// r/a:1 pulled by CRI and pinned for an intent, with a hold until t(900).
    async fn pinned_for_an_intent() -> FakeRuntime {
        let rt = FakeRuntime::new("1.7.24");
        for name in ["r/a:1", "r/a@sha256:t", "sha256:c"] {
            rt.lock().records.insert(
                name.into(),
                ImageRecord {
                    name: name.into(),
                    target_digest: "sha256:t".into(),
                    labels: BTreeMap::new(),
                },
            );
        }
        let img = rt.image_status("r/a:1").await.unwrap().unwrap();
        pin::pin_with_hold(&rt, &img, Some(t(900))).await.unwrap();
        rt
    }

    /// One reconcile as the agent runs it: observe, plan, act. Returns
    /// the images held past their reason.
    async fn reconcile(
        rt: &FakeRuntime,
        desired: &[Desired],
        now: DateTime<Utc>,
    ) -> BTreeSet<String> {
        let metrics = Metrics::new();
        let pins = Pins::observe(rt).await.unwrap();
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        let policy = HoldPolicy {
            period: Duration::from_secs(600),
        };
        let p = pins
            .plan(rt, desired, &mut obs, &policy, now)
            .await
            .unwrap();
        for a in &p.actions {
            pins.apply(rt, a, &metrics).await.unwrap();
        }
        pins.held_images(&p.held)
    }

    #[tokio::test]
    async fn the_intent_ends_as_a_container_starts_from_the_image() {
        let rt = pinned_for_an_intent().await;
        // The gated pod was released; its container exists (created, by
        // image id) by the time the hold has run out.
        rt.lock().containers = vec!["sha256:c".into(), "r/a:1".into()];
        let held = reconcile(&rt, &[], t(901)).await;
        assert_eq!(held, ["r/a:1".to_string()].into_iter().collect());
        assert!(rt.image_status("r/a:1").await.unwrap().unwrap().pinned);
        assert!(rt
            .lock()
            .records
            .values()
            .all(|r| r.labels.contains_key(PREWARM_PINNED_LABEL)));
        // The pod is deleted, its containers removed: the pin goes.
        rt.lock().containers.clear();
        assert!(reconcile(&rt, &[], t(902)).await.is_empty());
        assert!(!rt.image_status("r/a:1").await.unwrap().unwrap().pinned);
        assert!(rt
            .lock()
            .records
            .values()
            .all(|r| !r.labels.contains_key(PREWARM_HOLD_LABEL)));
    }

    #[tokio::test]
    async fn the_intent_ends_right_before_the_container_starts() {
        let rt = pinned_for_an_intent().await;
        // No container yet: the hold alone keeps the pin.
        let held = reconcile(&rt, &[], t(10)).await;
        assert_eq!(held.len(), 1);
        assert!(rt.image_status("r/a:1").await.unwrap().unwrap().pinned);
    }

    #[test]
    fn held_images_are_reported_by_tag_else_digest_else_id() {
        let rec = |n: &str, t: &str| ImageRecord {
            name: n.into(),
            target_digest: t.into(),
            labels: BTreeMap::new(),
        };
        let pins = Pins {
            ours: [
                rec("sha256:c", "sha256:t"),
                rec("r/a@sha256:t", "sha256:t"),
                rec("r/a:1", "sha256:t"),
                rec("sha256:d", "sha256:u"),
                rec("r/b@sha256:u", "sha256:u"),
                rec("sha256:e", "sha256:v"),
            ]
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect(),
        };
        let all = pins.names();
        let want: BTreeSet<String> = ["r/a:1", "r/b@sha256:u", "sha256:e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(pins.held_images(&all), want);
    }
}
