//! containerd's root, whose filesystem the disk floor guards: asked from
//! containerd itself (CRI Status) when neither `--root` nor `runtime.root`
//! names it, and named in the error when it cannot be read.

use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use crate::common::{config_for, metric, Upstream, MIB};
use crate::on_both;
use prewarm::node::pull::NoopObserver;
use prewarm::node::runtime::ImageStore;
use prewarm::node::setup::{self, RootSource};
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

/// Runs the binary to completion (killed after 120 s): (exit code, stdout, stderr).
async fn prewarm(args: &[&str]) -> (i32, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run prewarm");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("prewarm {args:?} did not exit"))
        .expect("collect output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `prewarm pull` without `--root` checks the disk floor on the root this
/// containerd reports, wherever it is (not /var/lib/containerd here).
async fn pull_without_root_uses_containerds_own(v: Version) {
    let up = Upstream::start(None, MIB).await;
    let ctd = TestContainerd::start(v).await.expect("start containerd");
    let image = up.image("shapes/docker");
    let socket = ctd.socket.to_string_lossy().into_owned();
    let hosts = ctd.hosts_dir.to_string_lossy().into_owned();
    let common = ["pull", "--socket", &socket, "--hosts-dir", &hosts];
    let (code, out, err) =
        prewarm(&[&common[..], &["--disk-floor", "1%", "--json", &image]].concat()).await;
    assert_eq!(code, 0, "{}: {out}\n{err}", v.label());
    assert!(out.contains("\"fetchedBytes\""), "{out}");
    let root = ctd.root.display().to_string();
    assert!(
        err.contains(&root) && err.contains("containerd"),
        "the log does not name the root containerd reported ({root}):\n{err}"
    );

    // A root without containerd's content store (a directory that exists,
    // as the parents of a mount do in a pod): the disk floor would measure
    // some other filesystem, so nothing is pulled and the error names the
    // content store, the flag and the mount.
    let other = up.image("shapes/zstd");
    let empty = tempfile::tempdir().unwrap();
    let content = empty.path().join("io.containerd.content.v1.content");
    for root in [empty.path().to_str().unwrap(), "/nonexistent/ctd-root"] {
        let args = [&common[..], &["--root", root, "--json", &other]].concat();
        let (code, out, err) = prewarm(&args).await;
        assert_eq!(code, 1, "--root {root}: {out}\n{err}");
        let want = std::path::Path::new(root).join("io.containerd.content.v1.content");
        assert!(
            err.contains(&want.display().to_string())
                && err.contains("--root")
                && err.contains("mount"),
            "--root {root}: {err}"
        );
    }
    assert!(!content.exists(), "created {}", content.display());
}
on_both!(pull_without_root_uses_containerds_own);

/// CRI status names the root this containerd was started with, and the
/// stack uses it unless the config names one.
async fn containerd_reports_its_root(v: Version) {
    let ctd = TestContainerd::start(v).await.expect("start containerd");
    let mut cfg = config_for(&ctd);
    cfg.runtime.root = None;
    let stack = setup::connect(&cfg, Arc::new(NoopObserver))
        .await
        .expect("connect");
    let reported = stack.containerd.root_dir().await.expect("CRI status");
    assert_eq!(
        reported.as_deref(),
        Some(ctd.root.as_path()),
        "{}",
        v.label()
    );
    assert_eq!(stack.root.path, ctd.root);
    assert_eq!(stack.root.source, RootSource::Containerd);
    let usage = prewarm::node::pace::DiskProbe::usage(stack.disk.as_ref()).expect("statvfs");
    assert!(usage.total > 0);
    // The disk floor is measured on the content store, not the root.
    assert_eq!(
        stack.disk.path(),
        ctd.root.join("io.containerd.content.v1.content")
    );
    // A configured root wins (one with a content store of its own).
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("io.containerd.content.v1.content")).unwrap();
    cfg.runtime.root = Some(other.path().to_path_buf());
    let stack = setup::connect(&cfg, Arc::new(NoopObserver))
        .await
        .expect("connect");
    assert_eq!(
        (stack.root.path.as_path(), stack.root.source),
        (other.path(), RootSource::Configured)
    );
}
on_both!(containerd_reports_its_root);

/// An agent config without `runtime.root` warms images: the disk floor is
/// checked on the root containerd reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_root_warms() {
    let up = Upstream::start(None, MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let yaml = format!(
        "runtime: {{ socket: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\npacing: {{ diskFloor: 1% }}\nresync: 1s\nimages: [{}]\n",
        ctd.socket.display(),
        ctd.hosts_dir.display(),
        up.image("shapes/docker")
    );
    std::fs::write(&path, yaml).unwrap();
    let cancel = CancellationToken::new();
    let agent = crate::common::start_agent(path, "test-node", None, &cancel).await;
    let mut warm = false;
    for _ in 0..300 {
        if metric(agent.addr, "prewarm_images_warm").await == Some(1.0) {
            warm = true;
            break;
        }
        let failed = metric(
            agent.addr,
            "prewarm_pull_failures_total{reason=\"disk_floor\"}",
        )
        .await;
        assert_eq!(failed.unwrap_or(0.0), 0.0, "disk floor check failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(warm, "image not warm");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent.join())
        .await
        .expect("agent stops");
}

/// An agent whose containerd content store is not there (not mounted into
/// its pod) stops at start with an error naming the path and the mount,
/// instead of measuring the disk floor on its own filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_the_content_store_stops_at_start() {
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var/lib/containerd");
    std::fs::create_dir_all(&root).unwrap();
    let path = dir.path().join("config.yaml");
    let yaml = format!(
        "runtime: {{ socket: {}, root: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\n",
        ctd.socket.display(),
        root.display(),
        ctd.hosts_dir.display(),
    );
    std::fs::write(&path, yaml).unwrap();
    let config = path.to_str().unwrap();
    let (code, _, err) = prewarm(&["agent", "--listen", "127.0.0.1:0", "--config", config]).await;
    let content = root.join("io.containerd.content.v1.content");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&content.display().to_string())
            && err.contains("runtime.root")
            && err.contains("mount"),
        "{err}"
    );
}

/// Two containerd 2.x started at the same moment (the cluster demo's two
/// nodes) each run their own NRI: containerd 2.x enables NRI, whose socket
/// defaults to the host-wide /var/run/nri/nri.sock, and the demo's second
/// containerd died with "failed to start NRI interface: failed to create
/// socket \"/var/run/nri/nri.sock\": … bind: address already in use". Each
/// test containerd now has the NRI socket under its own directory; both
/// must answer on it and on their own socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containerd_2_started_together_each_run_their_own_nri() {
    let (a, b) = tokio::join!(
        TestContainerd::start(Version::V2),
        TestContainerd::start(Version::V2)
    );
    let (mut a, mut b) = (a.expect("first containerd"), b.expect("second containerd"));
    for c in [&a, &b] {
        let nri = c.dir.join("nri.sock");
        let up = async {
            while tokio::net::UnixStream::connect(&nri).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), up)
            .await
            .is_err()
        {
            panic!("no NRI socket at {}:\n{}", nri.display(), c.log_tail());
        }
        assert!(
            tokio::net::UnixStream::connect(&c.socket).await.is_ok(),
            "containerd at {} died:\n{}",
            c.socket.display(),
            c.log_tail()
        );
    }
    a.stop().await;
    b.stop().await;
}
