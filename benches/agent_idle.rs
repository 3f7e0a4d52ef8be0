//! Agent idle benchmark: the release `prewarm agent` warms images itself on a
//! fresh containerd from the loopback test registry, then idles; its RSS and
//! CPU are sampled once all images are warm. Each run also restarts the agent
//! on the now-warm node (the fresh-start case) for comparison. Prints Markdown
//! to stdout, progress to stderr. Reported, never asserted.
//!
//! `cargo bench --bench agent_idle` (as root; `scripts/bench.sh` does the setup).
//! Env: `PREWARM_BENCH_CONTAINERD` = `2` (default) or `1.7`,
//! `PREWARM_BENCH_RUNS` (3), `PREWARM_BENCH_SAMPLE` (seconds sampled, 20),
//! `PREWARM_BENCH_IMAGES` (images in the corpus case, 6),
//! `PREWARM_BENCH_BYTES` (their uncompressed total, 384MiB),
//! `PREWARM_BENCH_AGENT_ENV` (`K=V,...` added to the agent's environment, to
//! measure e.g. `MALLOC_ARENA_MAX=1`), `PREWARM_BENCH_MANIFEST_ENV` (`0`: not
//! the `env` of `daemonset/agent-daemonset.yaml`, which the agent gets by
//! default), `PREWARM_BENCH_AGENT_BIN` (another `prewarm` binary to run as
//! the agent, e.g. a copy of an earlier build).

#[path = "common/host.rs"]
mod host;
use host::{clock_ticks, cpu_model, load, stat_ticks, verdict};

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use prewarm::config::{ByteSize, ImageRef};
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::{bench_corpus, CorpusEntry};
use prewarm::testkit::registry::Registry;

/// Cargo builds the binary (bench profile = release) for benches.
const AGENT_BIN: &str = env!("CARGO_BIN_EXE_prewarm");

fn agent_bin() -> String {
    std::env::var("PREWARM_BENCH_AGENT_BIN").unwrap_or_else(|_| AGENT_BIN.to_string())
}
const MB: f64 = 1e6;
/// Between "all warm" (or ready) and the first sample.
const SETTLE: Duration = Duration::from_secs(5);
const WARM_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The user's report: one image of about this size.
const SINGLE_IMAGE_BYTES: usize = 32 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
        Err(_) => Ok(default),
    }
}

fn read_proc(pid: u32, file: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).with_context(|| format!("/proc/{pid}"))
}

/// A `/proc/<pid>/status` field (KiB for the memory fields).
fn status_field(text: &str, field: &str) -> Result<u64> {
    let line = text.lines().find(|l| l.starts_with(field));
    let v = line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    v.with_context(|| format!("{field} in /proc/<pid>/status"))
}

/// utime + stime in clock ticks (fields 14 and 15; `comm` may hold spaces).
fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_ticks(&read_proc(pid, "stat")?)
}

/// One agent, sampled idle.
#[derive(Clone, Copy, Default)]
struct Footprint {
    rss_median: f64,
    rss_max: f64,
    /// Of the last sample: heap and other private memory vs the mapped binary.
    anon: f64,
    file: f64,
    hwm: f64,
    cpu_pct: f64,
    threads: f64,
    /// Start until all images were warm (s).
    warm_secs: f64,
}

/// Which agent of a run.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// It pulled the images itself.
    Warmed,
    /// Restarted on the node where they are already warm.
    FreshStart,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Warmed => "after warming them itself",
            Phase::FreshStart => "fresh start, images already warm",
        }
    }
}

struct Case {
    name: String,
    refs: Vec<ImageRef>,
    compressed: u64,
}

struct Agent {
    child: Child,
    pid: u32,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    log: std::path::PathBuf,
}

impl Agent {
    async fn start(
        dir: &Path,
        node: &TestContainerd,
        refs: &[ImageRef],
        tag: &str,
    ) -> Result<Self> {
        let config = dir.join("agent.yaml");
        let images: String = refs.iter().map(|r| format!("  - image: {r}\n")).collect();
        // Defaults otherwise, as a user's agent without a coordinator.
        let yaml = format!(
            "runtime:\n  socket: {}\n  root: {}\nregistry:\n  dockerConfig: []\n  hostsDir: null\n\
             pacing:\n  diskFloor: 0\nstate:\n  path: {}\nimages:\n{images}",
            node.socket.display(),
            node.root.display(),
            dir.join("learned.json").display(),
        );
        std::fs::write(&config, yaml)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = dir.join(format!("agent-{tag}.log"));
        let bin = agent_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["agent", "--listen", &addr.to_string(), "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        for (k, v) in agent_env()? {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
        let pid = child.id().context("agent pid")?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Agent {
            child,
            pid,
            addr,
            http,
            log,
        })
    }

    async fn metrics(&self) -> Option<String> {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// Polls until `prewarm_images_warm` equals `want`; returns the seconds it took.
    async fn wait_warm(&mut self, want: usize) -> Result<f64> {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self.metrics().await {
                if gauge(&m, "prewarm_images_warm") == Some(want as f64) {
                    return Ok(t0.elapsed().as_secs_f64());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("agent exited ({status}); log:\n{}", self.log_tail());
            }
            if t0.elapsed() > WARM_TIMEOUT {
                bail!(
                    "images not warm within {WARM_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// After `SETTLE`, VmRSS every second for `sample`, CPU over the whole of it.
    async fn sample(&self, sample: Duration, warm_secs: f64) -> Result<Footprint> {
        tokio::time::sleep(SETTLE).await;
        let (t0, c0) = (Instant::now(), cpu_ticks(self.pid)?);
        let mut rss = Vec::new();
        let mut status = String::new();
        while t0.elapsed() < sample {
            tokio::time::sleep(Duration::from_secs(1)).await;
            status = read_proc(self.pid, "status")?;
            rss.push(status_field(&status, "VmRSS:")? as f64 / 1024.0);
        }
        let ticks = (cpu_ticks(self.pid)? - c0) as f64;
        let secs = t0.elapsed().as_secs_f64();
        let kib = |f: &str| Ok::<_, anyhow::Error>(status_field(&status, f)? as f64 / 1024.0);
        Ok(Footprint {
            rss_median: median(&rss),
            rss_max: rss.iter().copied().fold(0.0, f64::max),
            anon: kib("RssAnon:")?,
            file: kib("RssFile:")?,
            hwm: kib("VmHWM:")?,
            cpu_pct: 100.0 * ticks / clock_ticks().await / secs,
            threads: status_field(&status, "Threads:")? as f64,
            warm_secs,
        })
    }

    async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    let line = metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The literal `env` values of the shipped DaemonSet's agent container (what
/// an installed agent runs with), unless `PREWARM_BENCH_MANIFEST_ENV=0`.
fn manifest_env() -> Result<Vec<(String, String)>> {
    if std::env::var("PREWARM_BENCH_MANIFEST_ENV").as_deref() == Ok("0") {
        return Ok(Vec::new());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset/agent-daemonset.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let ds: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    let containers = ds["spec"]["template"]["spec"]["containers"].as_array();
    let agent = containers
        .and_then(|cs| cs.iter().find(|c| c["name"] == "agent"))
        .with_context(|| format!("{}: no agent container", path.display()))?;
    let env = agent["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // `valueFrom` entries (NODE_NAME) need a cluster; the agent needs none here.
    Ok(env
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect())
}

/// The manifest's environment, then `PREWARM_BENCH_AGENT_ENV` (`K=V,...`)
/// on top.
fn agent_env() -> Result<Vec<(String, String)>> {
    let mut env = manifest_env()?;
    let raw = std::env::var("PREWARM_BENCH_AGENT_ENV").unwrap_or_default();
    for kv in raw.split(',').filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("PREWARM_BENCH_AGENT_ENV: {kv:?} is not K=V"))?;
        env.retain(|(name, _)| name != k.trim());
        env.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(env)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => (v[(n - 1) / 2] + v[n / 2]) / 2.0,
    }
}

/// One run of a case: a fresh containerd, an agent that warms the images
/// and idles, then a second agent on the warm node.
async fn run_case(version: Version, case: &Case, sample: Duration) -> Result<[Footprint; 2]> {
    let mut node = TestContainerd::start(version).await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let mut a = Agent::start(dir.path(), &node, &case.refs, "warm").await?;
        let warm = a.wait_warm(case.refs.len()).await?;
        let warmed = a.sample(sample, warm).await?;
        a.stop().await?;
        let mut b = Agent::start(dir.path(), &node, &case.refs, "fresh").await?;
        let ready = b.wait_warm(case.refs.len()).await?;
        let fresh = b.sample(sample, ready).await?;
        b.stop().await?;
        anyhow::Ok([warmed, fresh])
    }
    .await
    .with_context(|| format!("{}; containerd log:\n{}", case.name, node.log_tail()));
    node.stop().await;
    drop(node);
    let _ = Command::new("sync").status().await;
    result
}

/// Per-field medians over runs.
fn medians(runs: &[Footprint]) -> Footprint {
    let m = |f: fn(&Footprint) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Footprint {
        rss_median: m(|f| f.rss_median),
        rss_max: m(|f| f.rss_max),
        anon: m(|f| f.anon),
        file: m(|f| f.file),
        hwm: m(|f| f.hwm),
        cpu_pct: m(|f| f.cpu_pct),
        threads: m(|f| f.threads),
        warm_secs: m(|f| f.warm_secs),
    }
}

fn compressed(corpus: &[CorpusEntry]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for (_, _, built) in corpus {
        for img in built.images() {
            for l in &img.layers {
                if seen.insert(l.digest.clone()) {
                    n += l.data.len() as u64;
                }
            }
        }
    }
    n
}

async fn push_case(
    registry: &Registry,
    name: String,
    prefix: &str,
    corpus: Vec<CorpusEntry>,
) -> Result<Case> {
    // Distinct repos per case, so the cases share no blobs.
    let corpus: Vec<CorpusEntry> = corpus
        .into_iter()
        .map(|(repo, tag, b)| (format!("{prefix}/{repo}"), tag, b))
        .collect();
    registry.pusher().push_corpus(&corpus).await?;
    let refs = corpus
        .iter()
        .map(|(repo, tag, _)| format!("{}/{repo}:{tag}", registry.host()).parse())
        .collect::<Result<_, _>>()?;
    Ok(Case {
        name,
        refs,
        compressed: compressed(&corpus),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let version = match std::env::var("PREWARM_BENCH_CONTAINERD").as_deref() {
        Err(_) | Ok("2" | "2.x" | "") => Version::V2,
        Ok("1.7") => Version::V17,
        Ok(other) => bail!("PREWARM_BENCH_CONTAINERD={other}: expected 2 or 1.7"),
    };
    let runs: usize = env_or("PREWARM_BENCH_RUNS", 3)?.max(1);
    let sample = Duration::from_secs(env_or("PREWARM_BENCH_SAMPLE", 20)?);
    let images: usize = env_or("PREWARM_BENCH_IMAGES", 6)?.max(1);
    let bytes: ByteSize = env_or("PREWARM_BENCH_BYTES", ByteSize(384 << 20))?;
    let env_label = agent_env()?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");

    let load_start = load();
    eprintln!("bench: generating images");
    let (single, corpus) = tokio::task::spawn_blocking(move || {
        (
            bench_corpus(1, SINGLE_IMAGE_BYTES, 0x1d1e),
            bench_corpus(images, bytes.0 as usize, 0xbe7c),
        )
    })
    .await?;
    let registry = Registry::start(None).await?;
    let cases = [
        push_case(&registry, "one image".into(), "one", single).await?,
        push_case(&registry, format!("{images} images"), "corpus", corpus).await?,
    ];

    let mut results: Vec<[Vec<Footprint>; 2]> = cases.iter().map(|_| Default::default()).collect();
    for run in 1..=runs {
        for (case, res) in cases.iter().zip(&mut results) {
            let [w, f] = run_case(version, case, sample).await?;
            eprintln!(
                "bench: run {run}/{runs} {:<10} warmed in {:.1}s: RSS {:.1} MiB (HWM {:.1}); fresh start: RSS {:.1} MiB (HWM {:.1})",
                case.name, w.warm_secs, w.rss_median, w.hwm, f.rss_median, f.hwm
            );
            res[0].push(w);
            res[1].push(f);
        }
    }

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut o = format!(
        "Machine: {nproc} CPUs ({}), kernel {}, containerd {}; registry: local `docker-registry` \
         on loopback; load average {load_start} at start, {} at end. {runs} run(s) per case, \
         each on a fresh containerd; {}s settle, then VmRSS every second for {}s; medians over runs.{}\n\n",
        cpu_model(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        version.label(),
        load(),
        SETTLE.as_secs(),
        sample.as_secs(),
        if env_label.is_empty() {
            String::new()
        } else {
            format!(" Agent environment: `{env_label}`.")
        },
    );
    o += "| Agent idle (`prewarm agent`) | Compressed (MB) | Warm after (s) | RSS (MiB) | RSS max (MiB) | RssAnon / RssFile (MiB) | VmHWM (MiB) | CPU | Threads | Target |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for (case, res) in cases.iter().zip(&results) {
        for (phase, fps) in [Phase::Warmed, Phase::FreshStart].into_iter().zip(res) {
            let f = medians(fps);
            o += &format!(
                "| {}, {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} | {:.2}% | {:.0} | RSS ≤ 15 MiB: {}; CPU ≈ 0: {} |\n",
                case.name,
                phase.label(),
                case.compressed as f64 / MB,
                f.warm_secs,
                f.rss_median,
                f.rss_max,
                f.anon,
                f.file,
                f.hwm,
                f.cpu_pct,
                f.threads,
                verdict(f.rss_max <= 15.0),
                verdict(f.cpu_pct < 0.5),
            );
        }
    }
    print!("{o}");
    Ok(())
}
