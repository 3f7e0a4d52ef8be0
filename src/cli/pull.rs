//! `prewarm pull`: warm images now, with progress bars on a terminal and
//! structured logs elsewhere.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use prewarm::config::reference::ImageRef;
use prewarm::config::units::{ByteSize, DiskFloor};
use prewarm::config::{AgentConfig, CredentialProviderRef, Platform};
use prewarm::node::manifest::host_platform;
use prewarm::node::pull::{PullError, PullObserver, PullOptions, PullOutcome};
use prewarm::node::setup;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image references (tags or digests).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Start from an agent config file; flags below override it.
    #[arg(long, env = "PREWARM_CONFIG")]
    pub config: Option<PathBuf>,
    /// containerd socket (CRI is served on the same socket).
    #[arg(long, env = "PREWARM_SOCKET")]
    pub socket: Option<PathBuf>,
    #[arg(long, env = "PREWARM_NAMESPACE")]
    pub namespace: Option<String>,
    /// containerd's root, whose filesystem the disk floor guards; default:
    /// the root containerd reports, else /var/lib/containerd.
    #[arg(long, env = "PREWARM_ROOT")]
    pub root: Option<PathBuf>,
    /// Platform to pick from image indexes, os/arch[/variant].
    #[arg(long)]
    pub platform: Option<Platform>,
    /// Docker config JSON files (kubernetes.io/dockerconfigjson format).
    #[arg(
        long = "docker-config",
        env = "PREWARM_DOCKER_CONFIG",
        value_delimiter = ','
    )]
    pub docker_config: Vec<PathBuf>,
    /// Kubelet CredentialProviderConfig file.
    #[arg(long, requires = "credential_provider_bin_dir")]
    pub credential_provider_config: Option<PathBuf>,
    /// Directory holding the credential provider binaries.
    #[arg(long)]
    pub credential_provider_bin_dir: Option<PathBuf>,
    /// containerd registry host config dir (hosts.toml), for mirrors.
    #[arg(long, env = "PREWARM_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
    #[arg(long)]
    pub max_concurrent_pulls: Option<usize>,
    /// Node-wide bandwidth cap in bytes/s, e.g. 50MiB; 0 = unlimited.
    #[arg(long)]
    pub bandwidth: Option<ByteSize>,
    /// Free disk to keep, e.g. 10% or 20GiB.
    #[arg(long)]
    pub disk_floor: Option<DiskFloor>,
    /// Pin the images against kubelet image GC.
    #[arg(long)]
    pub pin: bool,
    /// Print one JSON line per image instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn effective_config(a: &PullArgs) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &a.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if let Some(v) = &a.socket {
        cfg.runtime.socket = v.clone();
    }
    if let Some(v) = &a.namespace {
        cfg.runtime.namespace = v.clone();
    }
    if let Some(v) = &a.root {
        cfg.runtime.root = Some(v.clone());
    }
    if a.platform.is_some() {
        cfg.registry.platform = a.platform.clone();
    }
    if !a.docker_config.is_empty() {
        cfg.registry.docker_config = a.docker_config.clone();
    }
    if let (Some(c), Some(b)) = (
        &a.credential_provider_config,
        &a.credential_provider_bin_dir,
    ) {
        cfg.registry.credential_provider = Some(CredentialProviderRef {
            config: c.clone(),
            bin_dir: b.clone(),
        });
    }
    if a.hosts_dir.is_some() {
        cfg.registry.hosts_dir = a.hosts_dir.clone();
    }
    if let Some(v) = a.max_concurrent_pulls {
        anyhow::ensure!(v >= 1, "--max-concurrent-pulls: must be at least 1");
        cfg.pacing.max_concurrent_pulls = v;
    }
    if let Some(v) = a.bandwidth {
        cfg.pacing.bandwidth = v;
    }
    if let Some(v) = &a.disk_floor {
        cfg.pacing.disk_floor = *v;
    }
    Ok(cfg)
}

pub async fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    let images = args
        .images
        .iter()
        .map(|s| s.parse::<ImageRef>())
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = effective_config(&args)?;
    let tty = std::io::stderr().is_terminal() && !args.json;
    let observer = Arc::new(Progress::new(tty));
    let stack = setup::connect_with(&cfg, observer.clone(), setup::RootSetting::Flag)
        .await
        .with_context(|| {
            format!(
                "connecting to containerd at {}",
                cfg.runtime.socket.display()
            )
        })?;
    if args.pin && !stack.pin_supported {
        tracing::warn!(version = %stack.runtime_version, "this containerd ignores the CRI pinned label; images stay unpinned");
    }
    let opts = PullOptions {
        pin: args.pin,
        platform: cfg.registry.platform.clone().unwrap_or_else(host_platform),
        cri_timeout: Duration::from_secs(30 * 60),
        priority: 0,
        bandwidth: None,
    };
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c2.cancel();
        }
    });
    let started = Instant::now();
    let results = futures::future::join_all(
        images
            .iter()
            .map(|img| stack.engine.warm(img, &opts, &cancel)),
    )
    .await;
    observer.clear();
    let mut failed = 0;
    for r in &results {
        match r {
            Ok(o) => print_outcome(o, args.json),
            Err(e) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"image": error_image(e), "error": e.to_string(), "reason": e.reason()})
                    );
                } else {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    let fetched: u64 = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| o.fetched_bytes)
        .sum();
    if !args.json {
        println!(
            "{} of {} images warm, {} fetched in {:.1}s",
            results.len() - failed,
            results.len(),
            human(fetched),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn error_image(e: &PullError) -> String {
    e.to_string()
        .split(": ")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn print_outcome(o: &PullOutcome, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "image": o.image, "digest": o.digest, "imageId": o.image_id,
                "totalBytes": o.total_bytes, "fetchedBytes": o.fetched_bytes,
                "alreadyPresent": o.already_present, "pinned": o.pinned,
                "seconds": o.duration.as_secs_f64(),
            })
        );
    } else {
        let state = if o.already_present {
            "already warm"
        } else {
            "warmed"
        };
        println!(
            "{:<60} {:<12} {:>10} fetched {:>10} total {:>6.1}s{}",
            o.image,
            state,
            human(o.fetched_bytes),
            human(o.total_bytes),
            o.duration.as_secs_f64(),
            if o.pinned { "  pinned" } else { "" }
        );
    }
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// (bar, bytes done, bytes missing, last log line).
type ImageProgress = (Option<ProgressBar>, u64, u64, Instant);

/// Bars on a terminal; otherwise a log line per image every few seconds.
struct Progress {
    bars: Option<MultiProgress>,
    state: Mutex<HashMap<String, ImageProgress>>,
}

impl Progress {
    fn new(tty: bool) -> Self {
        Self {
            bars: tty.then(MultiProgress::new),
            state: Mutex::new(HashMap::new()),
        }
    }
    fn clear(&self) {
        if let Some(m) = &self.bars {
            let _ = m.clear();
        }
    }
}

impl PullObserver for Progress {
    fn resolved(&self, image: &str, total: u64, missing: u64) {
        let bar = self.bars.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(missing));
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(image.to_string());
            b
        });
        if bar.is_none() {
            tracing::info!(
                image,
                total_bytes = total,
                missing_bytes = missing,
                "resolved"
            );
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_string(), (bar, 0, missing, Instant::now()));
    }
    fn bytes(&self, image: &str, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bar, done, total, last)) = st.get_mut(image) {
            *done += n;
            match bar {
                Some(b) => b.inc(n),
                None if last.elapsed() >= Duration::from_secs(2) => {
                    *last = Instant::now();
                    tracing::info!(image, done_bytes = *done, total_bytes = *total, "progress");
                }
                None => {}
            }
        }
    }
    fn finished(&self, image: &str, result: &Result<PullOutcome, PullError>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((Some(b), ..)) = st.remove(image) {
            b.finish_and_clear();
        }
        if self.bars.is_none() {
            match result {
                Ok(o) => tracing::info!(
                    image,
                    fetched_bytes = o.fetched_bytes,
                    seconds = o.duration.as_secs_f64(),
                    already_present = o.already_present,
                    pinned = o.pinned,
                    "warm"
                ),
                Err(e) => tracing::warn!(image, reason = e.reason(), error = %e, "pull failed"),
            }
        }
    }
}
