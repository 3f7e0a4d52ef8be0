//! The disk filling up while a pull is under way (another writer on the
//! same filesystem): the pull stops at the free-disk floor, says so, and
//! leaves nothing half-written in the image store. containerd's root is a
//! small tmpfs mounted for the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prewarm::config::reference::ImageRef;
use prewarm::config::units::DiskFloor;
use prewarm::node::pace::DiskProbe;
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

use crate::common::{hold_first_get, large_layer, opts, Node, Upstream, MIB};

/// A tmpfs of `size` bytes at `path`, lazily unmounted on drop (also when
/// the test panics, and even if containerd still has files open there).
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size: usize) -> TmpfsMount {
        std::fs::create_dir_all(path).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("prewarm-test")
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", path.display());
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The other writer: `len` bytes of zeros in 4 MiB writes.
fn write_zeros(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4 * MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_filling_up_mid_pull_stops_at_the_floor() {
    const FLOOR: u64 = 32 * MIB as u64;
    let up = Upstream::start(None, 32 * MIB).await;
    // Dropped in reverse: containerd first, then the mount, then the dir.
    let dir = tempfile::Builder::new()
        .prefix("prewarm-disk-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    let _mount = TmpfsMount::mount(&root, 192 * MIB);
    let ctd = TestContainerd::start_in(Version::V2, dir.path())
        .await
        .unwrap();
    let node = Node::on(ctd, |c| c.pacing.disk_floor = DiskFloor::Bytes(FLOOR)).await;
    let (digest, _) = large_layer(&up);
    let hold = hold_first_get(&up, &digest, 8 * MIB);
    let image: ImageRef = up.image("shapes/large").parse().unwrap();
    let (o, never) = (opts(false), CancellationToken::new());
    let pull = node.stack.engine.warm(&image, &o, &never);
    // Another writer fills the disk to half the floor once the pull is
    // 8 MiB into the big blob; then the blob flows on.
    let filler = root.join("filler");
    let fill = async {
        hold.reached().await;
        let free = node.stack.disk.usage().unwrap().free;
        write_zeros(&filler, free.saturating_sub(FLOOR / 2));
        let left = node.stack.disk.usage().unwrap().free;
        assert!(left < FLOOR, "filled to {left} free, floor {FLOOR}");
        hold.release();
    };
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(pull, fill) })
            .await
            .expect("the pull neither reached the hold point nor ended");
    let err = result.expect_err("the pull went on past the floor");
    assert_eq!(err.reason(), "disk_floor", "{err}");
    assert!(err.to_string().contains("disk below floor"), "{err}");

    // Nothing half-written: no image, no lease, no ingest.
    assert!(node.status(&image.to_string()).await.is_none());
    let names = node.stack.containerd.image_names().await.unwrap();
    assert!(
        names.iter().all(|n| !n.contains("shapes/large")),
        "{names:?}"
    );
    assert!(node.our_leases().await.is_empty());
    let ingests = node.ingests().await;
    assert!(ingests.is_empty(), "ingests left: {ingests:?}");

    // Space back: the same pull goes through.
    std::fs::remove_file(&filler).unwrap();
    node.stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("with space back: {e}"));
    assert!(node.status(&image.to_string()).await.is_some());
}
