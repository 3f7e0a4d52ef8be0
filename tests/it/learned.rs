//! Issue 12: what the agent learned survives a restart. A real `prewarm
//! agent` learns its throughput from a real pull on containerd, is stopped
//! with SIGTERM (as a DaemonSet upgrade does), and the next agent reports
//! that throughput before pulling anything; `prewarm plan` plans with it.
//! A damaged or foreign state file gives the defaults and one log line.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{metric, wait_until, Upstream, MIB};

/// A `prewarm agent` process; its JSON log lines are kept.
struct Agent {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Agent {
    async fn spawn(config: &Path, node: &str) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--node-name", node, "--node-labels", "pool=int"])
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run prewarm agent");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                if v["message"] == "agent started" {
                    let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
                    if let (Some(tx), Some(addr)) = (tx.take(), addr) {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(v);
            }
        });
        let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("agent did not start within 30 s")
            .unwrap_or_else(|_| panic!("agent exited before serving:\n{:#?}", log.lock().unwrap()));
        Agent { child, addr, log }
    }

    /// Log lines whose message contains `words`.
    fn lines(&self, words: &str) -> Vec<serde_json::Value> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(words)))
            .cloned()
            .collect()
    }

    /// Waits for the first line containing `words`, then returns every such line.
    async fn wait_lines(&self, words: &str) -> Vec<serde_json::Value> {
        let what = format!("a log line {words:?}");
        wait_until(&what, Duration::from_secs(30), async || {
            !self.lines(words).is_empty()
        })
        .await;
        self.lines(words)
    }

    fn log(&self) -> String {
        format!("{:#?}", self.log.lock().unwrap())
    }

    /// SIGTERM, as the kubelet stops a pod, and wait for the exit.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(ok.success());
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("the agent stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}\n{}", self.log());
    }
}

fn config_yaml(ctd: &TestContainerd, state: &Path, images: &[String]) -> String {
    let list: String = images.iter().map(|i| format!("\n  - {i}")).collect();
    let list = if list.is_empty() {
        " []".to_string()
    } else {
        list
    };
    format!(
        "runtime:\n  socket: {}\n  root: {}\nregistry:\n  dockerConfig: []\n  hostsDir: {}\n\
         pacing:\n  diskFloor: 0\nresync: 1s\nstate:\n  path: {}\nimages:{list}\n",
        ctd.socket.display(),
        ctd.root.display(),
        ctd.hosts_dir.display(),
        state.display(),
    )
}

/// `prewarm plan --config config`'s stdout.
async fn plan(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("plan")
        .arg("--config")
        .arg(config)
        .output()
        .await
        .expect("run prewarm plan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn saved_throughput(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["throughputBytesPerSecond"].as_f64()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= a.abs() * 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_throughput_survives_a_restart() {
    let up = Upstream::start(None, 16 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let image = up.image("shapes/large");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/learned.json");
    std::fs::create_dir(state.parent().unwrap()).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        config_yaml(&ctd, &state, std::slice::from_ref(&image)),
    )
    .unwrap();

    // The first agent finds no state, pulls, learns.
    let first = Agent::spawn(&config, "node-a").await;
    let addr = first.addr;
    assert_eq!(
        first
            .wait_lines("no learned state on this node yet")
            .await
            .len(),
        1,
        "{}",
        first.log()
    );
    wait_until("the first pull", Duration::from_secs(120), async || {
        metric(addr, "prewarm_pull_duration_seconds_count").await == Some(1.0)
            && metric(addr, "prewarm_node_throughput_bytes_per_second")
                .await
                .is_some_and(|t| t > 0.0)
    })
    .await;
    let learned = metric(addr, "prewarm_node_throughput_bytes_per_second")
        .await
        .unwrap();
    assert_eq!(
        metric(addr, "prewarm_learned_state_restored").await,
        Some(0.0)
    );
    first.terminate().await;

    // Saved on the way out, readable by the owner only.
    let saved = saved_throughput(&state).expect("throughput saved");
    assert!(close(saved, learned), "saved {saved}, learned {learned}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The next agent starts from it: reported before (and without) a pull.
    let second = Agent::spawn(&config, "node-a").await;
    let addr = second.addr;
    let restored = second.wait_lines("learned state restored").await;
    assert_eq!(restored.len(), 1, "{}", second.log());
    wait_until(
        "a reconcile on the restarted agent",
        Duration::from_secs(60),
        async || metric(addr, "prewarm_images_warm").await == Some(1.0),
    )
    .await;
    let reported = metric(addr, "prewarm_node_throughput_bytes_per_second")
        .await
        .unwrap();
    assert!(
        close(reported, learned),
        "reported {reported}, learned {learned}"
    );
    assert_eq!(
        metric(addr, "prewarm_learned_state_restored").await,
        Some(1.0)
    );
    assert_eq!(
        metric(addr, "prewarm_pull_duration_seconds_count").await,
        Some(0.0),
        "the restarted agent pulled"
    );

    // Its per-image series: warm, pinned, CRI's size; no pull by this agent.
    let series = |m: &str| format!("{m}{{image=\"{image}\"}}");
    assert_eq!(metric(addr, &series("prewarm_image_warm")).await, Some(1.0));
    assert_eq!(
        metric(addr, &series("prewarm_image_pinned")).await,
        Some(1.0)
    );
    let bytes = metric(addr, &series("prewarm_image_bytes"))
        .await
        .unwrap_or(0.0);
    assert!(bytes > (4 * MIB) as f64, "CRI size {bytes}");
    assert_eq!(
        metric(addr, &series("prewarm_image_last_pull_duration_seconds")).await,
        None
    );

    // `prewarm plan` on the node plans with the learned throughput.
    let out = plan(&config).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("throughput: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("learned on node \"node-a\""), "{line}");
    assert!(!line.contains("defaultThroughput"), "{line}");
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_state_file_gives_the_defaults_and_says_why() {
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("learned.json");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(&ctd, &state, &[])).unwrap();
    let foreign = r#"{"version": 1, "node": "node-b", "savedAtUnix": 1800000000, "throughputBytesPerSecond": 5000000.0}"#;
    for (bytes, why) in [
        (
            r#"{"version": 1, "node": "node-a", "thr"#,
            "not a learned-state document",
        ),
        (
            foreign,
            "written for node \"node-b\", this is node \"node-a\"",
        ),
    ] {
        std::fs::write(&state, bytes).unwrap();
        let agent = Agent::spawn(&config, "node-a").await;
        let addr = agent.addr;
        let lines = agent.wait_lines("learned state not used").await;
        assert_eq!(lines.len(), 1, "{}", agent.log());
        let reason = lines[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{reason}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(
            metric(addr, "prewarm_learned_state_restored").await,
            Some(0.0)
        );
        assert_eq!(
            metric(addr, "prewarm_node_throughput_bytes_per_second").await,
            Some(0.0)
        );
        let out = plan(&config).await;
        assert!(
            out.contains("throughput: 25.0 MiB/s (scheduling.defaultThroughput)"),
            "{out}"
        );
        agent.terminate().await;
    }
}
