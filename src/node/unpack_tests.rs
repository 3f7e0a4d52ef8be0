//! Warm means unpacked for the snapshotter containerd's CRI uses: an image
//! CRI holds but that is not unpacked there is unpacked again by CRI.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::reference::ImageRef;
use crate::config::units::DiskFloor;
use crate::config::Pacing;
use crate::node::fake::{FakeRegistry, FakeRuntime};
use crate::node::manifest::host_platform;
use crate::node::pull::{Engine, NoopObserver, PullOptions};
use crate::node::test_rig::Fakes;

fn rig(cri_snapshotter: &str) -> (FakeRegistry, FakeRuntime, Engine) {
    let fakes = Fakes::new("2.1.9");
    fakes.rt.lock().snapshotter = Some(cri_snapshotter.to_string());
    let pacing = Pacing {
        disk_floor: DiskFloor::Bytes(0),
        ..Pacing::default()
    };
    let engine = fakes.engine(pacing, Arc::new(NoopObserver));
    (fakes.reg, fakes.rt, engine)
}

fn opts() -> PullOptions {
    PullOptions {
        pin: true,
        platform: host_platform(),
        cri_timeout: Duration::from_secs(30),
        priority: 0,
        bandwidth: None,
    }
}

fn image(reg: &FakeRegistry, rt: &FakeRuntime, name_tag: &str) -> ImageRef {
    let entry = reg.add_image(name_tag, &[Bytes::from_static(b"layer-bytes")]);
    rt.catalog
        .lock()
        .unwrap()
        .insert(name_tag.to_string(), entry);
    name_tag.parse().unwrap()
}

/// CRI unpacks into `native` here. An image CRI holds whose snapshots are
/// gone (or that someone unpacked into another snapshotter) is not warm:
/// the next warm asks CRI to unpack it again, moving no bytes.
#[tokio::test]
async fn recorded_but_not_unpacked_is_unpacked_again() {
    let (reg, rt, engine) = rig("native");
    let img = image(&reg, &rt, "reg.test/u:1");
    let cancel = CancellationToken::new();
    let first = engine.warm(&img, &opts(), &cancel).await.unwrap();
    assert!(!first.already_present);
    let id = first.image_id.clone();
    assert!(rt.lock().unpacked[&id].contains("native"));

    // A second warm finds it unpacked: nothing to do.
    let again = engine.warm(&img, &opts(), &cancel).await.unwrap();
    assert!(again.already_present);
    assert_eq!(rt.lock().cri_pulls.len(), 1);

    // Its snapshots are removed, or only another snapshotter has it.
    rt.lock()
        .unpacked
        .insert(id.clone(), ["overlayfs".to_string()].into());
    let served = *reg.blob_bytes_served.lock().unwrap();
    let out = engine.warm(&img, &opts(), &cancel).await.unwrap();
    assert!(
        !out.already_present && rt.lock().cri_pulls.len() == 2,
        "an image CRI holds but has not unpacked for its snapshotter (native) was reported warm: {out:?}"
    );
    assert!(rt.lock().unpacked[&id].contains("native"));
    assert_eq!(out.fetched_bytes, 0);
    assert_eq!(*reg.blob_bytes_served.lock().unwrap(), served);
    assert!(out.pinned);
}
