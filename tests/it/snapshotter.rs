//! Warm means unpacked for the snapshotter containerd's CRI plugin uses:
//! here a CRI configured for `native`. containerd 1.7 reports it in CRI
//! status; 2.x does not, so there `runtime.snapshotter` names it.

use std::sync::Arc;

use crate::common::{chain_id, config_for, opts, Upstream, MIB};
use crate::on_both;
use prewarm::config::reference::ImageRef;
use prewarm::node::pull::NoopObserver;
use prewarm::node::setup;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::Built;
use tokio_util::sync::CancellationToken;

async fn warm_unpacks_into_the_cri_snapshotter(v: Version) {
    let up = Upstream::start(None, MIB).await;
    let ctd = TestContainerd::start_with_snapshotter(v, "native")
        .await
        .expect("start containerd");
    let mut cfg = config_for(&ctd);
    // Unset, 1.7 is asked; 2.x does not say, so the config names it.
    if v == Version::V2 {
        cfg.runtime.snapshotter = Some("native".into());
    }
    let stack = setup::connect(&cfg, Arc::new(NoopObserver))
        .await
        .expect("connect");
    assert_eq!(stack.snapshotter, "native", "{}", v.label());

    let image: ImageRef = up.image("shapes/docker").parse().unwrap();
    let (_, _, built) = up
        .corpus
        .iter()
        .find(|(r, _, _)| r.ends_with("shapes/docker"))
        .unwrap();
    let Built::Image(built) = built else {
        panic!("shapes/docker is one image")
    };
    let chain = chain_id(&built.diff_ids);
    let cancel = CancellationToken::new();
    let first = stack
        .engine
        .warm(&image, &opts(true), &cancel)
        .await
        .unwrap();
    assert!(!first.already_present);
    let ctr = &stack.containerd;
    assert!(ctr.snapshot_exists("native", &chain).await.unwrap());
    assert!(!ctr.snapshot_exists("overlayfs", &chain).await.unwrap());
    let again = stack
        .engine
        .warm(&image, &opts(true), &cancel)
        .await
        .unwrap();
    assert!(again.already_present, "{again:?}");

    // The unpacked top layer goes away: the image is no longer warm, and
    // the next warm has CRI unpack it again without fetching a byte.
    ctr.remove_snapshot("native", &chain).await.unwrap();
    up.proxy.reset_counters();
    let out = stack
        .engine
        .warm(&image, &opts(true), &cancel)
        .await
        .unwrap();
    assert!(
        !out.already_present && out.fetched_bytes == 0,
        "{}: {out:?}",
        v.label()
    );
    assert!(ctr.snapshot_exists("native", &chain).await.unwrap());
    let blob_gets = up
        .proxy
        .request_log()
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains("/blobs/"))
        .count();
    assert_eq!(blob_gets, 0, "{:?}", up.proxy.request_log());

    // Where containerd says (1.7), a config naming another snapshotter is
    // refused, naming both.
    if v == Version::V2 {
        return;
    }
    cfg.runtime.snapshotter = Some("overlayfs".into());
    let err = setup::connect(&cfg, Arc::new(NoopObserver))
        .await
        .err()
        .expect("a mismatched runtime.snapshotter is refused")
        .to_string();
    assert!(
        err.contains("runtime.snapshotter is \"overlayfs\"") && err.contains("\"native\""),
        "{err}"
    );
}
on_both!(warm_unpacks_into_the_cri_snapshotter);
