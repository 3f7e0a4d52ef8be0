//! Coordinator under load: 5,000 simulated agents on loopback, each with 50
//! images and steady churn, against the real `prewarm coordinator` process.
//! Measures sustained update ingest, p99 of a readiness query while loaded,
//! and the coordinator's RSS. Run with `cargo bench --bench coordinator`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::link_client::LinkClient;
use prewarm::wire::v1::{agent_message, AgentMessage, Delta, ImageState, Snapshot};
use tokio::sync::mpsc;

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

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("coordinator bench: run with `cargo bench --bench coordinator`");
        return;
    }
    let agents = env("PREWARM_BENCH_AGENTS", 5000);
    let images = env("PREWARM_BENCH_IMAGES_PER_AGENT", 50);
    let rate = env("PREWARM_BENCH_UPDATES_PER_AGENT_PER_SEC", 12);
    let conns = env("PREWARM_BENCH_CONNECTIONS", 100);
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = (0..agents).map(|i| format!("tok-{i} node-{i}\n")).collect();
    std::fs::write(dir.path().join("tokens"), tokens).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "coordinator",
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--no-watch", "--insecure", "--static-tokens"])
        .arg(dir.path().join("tokens"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start coordinator");
    let http = format!("http://127.0.0.1:{http}");
    let mut up = false;
    for _ in 0..600 {
        if reqwest::get(format!("{http}/healthz")).await.is_ok() {
            up = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("coordinator exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "coordinator did not come up within 60 s");
    let mut channels = Vec::new();
    for _ in 0..conns {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for i in 0..agents {
        let mut client = LinkClient::new(channels[i % conns].clone());
        let sent = sent.clone();
        tokio::spawn(async move {
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
            // Steady churn: one image changes per delta, `rate` deltas a second.
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1) as u64));
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
                if tx
                    .send(AgentMessage {
                        body: Some(agent_message::Body::Delta(d)),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Warm up until every agent is attached, then measure.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attach_secs = started.elapsed().as_secs_f64();
    let c0 = counter(&http).await;
    let t0 = Instant::now();
    let client = reqwest::Client::new();
    let mut lat = Vec::new();
    while t0.elapsed() < Duration::from_secs(15) {
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
    let secs = t0.elapsed().as_secs_f64();
    let nodes: serde_json::Value = client
        .get(format!("{http}/v1/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let connected = nodes
        .as_array()
        .map(|a| a.iter().filter(|n| n["connected"] == true).count())
        .unwrap_or(0);
    let rss = rss_mib(child.id());
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ingest = (c1 - c0) / secs;
    let offered = (agents * rate) as f64;
    println!("\n| Coordinator load | Value | Target |\n|---|---:|---|");
    println!("| agents attached (of {agents}), {images} images each | {connected} | all |");
    println!("| offered updates/s (each agent {rate}/s) | {offered:.0} | |");
    println!(
        "| sustained ingest, updates/s | {ingest:.0} | ≥ 20,000: {} |",
        if ingest >= 20_000.0 {
            "met"
        } else {
            "**missed**"
        }
    );
    println!("| `/v1/images` while loaded, p50 / p99 ms ({} queries) | {:.1} / {:.1} | p99 ≤ 50 ms: {} |", lat.len(), pct(0.5), pct(0.99), if pct(0.99) <= 50.0 { "met" } else { "**missed**" });
    println!(
        "| coordinator RSS, MiB | {rss:.0} | ≤ 256: {} |",
        if rss <= 256.0 { "met" } else { "**missed**" }
    );
    println!("| setup: attach phase {attach_secs:.1}s; measured over {secs:.1}s on {} CPUs; load generator in the same machine | | |", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let _ = child.kill();
}
