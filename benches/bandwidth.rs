//! Bandwidth benchmark: several pulls at once through one Engine against the
//! real loopback registry and a real containerd, with a node cap
//! (`pacing.bandwidth`) and a window cap (`windows[].pacing.bandwidth`).
//! Reports the measured rates against the caps (median of the runs); asserts
//! nothing timed. Markdown to stdout, progress to stderr.
//!
//! `cargo bench --bench bandwidth` (as root). Env: `PREWARM_BENCH_CONTAINERD`
//! = `2` (default) or `1.7`, `PREWARM_BENCH_BW_RUNS` (3),
//! `PREWARM_BENCH_BW_NODE_MIBPS` (40).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::future::try_join_all;
use tokio_util::sync::CancellationToken;

use prewarm::config::{AgentConfig, ByteSize, DiskFloor, ImageRef};
use prewarm::node::manifest::host_platform;
use prewarm::node::pull::{PullObserver, PullOptions, WindowBandwidth};
use prewarm::node::setup;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::bench_corpus;
use prewarm::testkit::registry::Registry;

const MIB: f64 = (1 << 20) as f64;
const MB: f64 = 1e6;
const IMAGES: usize = 6;
/// Uncompressed bytes of the whole corpus.
const CORPUS_BYTES: usize = 360 << 20;

/// Every chunk that arrived: when, for which image, how many bytes.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Instant, String, u64)>>);

impl PullObserver for Recorder {
    fn bytes(&self, image: &str, n: u64) {
        let mut events = self.0.lock().unwrap_or_else(|p| p.into_inner());
        events.push((Instant::now(), image.to_string(), n));
    }
}

/// Bytes/s of the chunks `pick` selects that arrived by `until`, from their
/// first to their last chunk (the first chunk arrived before the span began).
fn rate(
    events: &[(Instant, String, u64)],
    until: Instant,
    pick: impl Fn(&str) -> bool,
) -> (f64, u64) {
    let mine: Vec<_> = events
        .iter()
        .filter(|(t, i, _)| pick(i) && *t <= until)
        .collect();
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
        return (0.0, 0);
    };
    let total: u64 = mine.iter().map(|(_, _, n)| n).sum();
    let span = (last.0 - first.0).as_secs_f64().max(1e-9);
    ((total - first.2) as f64 / span, total)
}

struct Scenario {
    label: &'static str,
    node: u64,
    window: u64,
    /// How many of the images are pulled for the window; the rest are not.
    in_window: usize,
}

/// One run: a fresh containerd, every image at once through one Engine.
/// Returns (node rate, window rate, node bytes, window bytes).
async fn run(s: &Scenario, refs: &[ImageRef], version: Version) -> Result<[f64; 4]> {
    let node = TestContainerd::start(version).await?;
    let mut cfg = AgentConfig::default();
    cfg.runtime.socket = node.socket.clone();
    cfg.runtime.root = Some(node.root.clone());
    cfg.registry.hosts_dir = None;
    cfg.registry.docker_config.clear();
    cfg.pacing.max_concurrent_pulls = refs.len();
    // A stream for every blob, so the window's pulls can reach their cap
    // beside the others (slots are otherwise handed out by start order).
    cfg.pacing.max_concurrent_blobs = 32;
    cfg.pacing.bandwidth = ByteSize(s.node);
    cfg.pacing.disk_floor = DiskFloor::Bytes(0);
    let rec = Arc::new(Recorder::default());
    let stack = setup::connect(&cfg, rec.clone()).await?;
    let opts = |windowed: bool| PullOptions {
        pin: false,
        platform: host_platform(),
        cri_timeout: Duration::from_secs(1800),
        priority: 0,
        bandwidth: windowed.then(|| WindowBandwidth {
            window: "bench-window".into(),
            bytes_per_sec: s.window,
        }),
    };
    let cancel = CancellationToken::new();
    let all: Vec<(ImageRef, PullOptions)> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), opts(i < s.in_window)))
        .collect();
    try_join_all(all.iter().map(|(r, o)| stack.engine.warm(r, o, &cancel))).await?;
    let windowed: Vec<String> = refs[..s.in_window].iter().map(|r| r.to_string()).collect();
    let events = rec.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let in_window = |i: &str| windowed.iter().any(|w| w == i);
    // The node is measured while both groups pull (all of the time when
    // every pull is in the window); the window over all of its own bytes.
    let last_of =
        |pick: &dyn Fn(&str) -> bool| events.iter().filter(|(_, i, _)| pick(i)).map(|e| e.0).max();
    let end = Instant::now();
    let both_until = [last_of(&in_window), last_of(&|i| !in_window(i))]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
    let (node_rate, _) = rate(&events, both_until, |_| true);
    let node_bytes: u64 = events.iter().map(|e| e.2).sum();
    let (window_rate, window_bytes) = rate(&events, end, in_window);
    drop(stack);
    drop(node);
    sync().await;
    Ok([
        node_rate,
        window_rate,
        node_bytes as f64,
        window_bytes as f64,
    ])
}

async fn sync() {
    let _ = tokio::process::Command::new("sync").status().await;
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn error_pct(got: f64, cap: u64) -> f64 {
    100.0 * (got - cap as f64) / cap as f64
}

#[tokio::main]
async fn main() -> Result<()> {
    let version = match std::env::var("PREWARM_BENCH_CONTAINERD").as_deref() {
        Err(_) | Ok("2" | "2.x" | "") => Version::V2,
        Ok("1.7") => Version::V17,
        Ok(other) => bail!("PREWARM_BENCH_CONTAINERD={other}: expected 2 or 1.7"),
    };
    let env = |name: &str, default: u64| -> Result<u64> {
        match std::env::var(name) {
            Ok(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
            Err(_) => Ok(default),
        }
    };
    let runs = env("PREWARM_BENCH_BW_RUNS", 3)?.max(1) as usize;
    let node_cap = env("PREWARM_BENCH_BW_NODE_MIBPS", 40)?.max(1) << 20;

    eprintln!(
        "bench: generating {IMAGES} images, {} MiB uncompressed",
        CORPUS_BYTES >> 20
    );
    let corpus = tokio::task::spawn_blocking(|| bench_corpus(IMAGES, CORPUS_BYTES, 0xba7d)).await?;
    let registry = Registry::start(None).await?;
    registry.pusher().push_corpus(&corpus).await?;
    let refs: Vec<ImageRef> = corpus
        .iter()
        .map(|(repo, tag, _)| format!("{}/{repo}:{tag}", registry.host()).parse())
        .collect::<Result<_, _>>()?;

    let scenarios = [
        Scenario {
            label: "window 2× the node cap, all 6 pulls in the window",
            node: node_cap,
            window: 2 * node_cap,
            in_window: IMAGES,
        },
        Scenario {
            label: "window ½ the node cap, 4 of 6 pulls in the window",
            node: node_cap,
            window: node_cap / 2,
            in_window: 4,
        },
    ];
    let mut o = String::new();
    o += &format!(
        "{IMAGES} images pulled at once through one Engine ({} MiB uncompressed, shared base \
         layer), loopback `docker-registry`, containerd {}, a fresh containerd per run, \
         median of {runs} runs.\n\n",
        CORPUS_BYTES >> 20,
        version.label()
    );
    o += "| Scenario | Node cap (MiB/s) | Node measured (MiB/s) | Node error | Window cap (MiB/s) | Window measured (MiB/s) | Window error | Fetched node / window (MB) | Target |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for s in &scenarios {
        let mut samples = Vec::new();
        for i in 0..runs {
            eprintln!("bench: {} (run {}/{runs})", s.label, i + 1);
            let r = run(s, &refs, version).await?;
            eprintln!(
                "bench:   node {:.1} MiB/s, window {:.1} MiB/s",
                r[0] / MIB,
                r[1] / MIB
            );
            samples.push(r);
        }
        let col = |k: usize| median(samples.iter().map(|r| r[k]).collect());
        let (node, window) = (col(0), col(1));
        let node_err = error_pct(node, s.node);
        // The window's pulls are bounded by the tighter of the two caps.
        let window_bound = s.window.min(s.node);
        let window_err = error_pct(window, window_bound);
        let held = node_err.abs() <= 10.0 && window_err.abs() <= 10.0;
        o += &format!(
            "| {} | {:.0} | {:.2} | {node_err:+.1}% | {:.0} | {:.2} | {window_err:+.1}% of {:.0} | {:.0} / {:.0} | both ±10%: {} |\n",
            s.label,
            s.node as f64 / MIB,
            node / MIB,
            s.window as f64 / MIB,
            window / MIB,
            window_bound as f64 / MIB,
            col(2) / MB,
            col(3) / MB,
            if held { "met" } else { "**missed**" },
        );
    }
    o += "\nMeasured = bytes after the first chunk ÷ (last chunk − first chunk). Window: the \
          window's pulls, all their bytes. Node: every pull, while both the window's and the \
          other pulls are still moving bytes (the whole run when all pulls are in the window). \
          When the window is wider than the node, its pulls are bounded by the node cap, and \
          that is what its error is against. `maxConcurrentBlobs` 32, so every blob has a \
          stream.\n";
    print!("{o}");
    Ok(())
}
