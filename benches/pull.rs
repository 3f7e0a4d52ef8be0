//! Pull benchmark: prewarm against `ctr` and CRI PullImage, each on a cold
//! containerd fed by the same warm local registry, reached over loopback and
//! over an emulated WAN link; plus bandwidth-cap accuracy. Prints Markdown to
//! stdout, progress to stderr.
//!
//! `cargo bench --bench pull` (as root; `scripts/bench.sh` does the setup).
//! Env: `PREWARM_BENCH_CONTAINERD` = `2` (default) or `1.7`,
//! `PREWARM_BENCH_IMAGES` (8), `PREWARM_BENCH_BYTES` (uncompressed total,
//! 640MiB; units as in the agent config), `PREWARM_BENCH_RUNS` (3),
//! `PREWARM_BENCH_WAN` (`1`; `0` skips the WAN scenario).

#[path = "common/host.rs"]
mod host;
use host::{clock_ticks, cpu_model, load, stat_ticks, verdict};

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::try_join_all;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use prewarm::config::{AgentConfig, ByteSize, DiskFloor, ImageRef};
use prewarm::node::auth::Credential;
use prewarm::node::containerd::Containerd;
use prewarm::node::manifest::host_platform;
use prewarm::node::pull::{PullObserver, PullOptions};
use prewarm::node::runtime::ImageStore;
use prewarm::node::setup;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::{bench_corpus, CorpusEntry};
use prewarm::testkit::registry::{Registry, DEFAULT_REGISTRY_BIN, REGISTRY_BIN_ENV};

const MIB: f64 = (1 << 20) as f64;
const MB: f64 = 1e6;
const CRI_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BANDWIDTH_CAP: u64 = 40 << 20;

/// The emulated WAN link, see `scripts/wan-netns.sh`.
const WAN_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wan-netns.sh");
/// The namespace, devices and addresses exist once per machine: a concurrent
/// bench (a CI `cargo test` runs this one too) waits for this lock.
const WAN_LOCK: &str = "/run/prewarm-wan.lock";
const WAN_LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
const WAN_NS: &str = "prewarm-wan";
const WAN_HOST_IF: &str = "pwan-h";
const WAN_NS_IF: &str = "pwan-n";
/// The registry inside the namespace.
const WAN_REGISTRY: &str = "10.211.0.2:5000";
/// Each way, so the round trip is twice this.
const WAN_DELAY: Duration = Duration::from_millis(20);
/// `tbf` rate on each direction.
const WAN_RATE_MBIT: u64 = 400;
/// The delay line sends a packet this much early rather than sleep again.
const WAN_SLACK: Duration = Duration::from_micros(200);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Prewarm,
    CtrSeq,
    CriSeq,
    CriAll,
}

impl Method {
    const ALL: [Self; 4] = [Self::Prewarm, Self::CtrSeq, Self::CriSeq, Self::CriAll];

    fn label(self) -> &'static str {
        match self {
            Method::Prewarm => "prewarm, all images through one Engine",
            Method::CtrSeq => "`ctr images pull`, one after another",
            Method::CriSeq => "CRI PullImage, one after another",
            Method::CriAll => "CRI PullImage, all at once",
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
        Err(_) => Ok(default),
    }
}

/// Records when bytes flowed (first and last chunk) and how many.
#[derive(Default)]
struct Recorder(Mutex<Flow>);

#[derive(Default, Clone, Copy)]
struct Flow {
    first: Option<Instant>,
    last: Option<Instant>,
    first_chunk: u64,
    total: u64,
}

impl PullObserver for Recorder {
    fn bytes(&self, _image: &str, n: u64) {
        let now = Instant::now();
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if f.first.is_none() {
            f.first = Some(now);
            f.first_chunk = n;
        }
        f.last = Some(now);
        f.total += n;
    }
}

impl Flow {
    /// Seconds from the first to the last chunk.
    fn span(&self) -> f64 {
        let span = self.first.zip(self.last).map(|(f, l)| l - f);
        span.unwrap_or_default().as_secs_f64()
    }

    /// Bytes/s over the span; the first chunk arrived before it started.
    fn rate(&self) -> f64 {
        (self.total - self.first_chunk) as f64 / self.span().max(1e-9)
    }
}

/// One prewarm warm of the whole set.
struct Warm {
    wall: f64,
    /// Start until the last byte arrived: phase 1 (CRI unpack overlaps its tail).
    fetch: f64,
    flow: Flow,
    runtime_version: String,
}

async fn warm_all(
    node: &TestContainerd,
    refs: &[ImageRef],
    bandwidth: u64,
    hosts_dir: Option<PathBuf>,
) -> Result<Warm> {
    let mut cfg = AgentConfig::default();
    cfg.runtime.socket = node.socket.clone();
    cfg.runtime.root = Some(node.root.clone());
    cfg.registry.hosts_dir = hosts_dir;
    cfg.registry.docker_config.clear();
    cfg.pacing.max_concurrent_pulls = refs.len().max(1);
    cfg.pacing.bandwidth = ByteSize(bandwidth);
    cfg.pacing.disk_floor = DiskFloor::Bytes(0);
    let rec = Arc::new(Recorder::default());
    let stack = setup::connect(&cfg, rec.clone()).await?;
    let opts = PullOptions {
        pin: false,
        platform: host_platform(),
        cri_timeout: CRI_TIMEOUT,
        priority: 0,
        bandwidth: None,
    };
    let cancel = CancellationToken::new();
    let start = Instant::now();
    try_join_all(refs.iter().map(|r| stack.engine.warm(r, &opts, &cancel))).await?;
    let wall = start.elapsed().as_secs_f64();
    let flow = *rec.0.lock().unwrap_or_else(|p| p.into_inner());
    let fetch = flow
        .last
        .map_or(0.0, |l| l.duration_since(start).as_secs_f64());
    Ok(Warm {
        wall,
        fetch,
        flow,
        runtime_version: stack.runtime_version,
    })
}

async fn cri_pull(node: &TestContainerd, refs: &[ImageRef], all_at_once: bool) -> Result<f64> {
    let ctd = Containerd::connect(&node.socket, "k8s.io").await?;
    let names: Vec<String> = refs.iter().map(ImageRef::cri_name).collect();
    let anon = Credential::Anonymous;
    let start = Instant::now();
    if all_at_once {
        try_join_all(names.iter().map(|n| ctd.pull_image(n, &anon, CRI_TIMEOUT))).await?;
    } else {
        for n in &names {
            ctd.pull_image(n, &anon, CRI_TIMEOUT).await?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the `ctr` that ships with this containerd against the node.
async fn ctr(node: &TestContainerd, args: &[&str]) -> Result<String> {
    let out = Command::new(node.version.binary().with_file_name("ctr"))
        .arg("-a")
        .arg(&node.socket)
        .args(["-n", "k8s.io"])
        .args(args)
        // `--snapshotter` of `images pull` (unpack target) and `snapshots`.
        .env("CONTAINERD_SNAPSHOTTER", "overlayfs")
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn ctr_pull(node: &TestContainerd, refs: &[ImageRef]) -> Result<f64> {
    let platform = host_platform().to_string();
    let start = Instant::now();
    for r in refs {
        let r = r.to_string();
        ctr(
            node,
            &[
                "images",
                "pull",
                "--plain-http",
                "--platform",
                &platform,
                &r,
            ],
        )
        .await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Committed overlayfs snapshots: one per distinct layer chain once unpacked.
async fn committed_snapshots(node: &TestContainerd) -> Result<usize> {
    let out = ctr(node, &["snapshots", "ls"]).await?;
    Ok(out.lines().filter(|l| l.contains("Committed")).count())
}

struct Sample {
    wall: f64,
    fetch: Option<f64>,
    snapshots: usize,
    /// Blob bytes the registry sent (its access log).
    served: u64,
}

/// Blob bytes a `docker-registry` access log records as sent (combined
/// log format: `"GET /v2/<repo>/blobs/<digest> HTTP/1.1" <status> <bytes>`).
fn blob_bytes_served(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("\"GET /v2/")?;
            let (path, rest) = rest.split_once('"')?;
            if !path.contains("/blobs/") {
                return None;
            }
            let mut f = rest.split_whitespace();
            let status: u16 = f.next()?.parse().ok()?;
            let bytes: u64 = f.next()?.parse().ok()?;
            matches!(status, 200 | 206).then_some(bytes)
        })
        .sum()
}

/// Where the node pulls from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Loopback,
    Wan,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Loopback => "loopback",
            Scenario::Wan => "wan",
        }
    }
}

/// containerd only talks plain HTTP to localhost unless a hosts.toml says so;
/// prewarm reads the same file.
fn plain_http_hosts(node: &TestContainerd, host: &str) -> Result<()> {
    let dir = node.hosts_dir.join(host);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(())
}

/// One method on a fresh containerd, which is removed afterwards.
async fn measure(
    m: Method,
    version: Version,
    refs: &[ImageRef],
    sc: Scenario,
    registry_log: &Path,
) -> Result<Sample> {
    let mut node = TestContainerd::start(version).await?;
    let served_before = blob_bytes_served(registry_log);
    let result = async {
        let hosts_dir = match sc {
            Scenario::Loopback => None,
            Scenario::Wan => {
                plain_http_hosts(&node, WAN_REGISTRY)?;
                Some(node.hosts_dir.clone())
            }
        };
        let (wall, fetch) = match m {
            Method::Prewarm => {
                let w = warm_all(&node, refs, 0, hosts_dir).await?;
                (w.wall, Some(w.fetch))
            }
            Method::CtrSeq => (ctr_pull(&node, refs).await?, None),
            Method::CriSeq => (cri_pull(&node, refs, false).await?, None),
            Method::CriAll => (cri_pull(&node, refs, true).await?, None),
        };
        let snapshots = committed_snapshots(&node).await?;
        anyhow::Ok(Sample {
            wall,
            fetch,
            snapshots,
            served: blob_bytes_served(registry_log) - served_before,
        })
    }
    .await
    .with_context(|| {
        let (label, log) = (m.label(), node.log_tail());
        format!("{} ({label}); containerd log:\n{log}", sc.name())
    });
    node.stop().await;
    drop(node);
    // Flush the deleted node's writeback so it doesn't bill the next one.
    let _ = Command::new("sync").status().await;
    result
}

/// (median, min, max)
fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = (v[(n - 1) / 2] + v[n / 2]) / 2.0;
    (median, v[0], v[n - 1])
}

struct CorpusStats {
    uncompressed: u64,
    distinct_compressed: u64,
    distinct_layers: usize,
}

/// Layer bytes summed per image, and what a cold node has to download.
fn corpus_stats(corpus: &[CorpusEntry]) -> Result<CorpusStats> {
    let mut sizes: HashMap<String, (u64, u64)> = HashMap::new();
    let mut uncompressed = 0;
    for (_, _, built) in corpus {
        for img in built.images() {
            for l in &img.layers {
                if !sizes.contains_key(&l.digest) {
                    let mut gz = flate2::read::GzDecoder::new(&l.data[..]);
                    let n = std::io::copy(&mut gz, &mut std::io::sink())?;
                    sizes.insert(l.digest.clone(), (n, l.data.len() as u64));
                }
                uncompressed += sizes[&l.digest].0;
            }
        }
    }
    Ok(CorpusStats {
        uncompressed,
        distinct_compressed: sizes.values().map(|s| s.1).sum(),
        distinct_layers: sizes.len(),
    })
}

/// One thread of this process (`/proc/<tid>/stat` would sum all threads).
fn thread_cpu_ticks(tid: u32) -> Result<u64> {
    let path = format!("/proc/self/task/{tid}/stat");
    stat_ticks(&std::fs::read_to_string(&path).context(path)?)
}

/// Just enough of `<linux/if_tun.h>`, threads and `flock` to bridge two TUN
/// devices from userspace.
mod sys {
    use std::ffi::{c_int, c_short, c_ulong};
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;

    extern "C" {
        fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
        fn setns(fd: c_int, nstype: c_int) -> c_int;
        fn sched_setscheduler(pid: c_int, policy: c_int, param: *const c_int) -> c_int;
        fn gettid() -> c_int;
        fn flock(fd: c_int, operation: c_int) -> c_int;
    }

    const TUNSETIFF: c_ulong = 0x4004_54ca;
    const TUNSETOFFLOAD: c_ulong = 0x4004_54d0;
    const IFF_TUN: c_short = 0x0001;
    const IFF_NO_PI: c_short = 0x1000;
    const IFF_VNET_HDR: c_short = 0x4000;
    const TUN_F_CSUM: c_ulong = 0x01;
    const TUN_F_TSO4: c_ulong = 0x02;
    const TUN_F_TSO6: c_ulong = 0x04;
    const CLONE_NEWNET: c_int = 0x4000_0000;
    const SCHED_FIFO: c_int = 1;
    const LOCK_EX: c_int = 2;
    const LOCK_NB: c_int = 4;

    /// `struct ifreq`: the name, then a 24-byte union led by `ifr_flags`.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: c_short,
        rest: [u8; 22],
    }

    fn check(rc: c_int) -> io::Result<()> {
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Attaches to the existing TUN device `name` in the named network
    /// namespace (`None`: this process's). With a virtio-net header and TSO,
    /// reads and writes carry whole TCP segments of up to 64 KiB.
    pub fn attach(name: &str, netns: Option<&str>) -> io::Result<File> {
        let name = name.to_string();
        let netns = netns.map(|n| format!("/run/netns/{n}"));
        // TUNSETIFF looks the device up in the namespace that opened
        // /dev/net/tun: a throwaway thread enters it; the fd outlives it.
        let attach = move || {
            if let Some(ns) = netns {
                let f = File::open(&ns)?;
                check(unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) })?;
            }
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            let mut req = IfReq {
                name: [0; 16],
                flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
                rest: [0; 22],
            };
            let n = name.len().min(15);
            req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
            check(unsafe { ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })?;
            let offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            check(unsafe { ioctl(tun.as_raw_fd(), TUNSETOFFLOAD, offload) })?;
            Ok(tun)
        };
        std::thread::spawn(attach)
            .join()
            .map_err(|_| io::Error::other("TUN attach thread panicked"))?
    }

    /// Best effort SCHED_FIFO for the calling thread, so packets keep their
    /// schedule while unpacking saturates the CPUs (as network softirqs do).
    pub fn realtime() {
        let priority: c_int = 10;
        unsafe { sched_setscheduler(0, SCHED_FIFO, &priority) };
    }

    /// The calling thread's id (`/proc/<tid>/stat` has its CPU time).
    pub fn tid() -> u32 {
        unsafe { gettid() as u32 }
    }

    /// An exclusive `flock` on `path`, held until the file is closed;
    /// `Ok(None)` if another process holds it.
    pub fn try_lock(path: &str) -> io::Result<Option<File>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        if unsafe { flock(f.as_raw_fd(), LOCK_EX | LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }
}

/// One direction of the link: every packet read from `src` is written to
/// `dst` `delay` later (propagation delay; the rate is `tbf`'s, in the
/// kernel). Its two threads add their ids to `tids` and end once `src` is
/// gone.
fn delay_line(
    src: Arc<File>,
    dst: Arc<File>,
    delay: Duration,
    tids: &Arc<Mutex<Vec<u32>>>,
) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let rx_tids = tids.clone();
    let reader = move || {
        sys::realtime();
        rx_tids.lock().unwrap().push(sys::tid());
        let mut buf = vec![0; 1 << 17];
        loop {
            match (&*src).read(&mut buf) {
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    };
    let tx_tids = tids.clone();
    let writer = move || {
        sys::realtime();
        tx_tids.lock().unwrap().push(sys::tid());
        // The delay is constant, so arrival order is departure order.
        for (due, packet) in rx {
            let now = Instant::now();
            if due > now + WAN_SLACK {
                std::thread::sleep(due - now);
            }
            // A failed write is a lost packet, as on a real link.
            let _ = (&*dst).write(&packet);
        }
    };
    std::thread::Builder::new()
        .name("wan-delay-rx".into())
        .spawn(reader)?;
    std::thread::Builder::new()
        .name("wan-delay-tx".into())
        .spawn(writer)?;
    Ok(())
}

/// The emulated WAN link and a registry behind it, serving the loopback
/// registry's storage. Dropping it tears the namespace down.
struct Wan {
    registry: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
    /// The delay line's threads.
    tids: Arc<Mutex<Vec<u32>>>,
    /// Held until after teardown (fields drop after `Drop::drop`).
    _lock: File,
}

impl Wan {
    async fn start(storage: &Path) -> Result<Wan> {
        let deadline = Instant::now() + WAN_LOCK_WAIT;
        let lock = loop {
            if let Some(f) = sys::try_lock(WAN_LOCK).with_context(|| WAN_LOCK.to_string())? {
                break f;
            }
            if Instant::now() > deadline {
                bail!("another run held {WAN_LOCK} for {WAN_LOCK_WAIT:?}");
            }
            eprintln!("bench: another run is using the WAN link ({WAN_LOCK}); waiting");
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        let out = Command::new(WAN_SCRIPT)
            .arg("up")
            .env("PREWARM_WAN_RATE", format!("{WAN_RATE_MBIT}mbit"))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {WAN_SCRIPT}"))?;
        // From here on Drop cleans up, also after a partial `up`.
        let mut wan = Wan {
            registry: None,
            dir: tempfile::tempdir()?,
            tids: Arc::default(),
            _lock: lock,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!("{WAN_SCRIPT} up failed: {}", err.trim());
        }
        let host = Arc::new(sys::attach(WAN_HOST_IF, None).context("attaching TUN")?);
        let ns = Arc::new(sys::attach(WAN_NS_IF, Some(WAN_NS)).context("attaching TUN")?);
        delay_line(host.clone(), ns.clone(), WAN_DELAY, &wan.tids)?;
        delay_line(ns, host, WAN_DELAY, &wan.tids)?;

        let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
        let config = wan.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {WAN_REGISTRY}\n",
                q(storage)
            ),
        )?;
        let log_path = wan.dir.path().join("registry.log");
        let log = File::create(&log_path)?;
        let bin = std::env::var(REGISTRY_BIN_ENV).unwrap_or_else(|_| DEFAULT_REGISTRY_BIN.into());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", WAN_NS, &bin, "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = wan.registry.insert(cmd.spawn().context("ip netns exec")?);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = http.get(format!("http://{WAN_REGISTRY}/v2/")).send().await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                return Ok(wan);
            }
            let exited = child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("registry in netns {WAN_NS} not ready ({exited:?}, {r:?}); log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The netns registry's log (its access log counts the bytes sent).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// CPU time the delay line has used so far, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let tids = self.tids.lock().unwrap().clone();
        tids.into_iter().map(thread_cpu_ticks).sum()
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(c) = self.registry.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::process::Command::new(WAN_SCRIPT)
            .arg("down")
            .stdin(Stdio::null())
            .status();
    }
}

/// What the link delivers, measured with the bench's own clients.
struct LinkCheck {
    connect_ms: f64,
    blob_mb: f64,
    blob_rate: f64,
}

/// TCP connect (one round trip), median of 5; then the largest layer over one
/// fresh connection (slow start included), first request byte to last byte.
async fn link_check(corpus: &[CorpusEntry]) -> Result<LinkCheck> {
    let mut ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let conn = tokio::net::TcpStream::connect(WAN_REGISTRY).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(conn);
    }
    let (repo, layer) = corpus
        .iter()
        .flat_map(|(repo, _, b)| b.images().into_iter().map(move |i| (repo, i)))
        .flat_map(|(repo, i)| i.layers.iter().map(move |l| (repo, l)))
        .max_by_key(|(_, l)| l.data.len())
        .context("empty corpus")?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{WAN_REGISTRY}/v2/{repo}/blobs/{}", layer.digest);
    let t = Instant::now();
    let mut resp = http.get(url).send().await?.error_for_status()?;
    let mut n = 0;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len();
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(LinkCheck {
        connect_ms: stats(&ms).0,
        blob_mb: n as f64 / MB,
        blob_rate: n as f64 / secs,
    })
}

/// Every method `runs` times, each on a fresh containerd; methods are
/// interleaved within a run so drift hits all of them alike.
async fn run_methods(
    sc: Scenario,
    version: Version,
    refs: &[ImageRef],
    runs: usize,
    registry_log: &Path,
) -> Result<HashMap<Method, Vec<Sample>>> {
    let mut samples: HashMap<Method, Vec<Sample>> = HashMap::new();
    for run in 1..=runs {
        for m in Method::ALL {
            let s = measure(m, version, refs, sc, registry_log).await?;
            let name = sc.name();
            eprintln!(
                "bench: {name:<8} run {run}/{runs} {:<40} {:>7.2}s",
                m.label(),
                s.wall
            );
            samples.entry(m).or_default().push(s);
        }
    }
    Ok(samples)
}

/// The method table and prewarm's time split for one scenario.
fn method_table(samples: &HashMap<Method, Vec<Sample>>, cs: &CorpusStats, images: usize) -> String {
    let median = |m: Method| stats(&samples[&m].iter().map(|s| s.wall).collect::<Vec<_>>());
    let (cri_seq, cri_all) = (median(Method::CriSeq).0, median(Method::CriAll).0);
    let mut o = String::new();
    o += "| Method | Median (s) | Min (s) | Max (s) | × CRI one-by-one | × CRI all-at-once | MB/s | Blob MB sent by the registry | Snapshots | Target |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    let expected_snaps = 1 + 3 * images;
    for m in Method::ALL {
        let (med, min, max) = median(m);
        let snaps = samples[&m].iter().map(|s| s.snapshots).min().unwrap_or(0);
        let served = stats(
            &samples[&m]
                .iter()
                .map(|s| s.served as f64)
                .collect::<Vec<_>>(),
        );
        let target = match m {
            Method::Prewarm => {
                let ok = med <= 0.5 * cri_seq && med <= cri_all;
                format!("≤ 0.5× one-by-one, ≤ 1.0× all-at-once: {}", verdict(ok))
            }
            _ => String::new(),
        };
        o += &format!(
            "| {} | {med:.2} | {min:.2} | {max:.2} | {:.2}× | {:.2}× | {:.0} | {} | {snaps}/{expected_snaps} | {target} |\n",
            m.label(),
            med / cri_seq,
            med / cri_all,
            cs.distinct_compressed as f64 / MB / med,
            served_cell(served),
        );
    }
    let pw = &samples[&Method::Prewarm];
    let fetch = stats(&pw.iter().filter_map(|s| s.fetch).collect::<Vec<_>>()).0;
    let wall = median(Method::Prewarm).0;
    o += &format!(
        "\nprewarm time split (medians): start → last blob byte {fetch:.2}s \
         (phase 1, parallel fetch; early images' CRI unpack overlaps it), \
         then {:.2}s until the last CRI PullImage returned (unpack tail).\n\n",
        wall - fetch
    );
    o
}

/// "251.3" when every run sent the same bytes, else "min–max".
fn served_cell((_, min, max): (f64, f64, f64)) -> String {
    if min == max {
        format!("{:.1}", min / MB)
    } else {
        format!("{:.1}–{:.1}", min / MB, max / MB)
    }
}

struct WanRuns {
    link: LinkCheck,
    samples: HashMap<Method, Vec<Sample>>,
    /// Wall time of all measurements, and the delay line's CPU time in it.
    wall: f64,
    emulator_cpu: f64,
}

type WanResult = Result<WanRuns, String>;

/// The WAN scenario; the inner error says why it was skipped. Once the link
/// is up, failures are results and fail the bench like loopback ones.
async fn wan_scenario(
    storage: &Path,
    corpus: &[CorpusEntry],
    version: Version,
    runs: usize,
    enabled: bool,
) -> Result<WanResult> {
    if !enabled {
        return Ok(Err("PREWARM_BENCH_WAN=0".into()));
    }
    eprintln!("bench: setting up the emulated WAN link");
    let wan = match Wan::start(storage).await {
        Ok(w) => w,
        Err(e) => {
            let why = format!("could not set up the emulated WAN link: {e:#}");
            eprintln!("bench: WAN scenario skipped: {why}");
            return Ok(Err(why));
        }
    };
    let link = link_check(corpus).await.context("WAN link check")?;
    eprintln!(
        "bench: wan link: TCP connect {:.1} ms, one connection {:.1} MB/s",
        link.connect_ms,
        link.blob_rate / MB
    );
    let refs: Vec<ImageRef> = corpus
        .iter()
        .map(|(repo, tag, _)| format!("{WAN_REGISTRY}/{repo}:{tag}").parse())
        .collect::<Result<_, _>>()?;
    let (t0, c0) = (Instant::now(), wan.cpu_ticks()?);
    let samples = run_methods(Scenario::Wan, version, &refs, runs, &wan.log_path()).await?;
    let emulator_cpu = (wan.cpu_ticks()? - c0) as f64 / clock_ticks().await;
    Ok(Ok(WanRuns {
        link,
        samples,
        wall: t0.elapsed().as_secs_f64(),
        emulator_cpu,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let version = match std::env::var("PREWARM_BENCH_CONTAINERD").as_deref() {
        Err(_) | Ok("2" | "2.x" | "") => Version::V2,
        Ok("1.7") => Version::V17,
        Ok(other) => bail!("PREWARM_BENCH_CONTAINERD={other}: expected 2 or 1.7"),
    };
    let images: usize = env_or("PREWARM_BENCH_IMAGES", 8)?;
    let bytes: ByteSize = env_or("PREWARM_BENCH_BYTES", ByteSize(640 << 20))?;
    let runs: usize = env_or("PREWARM_BENCH_RUNS", 3)?.max(1);
    let wan_enabled = match std::env::var("PREWARM_BENCH_WAN").as_deref() {
        Err(_) | Ok("1" | "") => true,
        Ok("0") => false,
        Ok(other) => bail!("PREWARM_BENCH_WAN={other}: expected 0 or 1"),
    };

    let load_start = load();
    eprintln!("bench: generating {images} images, {bytes} uncompressed");
    let (corpus, cs) = tokio::task::spawn_blocking(move || {
        let corpus = bench_corpus(images, bytes.0 as usize, 0xbe7c);
        let stats = corpus_stats(&corpus);
        (corpus, stats)
    })
    .await?;
    let cs = cs?;
    let registry = Registry::start(None).await?;
    registry.pusher().push_corpus(&corpus).await?;
    let refs: Vec<ImageRef> = corpus
        .iter()
        .map(|(repo, tag, _)| format!("{}/{repo}:{tag}", registry.host()).parse())
        .collect::<Result<_, _>>()?;

    let registry_log = registry.log_path().context("the registry has no log")?;
    let loopback = run_methods(Scenario::Loopback, version, &refs, runs, &registry_log).await?;
    let storage = registry.storage_dir();
    let wan = wan_scenario(&storage, &corpus, version, runs, wan_enabled).await?;

    // Bandwidth cap on a fresh node.
    eprintln!("bench: bandwidth cap {} MiB/s", BANDWIDTH_CAP >> 20);
    let node = TestContainerd::start(version).await?;
    let capped = warm_all(&node, &refs, BANDWIDTH_CAP, None).await?;
    drop(node);

    // Report.
    let mut o = String::new();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    o += &format!(
        "Machine: {nproc} CPUs ({}), kernel {}, containerd {} ({}), \
         registry: local `docker-registry` (plain HTTP); \
         load average {load_start} at start, {} at end.\n\n",
        cpu_model(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        capped.runtime_version,
        version.label(),
        load(),
    );
    o += &format!(
        "Corpus: {images} images, {:.0} MB uncompressed in total ({:.0} MiB), shared base layer; \
         a cold node downloads {} distinct layers, {:.0} MB compressed. {runs} run(s) per method \
         and scenario, each on a fresh containerd.\n\n",
        cs.uncompressed as f64 / MB,
        cs.uncompressed as f64 / MIB,
        cs.distinct_layers,
        cs.distinct_compressed as f64 / MB,
    );
    o += "**Registry on loopback** (`127.0.0.1`, blobs in the page cache):\n\n";
    o += &method_table(&loopback, &cs, images);
    let rtt_ms = 2 * WAN_DELAY.as_millis();
    o += &format!(
        "**Registry over an emulated WAN link: {rtt_ms} ms RTT, {WAN_RATE_MBIT} Mbit/s** \
         (network namespace; {} ms delay line each way, kernel `tbf` at \
         {WAN_RATE_MBIT} Mbit/s each way; `scripts/wan-netns.sh`)",
        WAN_DELAY.as_millis()
    );
    match &wan {
        Ok(w) => {
            o += &format!(
                ". Link check: TCP connect {:.1} ms (median of 5); the largest layer \
                 ({:.0} MB) over one fresh connection at {:.1} MB/s \
                 (link: {:.0} MB/s). The delay line used {:.1} CPU-seconds in the \
                 {:.0} s of measurements ({:.0} % of one CPU).\n\n",
                w.link.connect_ms,
                w.link.blob_mb,
                w.link.blob_rate / MB,
                WAN_RATE_MBIT as f64 * 1e6 / 8.0 / MB,
                w.emulator_cpu,
                w.wall,
                100.0 * w.emulator_cpu / w.wall,
            );
            o += &method_table(&w.samples, &cs, images);
        }
        Err(why) => o += &format!(": _skipped, {why}._\n\n"),
    }

    let achieved = capped.flow.rate();
    let err = 100.0 * (achieved - BANDWIDTH_CAP as f64) / BANDWIDTH_CAP as f64;
    o += "| Bandwidth cap (loopback) | Setting (MiB/s) | Achieved (MiB/s) | Error | Fetched (MB) | First → last byte (s) | Whole warm (s) | Target |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---|\n";
    o += &format!(
        "| `pacing.bandwidth` | {:.1} | {:.2} | {err:+.1}% | {:.0} | {:.2} | {:.2} | ±10%: {} |\n\n",
        BANDWIDTH_CAP as f64 / MIB,
        achieved / MIB,
        capped.flow.total as f64 / MB,
        capped.flow.span(),
        capped.wall,
        verdict(err.abs() <= 10.0),
    );
    print!("{o}");
    Ok(())
}
