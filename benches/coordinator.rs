//! Coordinator under load: simulated agents on loopback, each with 50
//! images and steady churn, against the real `prewarm coordinator` process,
//! at 1,000, 2,500 and 5,000 agents (a fresh coordinator per run). Measures
//! sustained update ingest, `/v1/images` latency while loaded, and the
//! coordinator's RSS and peak RSS, so the slope of memory against agents
//! shows. Run with `cargo bench --bench coordinator`.
//!
//! Knobs (environment):
//! - `PREWARM_BENCH_AGENTS`: comma-separated sizes (default `1000,2500,5000`)
//! - `PREWARM_BENCH_RUNS`: runs per size, medians reported (default 3)
//! - `PREWARM_BENCH_UPDATES_PER_SEC`: offered updates/s over all agents at
//!   every size (default 30000)
//! - `PREWARM_BENCH_IMAGES_PER_AGENT` (default 50)
//! - `PREWARM_BENCH_CONNECTIONS`: HTTP/2 connections the agents share
//!   (default 100; 0 = one per agent, as in a cluster)
//! - `PREWARM_BENCH_MEASURE_SECS` (default 15)
//! - `PREWARM_BENCH_BIN`: another `prewarm` binary to measure (A/B runs)
//! - `PREWARM_BENCH_WRAP`: a command the coordinator runs under, e.g.
//!   `heaptrack -o /tmp/coord` (words split on spaces)
//! - `PREWARM_BENCH_COORD_ENV`: `K=V,K=V` set on the coordinator only,
//!   e.g. `MALLOC_ARENA_MAX=1` to try allocator settings

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::link_client::LinkClient;
use prewarm::wire::v1::{agent_message, AgentMessage, Delta, ImageState, Snapshot};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `/proc/<pid>/status` field in MiB (VmRSS, VmHWM, RssAnon...).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The coordinator process: its pid is the wrapper's child when wrapped.
fn coordinator_pid(child: &std::process::Child) -> u32 {
    let wrapped = std::env::var("PREWARM_BENCH_WRAP").is_ok_and(|w| !w.is_empty());
    if !wrapped {
        return child.id();
    }
    // The wrapper (e.g. heaptrack) may exec or fork: take the process named
    // prewarm whose parent chain leads to the child.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "prewarm" && descends_from(pid, child.id()) {
            return pid;
        }
    }
    child.id()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..8 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        match after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

fn image(k: usize, phase: Phase, done: u64) -> ImageState {
    ImageState {
        name: format!(
            "myregistry.azurecr.io/team-{}/service-{k}:1.{}",
            k % 20,
            k % 7
        ),
        phase: phase as i32,
        pinned: phase == Phase::Warm,
        bytes_done: done,
        bytes_total: 300 << 20,
        error: String::new(),
    }
}

async fn counter(http: &str) -> f64 {
    let body = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with("prewarm_coordinator_updates_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn connected(client: &reqwest::Client, http: &str) -> usize {
    let Ok(resp) = client.get(format!("{http}/v1/nodes")).send().await else {
        return 0;
    };
    let nodes: serde_json::Value = resp.json().await.unwrap_or_default();
    nodes
        .as_array()
        .map(|a| a.iter().filter(|n| n["connected"] == true).count())
        .unwrap_or(0)
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Run {
    attached: usize,
    offered: f64,
    ingest: f64,
    p50: f64,
    p99: f64,
    queries: usize,
    rss: f64,
    hwm: f64,
    anon: f64,
    attach_secs: f64,
}

struct Shape {
    agents: usize,
    images: usize,
    /// Offered updates/s over all agents.
    rate: usize,
    conns: usize,
    measure: Duration,
}

fn start_coordinator(tokens: &std::path::Path, grpc: u16, http: u16) -> std::process::Child {
    let bin = std::env::var("PREWARM_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_prewarm").to_string());
    let wrap = std::env::var("PREWARM_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = std::process::Command::new(w);
            c.args(words).arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    for kv in std::env::var("PREWARM_BENCH_COORD_ENV")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.args([
        "coordinator",
        "--grpc-listen",
        &format!("127.0.0.1:{grpc}"),
        "--http-listen",
        &format!("127.0.0.1:{http}"),
    ])
    .args(["--insecure", "--no-watch", "--static-tokens"])
    .arg(tokens)
    .env("RUST_LOG", "warn")
    .spawn()
    .expect("start coordinator")
}

/// One simulated agent: a snapshot, then one changed image every `every`.
async fn agent(ch: tonic::transport::Channel, i: usize, images: usize, every: Duration) {
    let mut client = LinkClient::new(ch);
    let (tx, rx) = mpsc::channel(8);
    let snap = Snapshot {
        node: format!("node-{i}"),
        labels: [(
            "kubernetes.azure.com/agentpool".to_string(),
            format!("pool-{}", i % 10),
        )]
        .into_iter()
        .collect(),
        images: (0..images)
            .map(|k| image((i * 7 + k) % 500, Phase::Warm, 300 << 20))
            .collect(),
        seq: 1,
        pin_supported: true,
        ..Default::default()
    };
    let _ = tx
        .send(AgentMessage {
            body: Some(agent_message::Body::Snapshot(snap)),
        })
        .await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer tok-{i}").parse().unwrap());
    let Ok(resp) = client.attach(req).await else {
        return;
    };
    let mut inbound = resp.into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    // Steady churn: one image changes per delta; start phases spread out.
    let start = tokio::time::Instant::now() + every.mul_f64((i % 97) as f64 / 97.0);
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 1u64;
    loop {
        tick.tick().await;
        seq += 1;
        let k = (i * 7 + seq as usize) % 500;
        let phase = if seq % 3 == 0 {
            Phase::Pulling
        } else {
            Phase::Warm
        };
        let d = Delta {
            seq,
            upserted: vec![image(k, phase, (seq % 300) << 20)],
            ..Default::default()
        };
        let msg = AgentMessage {
            body: Some(agent_message::Body::Delta(d)),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        SENT.fetch_add(1, Ordering::Relaxed);
    }
}

static SENT: AtomicU64 = AtomicU64::new(0);

async fn run_once(s: &Shape) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = (0..s.agents)
        .map(|i| format!("tok-{i} node-{i}\n"))
        .collect();
    std::fs::write(dir.path().join("tokens"), tokens).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = start_coordinator(&dir.path().join("tokens"), grpc, http);
    let http = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if client.get(format!("{http}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("coordinator exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "coordinator did not come up within 60 s");
    let pid = coordinator_pid(&child);
    let conns = if s.conns == 0 { s.agents } else { s.conns };
    let mut channels = Vec::new();
    for _ in 0..conns.min(s.agents) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let every = Duration::from_secs_f64(s.agents as f64 / s.rate.max(1) as f64);
    let started = Instant::now();
    let mut load = JoinSet::new();
    for i in 0..s.agents {
        load.spawn(agent(
            channels[i % channels.len()].clone(),
            i,
            s.images,
            every,
        ));
    }
    // Warm up: every agent attached (or 120 s), then 5 s of steady load.
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected(&client, &http).await < s.agents && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attach_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c0 = counter(&http).await;
    let s0 = SENT.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut lat = Vec::new();
    while t0.elapsed() < s.measure {
        let q = Instant::now();
        let body = client
            .get(format!("{http}/v1/images"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        lat.push(q.elapsed().as_secs_f64() * 1000.0);
        assert!(body.starts_with('['));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c1 = counter(&http).await;
    let s1 = SENT.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let attached = connected(&client, &http).await;
    let run = Run {
        attached,
        offered: (s1 - s0) as f64 / secs,
        ingest: (c1 - c0) / secs,
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        queries: lat.len(),
        rss: status_mib(pid, "VmRSS"),
        hwm: status_mib(pid, "VmHWM"),
        anon: status_mib(pid, "RssAnon"),
        attach_secs,
    };
    load.abort_all();
    drop(channels);
    // SIGTERM first so a wrapper (heaptrack) can write its data.
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    while load.join_next().await.is_some() {}
    run
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    pct(&mut v, 0.5)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("coordinator bench: run with `cargo bench --bench coordinator`");
        return;
    }
    let sizes: Vec<usize> = std::env::var("PREWARM_BENCH_AGENTS")
        .unwrap_or_else(|_| "1000,2500,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs = env("PREWARM_BENCH_RUNS", 3).max(1);
    let rate = env("PREWARM_BENCH_UPDATES_PER_SEC", 30_000);
    let images = env("PREWARM_BENCH_IMAGES_PER_AGENT", 50);
    let conns = env("PREWARM_BENCH_CONNECTIONS", 100);
    let measure = Duration::from_secs(env("PREWARM_BENCH_MEASURE_SECS", 15) as u64);
    let load_before = load_average();
    let mut table = Vec::new();
    for &agents in &sizes {
        let shape = Shape {
            agents,
            images,
            rate,
            conns,
            measure,
        };
        let mut all = Vec::new();
        for r in 0..runs {
            let run = run_once(&shape).await;
            eprintln!(
                "run {}/{runs} at {agents} agents: attached {} in {:.1}s, ingest {:.0}/s, p50/p99 {:.1}/{:.1} ms ({} queries), RSS {:.0} MiB (anon {:.0}), peak {:.0} MiB",
                r + 1,
                run.attached,
                run.attach_secs,
                run.ingest,
                run.p50,
                run.p99,
                run.queries,
                run.rss,
                run.anon,
                run.hwm
            );
            all.push(run);
        }
        table.push((agents, all));
    }
    let conn_text = if conns == 0 {
        "one per agent".to_string()
    } else {
        format!("{conns} shared")
    };
    println!(
        "\n| agents ({images} images each) | attached | offered updates/s | sustained updates/s | `/v1/images` p50 / p99 ms | RSS MiB | peak RSS (VmHWM) MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (agents, all) in &table {
        println!(
            "| {agents} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {:.0} | {:.0} |",
            median(all, |r| r.attached as f64),
            median(all, |r| r.offered),
            median(all, |r| r.ingest),
            median(all, |r| r.p50),
            median(all, |r| r.p99),
            median(all, |r| r.rss),
            median(all, |r| r.hwm),
        );
    }
    if let (Some((a0, r0)), Some((a1, r1))) = (table.first(), table.last()) {
        if a1 > a0 {
            let slope = (median(r1, |r| r.rss) - median(r0, |r| r.rss)) / (*a1 - *a0) as f64;
            println!(
                "\nRSS slope {a0}→{a1} agents: {:.1} KiB per agent",
                slope * 1024.0
            );
        }
    }
    if let Some((agents, all)) = table.iter().find(|(a, _)| *a == 5000) {
        let (rss, p99, ingest) = (
            median(all, |r| r.rss),
            median(all, |r| r.p99),
            median(all, |r| r.ingest),
        );
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        println!(
            "Targets at {agents} agents: RSS ≤ 256 MiB {} ({rss:.0}); p99 ≤ 50 ms {} ({p99:.1}); ingest ≥ 20,000/s {} ({ingest:.0})",
            verdict(rss <= 256.0),
            verdict(p99 <= 50.0),
            verdict(ingest >= 20_000.0)
        );
    }
    println!(
        "Offered = what the simulated agents sent (nominal {rate}/s). Medians of {runs} run(s) per size, a fresh coordinator each; warm-up until all attached + 5 s, then {}s measured; connections: {conn_text}; {} CPUs, load generator on the same machine; load average before: {load_before}, after: {}",
        measure.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average()
    );
}
