//! A real `prewarm agent` process killed with SIGKILL in the middle of a
//! large pull: the next agent resumes the blob where containerd has it,
//! CRI never shows a partial image, and once the pull is done no prewarm
//! lease and no ingest is left (the dead agent's lease held its content for
//! an hour).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prewarm::node::containerd::Containerd;
use prewarm::node::runtime::{ContentStore, ImageStore};
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{
    chain_id, hold_first_get, ingest_offset, large_layer, metric, range_starts, wait_until,
    Upstream, MIB,
};

/// A running `prewarm agent`; its stderr is kept for failure messages.
struct AgentProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl AgentProcess {
    async fn spawn(config: &Path) -> AgentProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run prewarm agent");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(addr) = started_addr(&line) {
                    return addr;
                }
            }
            panic!("agent exited before serving:\n{}", log.lock().unwrap());
        })
        .await
        .expect("agent did not start within 30 s");
        // Keep draining stderr so the agent never blocks on a full pipe.
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        AgentProcess { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, as abrupt as an OOM kill or a node losing power.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL the agent");
        self.child.wait().await.expect("reap the agent");
    }
}

/// `addr` of the JSON "agent started" line.
fn started_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "agent started" {
        return None;
    }
    v.get("addr")?.as_str()?.parse().ok()
}

fn config_yaml(ctd: &TestContainerd, image: &str) -> String {
    format!(
        "runtime:\n  socket: {}\n  root: {}\nregistry:\n  dockerConfig: []\n  hostsDir: {}\n\
         pacing:\n  diskFloor: 0\n  retry:\n    initialBackoff: 100ms\n    maxBackoff: 1s\n\
         resync: 1s\nimages:\n  - image: {image}\n",
        ctd.socket.display(),
        ctd.root.display(),
        ctd.hosts_dir.display()
    )
}

async fn prewarm_leases(store: &Containerd) -> Vec<String> {
    let ids = store.lease_ids().await.expect("list leases");
    ids.into_iter()
        .filter(|l| l.starts_with("prewarm-"))
        .collect()
}

/// Polls CRI for `image` until stopped; every sighting must be a complete
/// image (all layer bytes committed and unpacked). Returns the sightings.
fn watch_cri(
    store: Containerd,
    image: String,
    layer: (String, u64),
    chain: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<u32, String>> {
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let last = stop.load(Ordering::SeqCst);
            if store.image_status(&image).await.ok().flatten().is_some() {
                let size = store.content_size(&layer.0).await.ok().flatten();
                let unpacked = store.snapshot_exists("overlayfs", &chain).await;
                if size != Some(layer.1) || !matches!(unpacked, Ok(true)) {
                    return Err(format!(
                        "CRI showed {image} with layer bytes {size:?} of {} and unpacked {unpacked:?}",
                        layer.1
                    ));
                }
                seen += 1;
            }
            if last {
                return Ok(seen);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_pull_resumes_and_leaves_nothing_behind() {
    let up = Upstream::start(None, 32 * MIB).await;
    let ctd = TestContainerd::start(Version::V17).await.unwrap();
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    let image = up.image("shapes/large");
    let (digest, size) = large_layer(&up);
    let (_, _, built) = up
        .corpus
        .iter()
        .find(|(r, _, _)| r.ends_with("shapes/large"))
        .unwrap();
    let chain = chain_id(&built.images()[0].diff_ids);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(&ctd, &image)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_cri(
        store.clone(),
        image.clone(),
        (digest.clone(), size),
        chain,
        stop.clone(),
    );

    // The first agent gets 8 MiB into the big blob, then the proxy holds it.
    let hold = hold_first_get(&up, &digest, 8 * MIB);
    let mut first = AgentProcess::spawn(&config).await;
    tokio::time::timeout(Duration::from_secs(60), hold.reached())
        .await
        .unwrap_or_else(|_| panic!("first agent never got 8 MiB in:\n{}", first.log()));
    let written = ingest_offset(&store, &digest).await;
    let dead_leases = prewarm_leases(&store).await;
    assert_eq!(dead_leases.len(), 1, "{dead_leases:?}");
    first.kill9().await;
    hold.release();

    let second = AgentProcess::spawn(&config).await;
    let addr = second.addr;
    wait_until(
        "the second agent's pull",
        Duration::from_secs(60),
        async || metric(addr, "prewarm_pull_duration_seconds_count").await == Some(1.0),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(seen > 0, "CRI never showed the image");

    // Resumed from what containerd kept, not from byte 0.
    let starts = range_starts(&up.proxy, &digest);
    assert!(
        starts
            .iter()
            .any(|s| *s >= written && *s <= hold.after() as u64),
        "no resume from {written}..={} bytes: ranges {:?}\n{}",
        hold.after(),
        up.proxy.ranges(&digest),
        second.log()
    );
    let leases = prewarm_leases(&store).await;
    assert!(
        leases.is_empty(),
        "prewarm leases left once the pull is done: {leases:?} (the killed agent's: {dead_leases:?})"
    );
    let ingests = store.ingests().await.unwrap();
    assert!(ingests.is_empty(), "ingests left: {ingests:?}");
}

/// A `prewarm pull` run by hand on the node while an agent (re)starts: the
/// agent takes over only agents' leftovers, so the CLI pull keeps its lease
/// and its download and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_pull_keeps_its_lease_when_an_agent_starts() {
    let up = Upstream::start(None, 32 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    let image = up.image("shapes/large");
    let (digest, _) = large_layer(&up);
    let hold = hold_first_get(&up, &digest, 8 * MIB);
    let cli = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("pull")
        .args(["--socket", &ctd.socket.to_string_lossy()])
        .args(["--root", &ctd.root.to_string_lossy()])
        .args(["--hosts-dir", &ctd.hosts_dir.to_string_lossy()])
        .args(["--disk-floor", "0", "--json", &image])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run prewarm pull");
    tokio::time::timeout(Duration::from_secs(60), hold.reached())
        .await
        .expect("the CLI pull never got 8 MiB in");
    let cli_leases = prewarm_leases(&store).await;
    assert_eq!(cli_leases.len(), 1, "{cli_leases:?}");

    // An agent starts on the node and warms an image of its own.
    let other = up.image("shapes/docker");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(&ctd, &other)).unwrap();
    let agent = AgentProcess::spawn(&config).await;
    let addr = agent.addr;
    wait_until(
        "the agent's own pull",
        Duration::from_secs(60),
        async || metric(addr, "prewarm_pull_duration_seconds_count").await == Some(1.0),
    )
    .await;
    let leases = prewarm_leases(&store).await;
    assert!(
        leases.contains(&cli_leases[0]),
        "the starting agent took the running CLI pull's lease {:?}: leases now {leases:?}\n{}",
        cli_leases[0],
        agent.log()
    );

    hold.release();
    let out = tokio::time::timeout(Duration::from_secs(60), cli.wait_with_output())
        .await
        .expect("the CLI pull finishes")
        .expect("reap prewarm pull");
    assert!(
        out.status.success(),
        "the CLI pull failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.image_status(&image).await.unwrap().is_some());
}
