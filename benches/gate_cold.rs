//! Does the warm gate ever make a pod start later than no gate? Five paths
//! to "the pod's image is ready on its node", measured in the same run on
//! real components: a docker-registry, one real containerd per node behind
//! its own bandwidth-capped link (a `FaultProxy` reached through the node's
//! hosts.toml, so the agent and the kubelet's CRI pull share it), real
//! agents attached to a real coordinator, and the real gate loop (production
//! options) against the in-memory API server. A simulated scheduler binds a
//! pod once it has no scheduling gates (to the first node its affinity
//! allows, by name: node-a unless kept off it); a simulated kubelet then
//! does what the kubelet does with `IfNotPresent`: CRI ImageStatus, and
//! PullImage if the image is missing. What comes after the image (creating the container) is the same
//! on every path and left out.
//!
//! - ungated cold start: no prewarm at all; pod created → bound → CRI pull.
//! - gated, nothing warm anywhere: the gate decides, releases, then the same.
//! - gated, one node mid-pull: node-a's agent is warming the image (an
//!   intent) and has reported a given fraction of its bytes when the pod is
//!   created; the gate should hold it and release it onto node-a.
//! - gated, already warm: node-a's agent warmed the image beforehand.
//! - gated, node-a early in its pull: as mid-pull, but the pod is created
//!   at node-a's first progress report, when holding does not pay. A cold
//!   release the scheduler bound to node-a (first by name) would download
//!   the layer again beside the agent, so the gate must keep it off node-a.
//!
//! Every path gets fresh nodes (containerd, link, agent) and, when gated, a
//! fresh coordinator, gate and API server; agents first warm a small image
//! so they have learned their throughput. Runs interleave the paths. Run
//! with `cargo bench --bench gate_cold` as root. Timings are reported, never
//! asserted; a path that does not end with the image ready fails the bench.

#[path = "common/host.rs"]
mod host;
use host::load;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use prewarm::agent::{Agent, AgentOptions};
use prewarm::coordinator::auth::StaticAuth;
use prewarm::coordinator::gate::{self, GateOptions};
use prewarm::coordinator::{Coordinator, CoordinatorOptions};
use prewarm::node::auth::Credential;
use prewarm::node::containerd::Containerd;
use prewarm::node::runtime::ImageStore;
use prewarm::testkit::apiserver::MockApi;
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::{corpus_shapes_with, Built};
use prewarm::testkit::faultproxy::FaultProxy;
use prewarm::testkit::registry::Registry;
use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::Intent;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const HOST: &str = "gate-bench.invalid";
const APP: &str = "shapes/large";
const CALIBRATION: &str = "shapes/shared-a";
const PODS: &str = "api/v1/pods";
const NODES: [&str; 2] = ["node-a", "node-b"];
const POOL: &str = "kubernetes.azure.com/agentpool";
const DEADLINE: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn image(repo: &str) -> String {
    format!("{HOST}/{repo}:v1")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Ungated,
    /// No gate, while node-a's agent pulls the image (as in EarlyPull), the
    /// pod bound to node-b: the early row's like-for-like baseline, since
    /// here both "nodes" share the machine's CPUs.
    UngatedWhileAPulls,
    NothingWarm,
    EarlyPull,
    MidPull,
    Warm,
}

impl Path {
    fn gated(self) -> bool {
        !matches!(self, Path::Ungated | Path::UngatedWhileAPulls)
    }

    /// The baseline this path is judged against: the same machine load
    /// without the gate.
    fn baseline(self) -> Path {
        match self {
            Path::EarlyPull => Path::UngatedWhileAPulls,
            _ => Path::Ungated,
        }
    }
}

struct Knobs {
    runs: usize,
    bandwidth: u64,
    fraction: f64,
    early: f64,
    version: Version,
}

/// One measurement.
struct Sample {
    /// Pod created → image ready on its node.
    secs: f64,
    /// Pod created → release PATCH at the API server (gated paths).
    released_after: Option<f64>,
    /// How the gate released it (its metric's outcome label).
    outcome: String,
    node: String,
    /// Whether the kubelet had to pull (image missing at bind).
    pulled: bool,
    /// Mid-pull: fraction node-a had reported, and for how long it had
    /// been pulling, when the pod was created.
    mid: Option<(f64, f64)>,
    /// MiB over each node's link from the pod's creation on.
    link_mib: Vec<f64>,
}

/// A node: containerd behind its own capped link to the registry.
struct Node {
    name: &'static str,
    ctd: TestContainerd,
    proxy: FaultProxy,
    store: Containerd,
}

async fn node(name: &'static str, registry: &Registry, k: &Knobs) -> Result<Node> {
    let ctd = TestContainerd::start(k.version).await?;
    let proxy = FaultProxy::start(&registry.url()).await?;
    proxy.set_bandwidth(Some(k.bandwidth));
    ctd.add_mirror(HOST, &proxy.url())?;
    let store = Containerd::connect(&ctd.socket, "k8s.io").await?;
    Ok(Node {
        name,
        ctd,
        proxy,
        store,
    })
}

/// Coordinator, agents and gate of a gated path.
struct Prewarm {
    coord: Coordinator,
    _agents: Vec<Agent>,
    _dir: tempfile::TempDir,
}

async fn prewarm(nodes: &[Node], api: &MockApi, cancel: &CancellationToken) -> Result<Prewarm> {
    let tokens = NODES.iter().map(|n| (format!("tok-{n}"), n.to_string()));
    let auth = Arc::new(StaticAuth(tokens.collect()));
    let opts = CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        https_listen: "127.0.0.1:0".parse()?,
        tls: None,
        insecure: true,
        view_auth: None,
        retention: Default::default(),
        watch_api: false,
    };
    let coord = Coordinator::start(opts, auth, cancel.clone()).await?;
    let dir = tempfile::tempdir()?;
    let mut agents = Vec::new();
    for n in nodes {
        let token = dir.path().join(format!("{}.token", n.name));
        std::fs::write(&token, format!("tok-{}", n.name))?;
        let cfg = dir.path().join(format!("{}.yaml", n.name));
        std::fs::write(
            &cfg,
            format!(
                "runtime: {{ socket: {}, root: {} }}\nregistry: {{ dockerConfig: [], hostsDir: {} }}\n\
                 pacing: {{ diskFloor: 0 }}\ncoordinator: {{ endpoint: \"http://{}\", tokenFile: {}, insecure: true }}\n\
                 images:\n  - image: {}\n",
                n.ctd.socket.display(),
                n.ctd.root.display(),
                n.ctd.hosts_dir.display(),
                coord.grpc_addr,
                token.display(),
                image(CALIBRATION),
            ),
        )?;
        let labels = format!("{POOL}=bench,kubernetes.io/hostname={}", n.name);
        let agent = Agent::start(
            AgentOptions {
                config_path: cfg,
                listen: "127.0.0.1:0".parse()?,
                node_name: n.name.to_string(),
                node_labels: Some(prewarm::k8s::parse_labels(&labels).map_err(|e| anyhow!(e))?),
            },
            cancel.clone(),
        )
        .await?;
        agents.push(agent);
    }
    // Agents warm a small image first, so each has learned its throughput.
    let calib = image(CALIBRATION);
    wait("agents to learn their throughput", || {
        let view = coord.state.view();
        NODES.iter().all(|n| {
            view.node(n).is_some_and(|r| {
                r.connected && r.is_warm(&calib) && r.throughput_bytes_per_second.is_some()
            })
        })
    })
    .await?;
    let (leader_tx, leader) = watch::channel(true);
    let (client, state, gate_cancel) = (
        api.coordinator_client(),
        coord.state.clone(),
        cancel.clone(),
    );
    tokio::spawn(async move {
        let _leader = leader_tx;
        gate::run(client, state, GateOptions::default(), leader, gate_cancel).await
    });
    Ok(Prewarm {
        coord,
        _agents: agents,
        _dir: dir,
    })
}

/// Polls `check` every 20 ms until it holds, or fails after [`DEADLINE`].
async fn wait(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A pod of a ReplicaSet in pool `bench`, gated or not.
fn pod(name: &str, gated: bool) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": format!("uid-{name}"),
            "creationTimestamp": Utc::now().to_rfc3339(),
            "labels": {"app": "bench"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "bench-7d9", "uid": "uid-rs", "controller": true}],
        },
        "spec": {
            "nodeSelector": {POOL: "bench"},
            "containers": [{"name": "app", "image": image(APP)}],
        },
    });
    if gated {
        p["metadata"]["labels"]["prewarm.dev/gate"] = json!("true");
        p["spec"]["schedulingGates"] = json!([{"name": "prewarm.dev/warm"}]);
    }
    p
}

/// The node the scheduler binds an ungated pod to: the first, by name,
/// that every `kubernetes.io/hostname` In / NotIn requirement of its
/// required node affinity allows (the gate adds one term at most here).
fn pick(pod: &Value) -> Option<&'static str> {
    let exprs: Vec<Value> = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let allows = |node: &str| {
        exprs
            .iter()
            .filter(|e| e["key"] == "kubernetes.io/hostname")
            .all(|e| {
                let listed = e["values"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|h| h == node));
                match e["operator"].as_str() {
                    Some("In") => listed,
                    Some("NotIn") => !listed,
                    _ => true,
                }
            })
    };
    NODES.into_iter().find(|n| allows(n))
}

fn ungated(pod: &Value) -> bool {
    pod["spec"]["schedulingGates"]
        .as_array()
        .is_none_or(|g| g.is_empty())
}

/// Scheduler and kubelet: waits for the pod to lose its gates, binds it,
/// then ImageStatus and, if missing, PullImage. Returns (node, pulled).
async fn schedule_and_pull(api: &MockApi, nodes: &[Node], name: &str) -> Result<(String, bool)> {
    let ready = api
        .wait_for(DEADLINE, |_| {
            api.object(PODS, "bench", name).is_some_and(|p| ungated(&p))
        })
        .await;
    if !ready {
        bail!("pod {name} was never released");
    }
    let stored = api.object(PODS, "bench", name).context("pod gone")?;
    let chosen = pick(&stored).context("no node allowed by the pod's affinity")?;
    api.update(PODS, "bench", name, |p| {
        p["spec"]["nodeName"] = json!(chosen)
    });
    let node = nodes
        .iter()
        .find(|n| n.name == chosen)
        .context("no such node")?;
    let img = image(APP);
    if node.store.image_status(&img).await?.is_some() {
        return Ok((chosen.to_string(), false));
    }
    node.store
        .pull_image(&img, &Credential::Anonymous, Duration::from_secs(600))
        .await?;
    Ok((chosen.to_string(), true))
}

fn sync_disks() {
    let _ = std::process::Command::new("sync").status();
}

/// Node-a's agent warms the app image, as for a rollout intent.
fn warm_on_node_a(coord: &Coordinator) {
    coord.set_intents(vec![Intent {
        id: "Deployment/bench/bench@1".into(),
        images: vec![image(APP)],
        reason: "bench".into(),
        priority: 0,
        deadline_unix: Utc::now().timestamp() + 3600,
        nodes: vec!["node-a".into()],
        ..Default::default()
    }]);
}

/// Fraction of the app image's bytes node-a reported.
fn reported_fraction(coord: &Coordinator) -> Option<f64> {
    let view = coord.state.view();
    let s = view.node("node-a")?.images.get(&image(APP))?.clone();
    (s.phase == Phase::Pulling as i32 && s.bytes_total > 0)
        .then(|| s.bytes_done as f64 / s.bytes_total as f64)
}

async fn one(path: Path, registry: &Registry, k: &Knobs, run: usize) -> Result<Sample> {
    let mut nodes = Vec::new();
    for n in NODES {
        nodes.push(node(n, registry, k).await?);
    }
    let api = MockApi::new();
    let cancel = CancellationToken::new();
    let pw = if path.gated() || path == Path::UngatedWhileAPulls {
        Some(prewarm(&nodes, &api, &cancel).await?)
    } else {
        None
    };
    let mut mid = None;
    if let Some(pw) = &pw {
        match path {
            Path::MidPull | Path::EarlyPull | Path::UngatedWhileAPulls => {
                let fraction = if path == Path::MidPull {
                    k.fraction
                } else {
                    k.early
                };
                let started = Instant::now();
                warm_on_node_a(&pw.coord);
                let (mut got, mut warm) = (0.0, false);
                let app = image(APP);
                wait("node-a to report its pull far enough", || {
                    got = reported_fraction(&pw.coord).unwrap_or(0.0);
                    warm = pw
                        .coord
                        .state
                        .view()
                        .node("node-a")
                        .is_some_and(|r| r.is_warm(&app));
                    got >= fraction.max(1e-9) || warm
                })
                .await?;
                if warm {
                    bail!("node-a was warm before it reported {:.0}% of the bytes: use a larger layer or a slower link", fraction * 100.0);
                }
                mid = Some((got, started.elapsed().as_secs_f64()));
            }
            Path::Warm => {
                warm_on_node_a(&pw.coord);
                let app = image(APP);
                wait("node-a to report the image warm", || {
                    pw.coord
                        .state
                        .view()
                        .node("node-a")
                        .is_some_and(|r| r.is_warm(&app))
                })
                .await?;
                sync_disks();
            }
            _ => sync_disks(),
        }
    } else {
        sync_disks();
    }
    let name = format!("bench-7d9-{run}");
    for n in &nodes {
        n.proxy.reset_counters();
    }
    let created = Instant::now();
    let mut p = pod(&name, path.gated());
    if path == Path::UngatedWhileAPulls {
        // Where the gate sends the early row's pod: off the pulling node.
        p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b"]}]}]}}});
    }
    api.put(PODS, p);
    let (node, pulled) = schedule_and_pull(&api, &nodes, &name).await?;
    let secs = created.elapsed().as_secs_f64();
    let released_after = api
        .requests()
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with(&format!("/pods/{name}")))
        .map(|r| r.at.saturating_duration_since(created).as_secs_f64());
    let outcome = match &pw {
        None => "–".to_string(),
        Some(pw) => {
            let m = &pw.coord.state.metrics.gate_released;
            ["warm", "unwarmed", "cold_faster"]
                .into_iter()
                .find(|o| m.with_label_values(&[o]).get() > 0)
                .unwrap_or("none")
                .to_string()
        }
    };
    let link_mib = nodes
        .iter()
        .map(|n| n.proxy.bytes_sent() as f64 / MIB as f64)
        .collect();
    cancel.cancel();
    drop(pw);
    drop(nodes);
    sync_disks();
    Ok(Sample {
        secs,
        released_after,
        outcome,
        node,
        pulled,
        mid,
        link_mib,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn describe(path: Path, k: &Knobs) -> String {
    match path {
        Path::Ungated => "ungated cold start (no prewarm)".into(),
        Path::UngatedWhileAPulls => {
            "ungated cold start on node-b while node-a's agent pulls (as early, no gate)".into()
        }
        Path::NothingWarm => "gated, nothing warm anywhere".into(),
        Path::MidPull => format!(
            "gated, node-a mid-pull (pod created once it reported ≥ {:.0}% of the bytes)",
            k.fraction * 100.0
        ),
        Path::EarlyPull if k.early == 0.0 => {
            "gated, node-a early in its pull (pod created at its first progress report)".into()
        }
        Path::EarlyPull => format!(
            "gated, node-a early in its pull (pod created once it reported ≥ {:.0}%)",
            k.early * 100.0
        ),
        Path::Warm => "gated, image already warm on node-a".into(),
    }
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    format!("{cpus} CPUs ({model}), kernel {kernel}")
}

async fn bench() -> Result<()> {
    let k = Knobs {
        runs: env("PREWARM_BENCH_GATE_COLD_RUNS", 5usize).max(1),
        bandwidth: env("PREWARM_BENCH_GATE_COLD_MIBPS", 40u64).max(1) * MIB,
        fraction: env("PREWARM_BENCH_GATE_COLD_FRACTION", 0.5f64).clamp(0.0, 0.99),
        early: env("PREWARM_BENCH_GATE_COLD_EARLY", 0.0f64).clamp(0.0, 0.99),
        version: match std::env::var("PREWARM_BENCH_GATE_COLD_CONTAINERD").as_deref() {
            Ok("1.7") => Version::V17,
            _ => Version::V2,
        },
    };
    let layer = env("PREWARM_BENCH_GATE_COLD_LAYER_MIB", 180usize) << 20;
    let registry = Registry::start(None).await?;
    let corpus = corpus_shapes_with(0x9a7e, layer);
    let mut compressed = 0;
    for (repo, tag, built) in corpus
        .iter()
        .filter(|(r, _, _)| r == APP || r == CALIBRATION)
    {
        registry.pusher().push_built(repo, tag, built).await?;
        if repo == APP {
            if let Built::Image(i) = built {
                compressed = i.compressed_size();
            }
        }
    }
    eprintln!(
        "gate_cold bench: {APP} = one {} MiB layer ({:.0} MiB compressed), each node's link {} MiB/s, \
         containerd {}, {} runs; {}; load {}",
        layer >> 20,
        compressed as f64 / MIB as f64,
        k.bandwidth / MIB,
        k.version.label(),
        k.runs,
        machine(),
        load()
    );
    let load_start = load();
    let paths = [
        Path::Ungated,
        Path::UngatedWhileAPulls,
        Path::NothingWarm,
        Path::EarlyPull,
        Path::MidPull,
        Path::Warm,
    ];
    let mut samples: BTreeMap<Path, Vec<Sample>> = BTreeMap::new();
    for run in 0..k.runs {
        for path in paths {
            let s = one(path, &registry, &k, run)
                .await
                .with_context(|| format!("run {}: {}", run + 1, describe(path, &k)))?;
            eprintln!(
                "  run {} {:<14} {:>6.2} s  released after {}  outcome {:<11} on {} ({}){}",
                run + 1,
                format!("{path:?}"),
                s.secs,
                s.released_after
                    .map(|r| format!("{r:.2} s"))
                    .unwrap_or_else(|| "–".into()),
                s.outcome,
                s.node,
                if s.pulled {
                    "kubelet pulled"
                } else {
                    "present"
                },
                s.mid
                    .map(|(f, t)| format!("; node-a at {:.0}% after {t:.1} s", f * 100.0))
                    .unwrap_or_default()
            );
            eprintln!(
                "      MiB over the links after the pod's creation: {}",
                NODES
                    .iter()
                    .zip(&s.link_mib)
                    .map(|(n, m)| format!("{n} {m:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            samples.entry(path).or_default().push(s);
        }
    }
    // Each baseline's median and run-to-run spread (the noise a ratio is
    // read against).
    let stats = |p: Path| -> (f64, f64) {
        let v: Vec<f64> = samples[&p].iter().map(|s| s.secs).collect();
        let med = median(v.clone());
        let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
        (med, (hi - lo) / med / 2.0)
    };
    let (base, _) = stats(Path::Ungated);
    println!(
        "\n| Pod created → image ready on its node | Median (s) | Min (s) | Max (s) | × ungated | \
         × same load, no gate | Gate released after, median (s) | Gate outcome | Kubelet pulled | Target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|---|");
    let mut lost = Vec::new();
    for path in paths {
        let v = &samples[&path];
        let secs: Vec<f64> = v.iter().map(|s| s.secs).collect();
        let med = median(secs.clone());
        let ratio = med / base;
        let (own, noise) = stats(path.baseline());
        let fair = med / own;
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for s in v {
            *outcomes.entry(s.outcome.as_str()).or_default() += 1;
        }
        let outcomes: Vec<String> = outcomes
            .iter()
            .map(|(o, n)| format!("{o} {n}/{}", v.len()))
            .collect();
        let released: Vec<f64> = v.iter().filter_map(|s| s.released_after).collect();
        let target = if path.gated() {
            if fair <= 1.0 {
                "≤ 1.0×: met".to_string()
            } else if fair <= 1.0 + noise {
                format!("≤ 1.0×: met within noise (±{:.0}%)", noise * 100.0)
            } else {
                lost.push(describe(path, &k));
                "≤ 1.0×: **missed**".to_string()
            }
        } else {
            String::new()
        };
        println!(
            "| {} | {med:.2} | {:.2} | {:.2} | {ratio:.3}× | {} | {} | {} | {}/{} | {target} |",
            describe(path, &k),
            secs.iter().copied().fold(f64::INFINITY, f64::min),
            secs.iter().copied().fold(0.0, f64::max),
            if path.gated() {
                format!("{fair:.3}×")
            } else {
                "–".to_string()
            },
            if released.is_empty() {
                "–".to_string()
            } else {
                format!("{:.2}", median(released))
            },
            outcomes.join(", "),
            v.iter().filter(|s| s.pulled).count(),
            v.len(),
        );
    }
    let into_pull = |p: Path| -> (f64, f64) {
        let v = &samples[&p];
        (
            median(v.iter().filter_map(|s| s.mid.map(|m| m.1)).collect()),
            median(
                v.iter()
                    .filter_map(|s| s.mid.map(|m| m.0 * 100.0))
                    .collect(),
            ),
        )
    };
    let (mid_s, mid_pct) = into_pull(Path::MidPull);
    let (early_s, early_pct) = into_pull(Path::EarlyPull);
    println!(
        "| setup: {APP}, one {} MiB layer ({:.0} MiB compressed); 2 nodes, each behind its own \
         {} MiB/s link; containerd {}; pods created (medians) {early_s:.1} s into node-a's pull \
         when it had reported {early_pct:.0}% (early) and {mid_s:.1} s, {mid_pct:.0}% (mid-pull); \
         median of {} runs; {}; load {} → {} | | | | | | | | | |",
        layer >> 20,
        compressed as f64 / MIB as f64,
        k.bandwidth / MIB,
        k.version.label(),
        k.runs,
        machine(),
        load_start,
        load()
    );
    registry.stop().await;
    if !lost.is_empty() {
        eprintln!(
            "the gate made pods start later than no gate on: {}",
            lost.join("; ")
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gate_cold bench: run with `cargo bench --bench gate_cold` (as root)");
        return;
    }
    if let Err(e) = bench().await {
        eprintln!("gate_cold bench failed: {e:#}");
        std::process::exit(1);
    }
}
