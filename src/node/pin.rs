//! Pinning against kubelet image GC with the CRI pinned label, marked as
//! ours so prewarm never unpins an image someone else pinned. A pin asked
//! for by an intent also carries a hold-until label, so the hold survives
//! an agent restart.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::node::runtime::{
    CriImage, ImageRecord, ImageStore, Result, CRI_PINNED_LABEL, CRI_PINNED_VALUE,
    PREWARM_HOLD_LABEL, PREWARM_PINNED_LABEL,
};

fn pinned_by_others(r: &ImageRecord) -> bool {
    r.labels.get(CRI_PINNED_LABEL).map(String::as_str) == Some(CRI_PINNED_VALUE)
        && !r.labels.contains_key(PREWARM_PINNED_LABEL)
}

fn ours(r: &ImageRecord) -> bool {
    r.labels.contains_key(PREWARM_PINNED_LABEL)
}

/// The hold label's value for `t`.
pub fn format_hold(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Until when a record we pinned is held; None without a (valid) hold, or
/// on a record that is not ours.
pub fn hold_until(r: &ImageRecord) -> Option<DateTime<Utc>> {
    if !ours(r) {
        return None;
    }
    let v = r.labels.get(PREWARM_HOLD_LABEL)?;
    match DateTime::parse_from_rfc3339(v) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!(record = %r.name, value = %v, error = %e, "unreadable hold label; treated as no hold");
            None
        }
    }
}

/// Pins every record of the image (tag, digest and id names). Returns
/// whether CRI now reports it pinned: false on runtimes that ignore the label.
pub async fn pin(store: &dyn ImageStore, image: &CriImage) -> Result<bool> {
    pin_with_hold(store, image, None).await
}

/// Like [`pin`], setting the hold label together with the pin when `hold`
/// is given (on records already ours, only the hold).
pub async fn pin_with_hold(
    store: &dyn ImageStore,
    image: &CriImage,
    hold: Option<DateTime<Utc>>,
) -> Result<bool> {
    let hold = hold.map(format_hold);
    for r in &store.records_for(image).await? {
        if pinned_by_others(r) {
            continue;
        }
        let mut labels = Vec::new();
        if !ours(r) {
            labels.push((CRI_PINNED_LABEL, Some(CRI_PINNED_VALUE)));
            labels.push((PREWARM_PINNED_LABEL, Some("true")));
        }
        if let Some(h) = &hold {
            labels.push((PREWARM_HOLD_LABEL, Some(h.as_str())));
        }
        if !labels.is_empty() {
            store.set_labels(&r.name, &labels).await?;
        }
    }
    let name = image
        .repo_tags
        .first()
        .or(image.repo_digests.first())
        .unwrap_or(&image.id);
    Ok(store
        .image_status(name)
        .await?
        .map(|s| s.pinned)
        .unwrap_or(false))
}

/// Sets the hold on every record of the image that we pinned. Returns how
/// many records it was set on.
pub async fn hold(store: &dyn ImageStore, image: &CriImage, until: DateTime<Utc>) -> Result<usize> {
    let value = format_hold(until);
    let mut n = 0;
    for r in store.records_for(image).await?.iter().filter(|r| ours(r)) {
        store
            .set_labels(&r.name, &[(PREWARM_HOLD_LABEL, Some(value.as_str()))])
            .await?;
        n += 1;
    }
    Ok(n)
}

/// Removes our pin (and its hold) from one record; leaves records pinned
/// by others alone.
pub async fn unpin_record(store: &dyn ImageStore, record: &ImageRecord) -> Result<bool> {
    if !ours(record) {
        return Ok(false);
    }
    store
        .set_labels(
            &record.name,
            &[
                (CRI_PINNED_LABEL, None),
                (PREWARM_PINNED_LABEL, None),
                (PREWARM_HOLD_LABEL, None),
            ],
        )
        .await?;
    Ok(true)
}

/// Image records that prewarm pinned.
pub async fn pinned_by_us(store: &dyn ImageStore) -> Result<Vec<ImageRecord>> {
    store.records_with_label(PREWARM_PINNED_LABEL).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fake::FakeRuntime;
    use std::collections::BTreeMap;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// r/a:1 with its digest and id records, as CRI would record a pull.
    fn runtime() -> FakeRuntime {
        let rt = FakeRuntime::new("2.1.9");
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
        rt
    }

    #[tokio::test]
    async fn a_hold_is_set_with_the_pin_read_back_and_removed_with_it() {
        let rt = runtime();
        let img = rt.image_status("r/a:1").await.unwrap().unwrap();
        assert!(pin_with_hold(&rt, &img, Some(t(900))).await.unwrap());
        let ours = pinned_by_us(&rt).await.unwrap();
        assert_eq!(ours.len(), 3);
        for r in &ours {
            assert_eq!(r.labels[PREWARM_HOLD_LABEL], "2027-01-15T08:15:00Z");
            assert_eq!(hold_until(r), Some(t(900)));
        }
        // Renewed on our records only.
        assert_eq!(hold(&rt, &img, t(1800)).await.unwrap(), 3);
        for r in &pinned_by_us(&rt).await.unwrap() {
            assert_eq!(hold_until(r), Some(t(1800)));
            assert!(unpin_record(&rt, r).await.unwrap());
        }
        assert!(rt.lock().records.values().all(|r| r.labels.is_empty()));
        assert!(!rt.image_status("r/a:1").await.unwrap().unwrap().pinned);
    }

    #[tokio::test]
    async fn holds_on_records_we_did_not_pin_or_unreadable_ones_count_for_nothing() {
        let rt = runtime();
        rt.set_labels(
            "r/a:1",
            &[
                (CRI_PINNED_LABEL, Some(CRI_PINNED_VALUE)),
                (PREWARM_HOLD_LABEL, Some("2999-01-01T00:00:00Z")),
            ],
        )
        .await
        .unwrap();
        let rec = rt.lock().records["r/a:1"].clone();
        assert_eq!(hold_until(&rec), None, "someone else's record");
        let img = rt.image_status("r/a:1").await.unwrap().unwrap();
        // Pinned by others: its labels stay as they are.
        assert_eq!(hold(&rt, &img, t(0)).await.unwrap(), 0);
        assert!(!unpin_record(&rt, &rec).await.unwrap());
        assert_eq!(rt.lock().records["r/a:1"].labels.len(), 2);

        let mut bad = rec.clone();
        bad.labels
            .insert(PREWARM_PINNED_LABEL.into(), "true".into());
        bad.labels
            .insert(PREWARM_HOLD_LABEL.into(), "next tuesday".into());
        assert_eq!(hold_until(&bad), None);
    }
}
