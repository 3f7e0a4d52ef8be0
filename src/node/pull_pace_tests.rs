//! The engine's byte budgets on paused time: a window's `pacing.bandwidth`
//! is shared by all of that window's pulls and nested inside the node's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::reference::ImageRef;
use crate::config::units::{ByteSize, DiskFloor};
use crate::config::Pacing;
use crate::node::fake::{FakeRegistry, FakeRuntime};
use crate::node::manifest::host_platform;
use crate::node::pull::{Engine, NoopObserver, PullOptions, WindowBandwidth};
use crate::node::test_rig::Fakes;

const MIB: u64 = 1 << 20;

struct Rig {
    reg: FakeRegistry,
    rt: FakeRuntime,
    engine: Engine,
}

fn rig(node_bytes_per_sec: u64) -> Rig {
    let fakes = Fakes::new("1.7.24");
    let pacing = Pacing {
        bandwidth: ByteSize(node_bytes_per_sec),
        max_concurrent_pulls: 8,
        max_concurrent_blobs: 8,
        disk_floor: DiskFloor::Bytes(0),
        ..Pacing::default()
    };
    let engine = fakes.engine(pacing, Arc::new(NoopObserver));
    Rig {
        reg: fakes.reg,
        rt: fakes.rt,
        engine,
    }
}

impl Rig {
    /// An image of one distinct layer of `mib` MiB.
    fn image(&self, name_tag: &str, seed: u8, mib: u64) -> ImageRef {
        let layer = Bytes::from(vec![seed; (mib * MIB) as usize]);
        let entry = self.reg.add_image(name_tag, &[layer]);
        self.rt
            .catalog
            .lock()
            .unwrap()
            .insert(name_tag.to_string(), entry);
        name_tag.parse().unwrap()
    }
}

fn opts(window: Option<(&str, u64)>) -> PullOptions {
    PullOptions {
        pin: false,
        platform: host_platform(),
        cri_timeout: Duration::from_secs(30),
        priority: 0,
        bandwidth: window.map(|(name, rate)| WindowBandwidth {
            window: name.to_string(),
            bytes_per_sec: rate,
        }),
    }
}

/// Warms `images` at once; returns each pull's bytes and when it ended.
async fn warm_all(r: &Rig, images: &[(ImageRef, PullOptions)]) -> Vec<(u64, Instant)> {
    let cancel = CancellationToken::new();
    let pulls = images.iter().map(|(img, o)| {
        let cancel = cancel.clone();
        async move {
            let out = r.engine.warm(img, o, &cancel).await.unwrap();
            (out.fetched_bytes, Instant::now())
        }
    });
    futures::future::join_all(pulls).await
}

/// Bytes/s that `bytes` over `secs` prove at least, granting the limiter's
/// 0.1 s burst.
fn rate(bytes: u64, burst: u64, elapsed: Duration) -> f64 {
    bytes.saturating_sub(burst) as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// AKS example: node 100 MiB/s, window 200 MiB/s, 4 of the window's pulls
/// at once. The node cap holds for all of them together.
#[tokio::test(start_paused = true)]
async fn window_budget_cannot_exceed_the_node_cap() {
    let r = rig(100 * MIB);
    let images: Vec<_> = (0..4)
        .map(|i| {
            let img = r.image(&format!("reg.test/w{i}:1"), i as u8, 32);
            (img, opts(Some(("erp-sync", 200 * MIB))))
        })
        .collect();
    let start = Instant::now();
    let done = warm_all(&r, &images).await;
    let total: u64 = done.iter().map(|(b, _)| b).sum();
    let elapsed = done.iter().map(|(_, t)| *t).max().unwrap() - start;
    assert!(total >= 4 * 32 * MIB);
    let got = rate(total, 10 * MIB, elapsed) / MIB as f64;
    assert!(
        got <= 100.0 * 1.01,
        "4 pulls of a 200 MiB/s window drew {got:.0} MiB/s under a 100 MiB/s node cap"
    );
    // And the cap is used, not undershot.
    assert!(got >= 90.0, "only {got:.0} MiB/s of 100");
    assert_eq!(r.rt.lock().cri_pulls.len(), 4);
}

/// A 50 MiB/s window under a 100 MiB/s node: the window's pulls share 50
/// MiB/s between them, while a pull outside the window uses the rest.
#[tokio::test(start_paused = true)]
async fn window_budget_is_shared_by_its_pulls() {
    let r = rig(100 * MIB);
    let mut images: Vec<_> = (0..2)
        .map(|i| {
            let img = r.image(&format!("reg.test/slow{i}:1"), i as u8, 8);
            (img, opts(Some(("batch", 50 * MIB))))
        })
        .collect();
    images.push((r.image("reg.test/other:1", 9, 8), opts(None)));
    let start = Instant::now();
    let done = warm_all(&r, &images).await;
    let window_bytes = done[0].0 + done[1].0;
    let window_end = done[0].1.max(done[1].1) - start;
    let got = rate(window_bytes, 5 * MIB, window_end) / MIB as f64;
    assert!(
        got <= 50.0 * 1.01,
        "the window's 2 pulls drew {got:.0} MiB/s together under its 50 MiB/s budget"
    );
    assert!(got >= 45.0, "only {got:.0} MiB/s of the window's 50");
    let total: u64 = done.iter().map(|(b, _)| b).sum();
    let end = done.iter().map(|(_, t)| *t).max().unwrap() - start;
    let node = rate(total, 10 * MIB, end) / MIB as f64;
    assert!(node <= 100.0 * 1.01, "node drew {node:.0} MiB/s of 100");
}
