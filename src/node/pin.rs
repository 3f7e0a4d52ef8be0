//! Pinning against kubelet image GC with the CRI pinned label, marked as
//! ours so prewarm never unpins an image someone else pinned.

use crate::node::runtime::{
    CriImage, ImageRecord, ImageStore, Result, CRI_PINNED_LABEL, CRI_PINNED_VALUE,
    PREWARM_PINNED_LABEL,
};

fn pinned_by_others(r: &ImageRecord) -> bool {
    r.labels.get(CRI_PINNED_LABEL).map(String::as_str) == Some(CRI_PINNED_VALUE)
        && !r.labels.contains_key(PREWARM_PINNED_LABEL)
}

/// Pins every record of the image (tag, digest and id names). Returns
/// whether CRI now reports it pinned: false on runtimes that ignore the label.
pub async fn pin(store: &dyn ImageStore, image: &CriImage) -> Result<bool> {
    let records = store.records_for(image).await?;
    for r in &records {
        if pinned_by_others(r) || r.labels.contains_key(PREWARM_PINNED_LABEL) {
            continue;
        }
        store
            .set_labels(
                &r.name,
                &[
                    (CRI_PINNED_LABEL, Some(CRI_PINNED_VALUE)),
                    (PREWARM_PINNED_LABEL, Some("true")),
                ],
            )
            .await?;
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

/// Removes our pin from one record; leaves records pinned by others alone.
pub async fn unpin_record(store: &dyn ImageStore, record: &ImageRecord) -> Result<bool> {
    if !record.labels.contains_key(PREWARM_PINNED_LABEL) {
        return Ok(false);
    }
    store
        .set_labels(
            &record.name,
            &[(CRI_PINNED_LABEL, None), (PREWARM_PINNED_LABEL, None)],
        )
        .await?;
    Ok(true)
}

/// Image records that prewarm pinned.
pub async fn pinned_by_us(store: &dyn ImageStore) -> Result<Vec<ImageRecord>> {
    store.records_with_label(PREWARM_PINNED_LABEL).await
}
