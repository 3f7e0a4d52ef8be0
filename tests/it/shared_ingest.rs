//! prewarm writes blobs under the ingest refs containerd's own fetcher uses,
//! so a kubelet pull of an image prewarm is warming waits for prewarm's
//! download instead of fetching the same layer a second time.

use std::sync::Arc;
use std::time::Duration;

use prewarm::config::reference::ImageRef;
use prewarm::node::auth::Credential;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

use crate::common::{hold_first_get, large_layer, opts, wait_until, Node, Upstream, MIB};
use crate::on_both;

/// Whether containerd's fetcher logged that it reached `digest` (debug).
fn fetcher_reached(log: &str, digest: &str) -> bool {
    log.lines()
        .any(|l| l.contains("level=debug") && l.contains("fetch") && l.contains(digest))
}

async fn kubelet_pull_during_a_warm_fetches_each_blob_once(v: Version) {
    let up = Upstream::start(None, 24 * MIB).await;
    let mut ctd = TestContainerd::start(v).await.expect("containerd");
    ctd.restart_with_debug_log().await.expect("debug log");
    let node = Node::on(ctd, |_| {}).await;
    let (digest, _) = large_layer(&up);
    let image: ImageRef = up.image("shapes/large").parse().unwrap();

    // prewarm's download of the big layer stops a quarter of the way in.
    let hold = hold_first_get(&up, &digest, 6 * MIB);
    let engine = node.stack.engine.clone();
    let warm = tokio::spawn({
        let image = image.clone();
        async move {
            engine
                .warm(&image, &opts(false), &CancellationToken::new())
                .await
        }
    });
    hold.reached().await;

    // Meanwhile the kubelet asks CRI for the same image.
    let cri = Arc::new(node.stack.containerd.clone());
    let kubelet = tokio::spawn({
        let (cri, name) = (cri.clone(), image.cri_name());
        async move {
            cri.pull_image(&name, &Credential::Anonymous, Duration::from_secs(300))
                .await
        }
    });
    wait_until(
        "containerd's fetcher to reach the big layer",
        Duration::from_secs(60),
        async || fetcher_reached(&node.ctd.log(), &digest),
    )
    .await;
    hold.release();

    warm.await.unwrap().expect("warm");
    kubelet.await.unwrap().expect("kubelet's pull");
    let gets = up
        .proxy
        .request_log()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&digest))
        .count();
    assert_eq!(
        gets,
        1,
        "the big layer crossed the wire {gets} times: {:#?}",
        up.proxy.request_log()
    );
}
on_both!(kubelet_pull_during_a_warm_fetches_each_blob_once);
