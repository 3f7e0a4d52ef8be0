//! Warm gate release latency: the real `coordinator::gate::run` (production
//! `GateOptions`) against the in-process mock API server, with a cluster
//! view of 500 connected nodes in 5 pools where the pods' images are warm on
//! 100 of them. N gated pods are created as fast as possible; a pod's
//! release latency is the arrival of its release PATCH at the API server
//! minus the moment the bench created it. Run with
//! `cargo bench --bench gate`.
//!
//! Two variants: `live` (the gate is running and watching when the burst
//! arrives) and `backlog` (the pods exist before the gate starts; latency
//! counts from the gate's start). A pod not released within 30 s, or
//! released other than onto its warm nodes, is a correctness failure: the
//! bench then exits non-zero. Timings are reported, never asserted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use prewarm::coordinator::auth::StaticAuth;
use prewarm::coordinator::gate::{self, GateOptions};
use prewarm::coordinator::link::LinkState;
use prewarm::coordinator::metrics::CoordinatorMetrics;
use prewarm::plan::gate::{decide, Decision, GatedPod};
use prewarm::testkit::apiserver::{MockApi, Recorded};
use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::{ImageState, Snapshot};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const POOL_LABEL: &str = "kubernetes.azure.com/agentpool";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
const POOLS: usize = 5;
const REPLICA_SETS: usize = 4;
const NAMESPACES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(30);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// ReplicaSet `k`: its namespace, name, images and pool.
struct Workload {
    namespace: String,
    name: String,
    images: Vec<String>,
    pool: String,
}

fn workloads() -> Vec<Workload> {
    (0..REPLICA_SETS)
        .map(|k| Workload {
            namespace: format!("team-{}", k % NAMESPACES),
            name: format!("svc-{k}-7d9f{k}c"),
            images: (0..=k % 2)
                .map(|c| format!("myregistry.azurecr.io/team-{k}/svc-{c}:1.{k}"))
                .collect(),
            pool: format!("pool-{}", k % POOLS),
        })
        .collect()
}

fn node_name(i: usize) -> String {
    format!("aks-pool-{}-vmss{i:06}", i % POOLS)
}

/// Every workload's images are warm on a fifth of each pool.
fn warm_node(i: usize) -> bool {
    (i / POOLS) % 5 == 0
}

fn image(name: &str) -> ImageState {
    ImageState {
        name: name.to_string(),
        phase: Phase::Warm as i32,
        pinned: true,
        bytes_done: 100 << 20,
        bytes_total: 100 << 20,
        ..Default::default()
    }
}

fn snapshot(i: usize, wl: &[Workload]) -> Snapshot {
    let node = node_name(i);
    // 20 unrelated images everywhere, the workloads' on the warm subset.
    let mut images: Vec<ImageState> = (0..20)
        .map(|k| {
            image(&format!(
                "myregistry.azurecr.io/base/lib-{}:1",
                (i + k) % 40
            ))
        })
        .collect();
    if warm_node(i) {
        images.extend(wl.iter().flat_map(|w| w.images.iter().map(|n| image(n))));
    }
    Snapshot {
        node: node.clone(),
        labels: [
            (POOL_LABEL.to_string(), format!("pool-{}", i % POOLS)),
            (HOSTNAME_LABEL.to_string(), node),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "topology.kubernetes.io/zone".to_string(),
                format!("z-{}", i % 3),
            ),
        ]
        .into_iter()
        .collect(),
        images,
        seq: 1,
        pin_supported: true,
        ..Default::default()
    }
}

/// Hostnames a pod of `w` must be narrowed to.
fn expected_hosts(w: &Workload, nodes: usize) -> Vec<String> {
    let mut hosts: Vec<String> = (0..nodes)
        .filter(|&i| warm_node(i) && format!("pool-{}", i % POOLS) == w.pool)
        .map(node_name)
        .collect();
    hosts.sort();
    hosts
}

fn pod(w: &Workload, j: usize) -> Value {
    let containers: Vec<Value> = w
        .images
        .iter()
        .enumerate()
        .map(|(c, img)| json!({"name": format!("c{c}"), "image": img}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-{j:05}", w.name),
            "namespace": w.namespace,
            "creationTimestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            "labels": {"prewarm.dev/gate": "true", "app": w.name},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": w.name, "uid": format!("uid-{}", w.name), "controller": true}],
        },
        "spec": {
            "containers": containers,
            "nodeSelector": {POOL_LABEL: w.pool},
            "schedulingGates": [{"name": "prewarm.dev/warm"}],
        },
    })
}

fn state(nodes: usize, wl: &[Workload]) -> Arc<LinkState> {
    let state = LinkState::new(
        Arc::new(StaticAuth(HashMap::new())),
        Arc::new(CoordinatorMetrics::new()),
        CancellationToken::new(),
    );
    {
        let mut view = state.view.write().unwrap();
        for i in 0..nodes {
            view.apply_snapshot(snapshot(i, wl), Utc::now());
        }
    }
    state
}

struct Run {
    /// Seconds, sorted.
    latencies: Vec<f64>,
    patches_per_sec: f64,
    /// How long creating the N pods took (live variant; 0 for backlog).
    burst: f64,
    /// Correctness failures (unreleased or wrongly released pods).
    failures: Vec<String>,
}

/// Medians over the runs of one table row; latencies in seconds.
struct Row {
    backlog: bool,
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    rate: f64,
    burst: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Pod path → first release PATCH.
fn first_patches(reqs: &[Recorded]) -> BTreeMap<String, Recorded> {
    let mut out = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.method == "PATCH") {
        out.entry(r.path.clone()).or_insert_with(|| r.clone());
    }
    out
}

async fn one_run(n: usize, nodes: usize, backlog: bool) -> Run {
    let wl = workloads();
    let hosts: Vec<Vec<String>> = wl.iter().map(|w| expected_hosts(w, nodes)).collect();
    let api = MockApi::new();
    let state = state(nodes, &wl);
    let cancel = CancellationToken::new();
    let (_leader, leader_rx) = watch::channel(true);
    let start_gate = |api: &MockApi| {
        tokio::spawn(gate::run(
            api.coordinator_client(),
            state.clone(),
            GateOptions::default(),
            leader_rx.clone(),
            cancel.clone(),
        ))
    };
    // Pod path → (workload, time it counts from).
    let mut created: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    let put_pods = |api: &MockApi, created: &mut BTreeMap<String, (usize, Instant)>| {
        for j in 0..n {
            let k = j % wl.len();
            let p = pod(&wl[k], j);
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                wl[k].namespace,
                p["metadata"]["name"].as_str().unwrap_or_default()
            );
            let at = Instant::now();
            api.put("api/v1/pods", p);
            created.insert(path, (k, at));
        }
    };
    let task;
    let t0;
    let mut burst = 0.0;
    if backlog {
        put_pods(&api, &mut created);
        t0 = Instant::now();
        task = start_gate(&api);
        for v in created.values_mut() {
            v.1 = t0;
        }
    } else {
        task = start_gate(&api);
        let watching = api
            .wait_for(DEADLINE, |r| {
                r.iter().any(|r| r.query.contains("watch=true"))
            })
            .await;
        assert!(watching, "the gate never started its watch");
        t0 = Instant::now();
        put_pods(&api, &mut created);
        burst = t0.elapsed().as_secs_f64();
    }
    api.wait_for(DEADLINE, |r| {
        r.iter().filter(|r| r.method == "PATCH").count() >= n
    })
    .await;
    let deadline = t0 + DEADLINE;
    cancel.cancel();
    let _ = task.await;

    let patches = first_patches(&api.requests());
    let mut failures = Vec::new();
    let mut latencies = Vec::new();
    let mut last = t0;
    for (path, (k, at)) in &created {
        let Some(r) = patches.get(path) else {
            failures.push(format!("{path}: never released"));
            continue;
        };
        if r.at > deadline {
            failures.push(format!("{path}: released after {DEADLINE:?}"));
        }
        let values = r
            .body
            .as_ref()
            .and_then(|b| b.pointer("/2/value/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0/values"))
            .cloned()
            .unwrap_or(Value::Null);
        if values != json!(hosts[*k]) {
            let got = values.as_array().map(Vec::len).unwrap_or(0);
            failures.push(format!(
                "{path}: narrowed to {got} hostnames, not to its {} warm nodes",
                hosts[*k].len()
            ));
        }
        last = last.max(r.at);
        latencies.push(r.at.saturating_duration_since(*at).as_secs_f64());
    }
    for path in patches.keys().filter(|p| !created.contains_key(*p)) {
        failures.push(format!("{path}: patched but never created"));
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let span = last.saturating_duration_since(t0).as_secs_f64();
    Run {
        patches_per_sec: if span > 0.0 {
            latencies.len() as f64 / span
        } else {
            f64::NAN
        },
        latencies,
        burst,
        failures,
    }
}

/// Median µs of one `decide` (a warm release with its patch) against the
/// bench's view: the CPU the gate spends per pod before any I/O.
fn decide_cost(nodes: usize) -> f64 {
    let wl = workloads();
    let st = state(nodes, &wl);
    let view = st.view();
    let cfg = GateOptions::default().cfg;
    let pods: Vec<GatedPod> = (0..1000)
        .map(|j| {
            let mut v = pod(&wl[j % wl.len()], j);
            v["metadata"]["uid"] = json!(format!("u{j}"));
            let p: Pod = serde_json::from_value(v).expect("pod");
            GatedPod::from_pod(&p).expect("gated pod").expect("gated")
        })
        .collect();
    let mut per = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for p in &pods {
            let v = decide(p, &view, &cfg, Utc::now());
            assert!(matches!(v.decision, Decision::Release { .. }));
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / pods.len() as f64);
    }
    median(per)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gate bench: run with `cargo bench --bench gate`");
        return;
    }
    let sizes = env_list("PREWARM_BENCH_GATE_PODS", &[100, 1000]);
    let runs = env("PREWARM_BENCH_GATE_RUNS", 5).max(1);
    let nodes = env("PREWARM_BENCH_GATE_NODES", 500).max(POOLS);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let warm = (0..nodes).filter(|&i| warm_node(i)).count();
    eprintln!(
        "gate bench: {nodes} nodes in {POOLS} pools, images warm on {warm}; \
         {runs} runs per row; {cpus} CPUs"
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for backlog in [false, true] {
        for &n in &sizes {
            let mut all = Vec::new();
            for run in 0..runs {
                let r = one_run(n, nodes, backlog).await;
                let variant = if backlog { "backlog" } else { "live" };
                eprintln!(
                    "  {variant} N={n} run {}: min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
                     {:.0} patches/s, burst {:.1} ms, {} failures",
                    run + 1,
                    r.latencies.first().copied().unwrap_or(f64::NAN) * 1e3,
                    pct(&r.latencies, 0.5) * 1e3,
                    pct(&r.latencies, 0.99) * 1e3,
                    pct(&r.latencies, 1.0) * 1e3,
                    r.patches_per_sec,
                    r.burst * 1e3,
                    r.failures.len()
                );
                failed.extend(r.failures.iter().take(5).cloned());
                all.push(r);
            }
            let med = |f: &dyn Fn(&Run) -> f64| median(all.iter().map(f).collect());
            rows.push(Row {
                backlog,
                n,
                p50: med(&|r| pct(&r.latencies, 0.5)),
                p99: med(&|r| pct(&r.latencies, 0.99)),
                max: med(&|r| pct(&r.latencies, 1.0)),
                rate: med(&|r| r.patches_per_sec),
                burst: med(&|r| r.burst),
            });
        }
    }
    println!(
        "\n| Gate release latency | Gated pods | p50 (ms) | p99 (ms) | max (ms) | patches/s \
         | creating the pods took (ms) | Target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let what = if r.backlog {
            "backlog: pods exist, then the gate starts (from its start)"
        } else {
            "live: burst while the gate watches (from each pod's creation)"
        };
        let target = if r.n == 1000 && !r.backlog {
            format!(
                "p99 ≤ 1 s at 1,000 pods: {}",
                if r.p99 <= 1.0 { "met" } else { "**missed**" }
            )
        } else {
            String::new()
        };
        let burst = if r.backlog {
            "–".to_string()
        } else {
            format!("{:.0}", r.burst * 1e3)
        };
        println!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {burst} | {target} |",
            r.n,
            r.p50 * 1e3,
            r.p99 * 1e3,
            r.max * 1e3,
            r.rate
        );
    }
    println!(
        "| setup: {nodes} nodes in {POOLS} pools, images warm on {warm}; {REPLICA_SETS} ReplicaSets \
         in {NAMESPACES} namespaces; median of {runs} runs; {cpus} CPUs | | | | | | | |"
    );
    let decide_us = decide_cost(nodes);
    println!(
        "\nPure decision (`plan::gate::decide`, warm release of one pod against this view): \
         {decide_us:.0} µs per pod (median of 5 × 1,000)."
    );
    if !failed.is_empty() {
        eprintln!("correctness failures (first of each run):");
        for f in &failed {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
