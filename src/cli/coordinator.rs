//! `prewarm coordinator` and `prewarm status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use prewarm::config::units::ByteSize;
use prewarm::coordinator::auth::{Authenticator, StaticAuth, TokenReviewAuth, AUDIENCE};
use prewarm::coordinator::http::{DeployGroupRow, ImageRow, NodeSummary};
use prewarm::coordinator::{Coordinator, CoordinatorOptions};
use prewarm::plan::gate::TimeoutPolicy;

use super::pull::human;

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// gRPC address agents attach to.
    #[arg(long, env = "PREWARM_GRPC_LISTEN", default_value = "0.0.0.0:8443")]
    pub grpc_listen: SocketAddr,
    /// HTTP address of the cluster view API and metrics.
    #[arg(long, env = "PREWARM_HTTP_LISTEN", default_value = "0.0.0.0:9465")]
    pub http_listen: SocketAddr,
    /// Serving certificate (PEM), e.g. tls.crt of a cert-manager Secret.
    #[arg(long, env = "PREWARM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PREWARM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Namespace of the agents' ServiceAccount.
    #[arg(long, env = "POD_NAMESPACE", default_value = "prewarm-system")]
    pub namespace: String,
    #[arg(long, default_value = "prewarm-agent")]
    pub agent_service_account: String,
    /// Instead of TokenReview: a file of `token node` lines (development only).
    #[arg(long)]
    pub static_tokens: Option<PathBuf>,
    /// Namespaces whose workloads all get rollout pre-warm (besides those
    /// labelled prewarm.dev/rollout=true), comma-separated.
    #[arg(long, env = "PREWARM_ROLLOUT_NAMESPACES", value_delimiter = ',')]
    pub rollout_namespaces: Vec<String>,
    /// This replica's identity in the leader Lease.
    #[arg(long, env = "POD_NAME", default_value = "prewarm-coordinator")]
    pub pod_name: String,
    /// Do not watch workloads (no Kubernetes API; link and view only).
    #[arg(long)]
    pub no_watch: bool,
    /// How long a pod waits behind the prewarm.dev/warm gate for a warm
    /// node before the timeout policy applies (pods may override it with
    /// the prewarm.dev/gate-timeout annotation).
    #[arg(long, env = "PREWARM_GATE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub gate_timeout: std::time::Duration,
    /// What happens at the gate timeout: `fail-open` releases the pod onto
    /// any eligible node, `fail-closed` keeps holding it.
    #[arg(long, env = "PREWARM_GATE_POLICY", default_value = "fail-open")]
    pub gate_policy: TimeoutPolicy,
    /// Pull throughput assumed for a node whose agent has not measured a
    /// pull yet, when the gate weighs holding a pod against a cold start.
    #[arg(long, env = "PREWARM_GATE_DEFAULT_THROUGHPUT", default_value = "25MiB", value_parser = positive_bytes)]
    pub gate_default_throughput: ByteSize,
    /// Time from a node becoming warm to a held pod being bound there
    /// (agent report, re-evaluation, patch, scheduling).
    #[arg(long, env = "PREWARM_GATE_RELEASE_OVERHEAD", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub gate_release_overhead: std::time::Duration,
    /// A pod is held for a warming node only if that is predicted this
    /// fraction sooner than a cold start (0 to 0.9).
    #[arg(long, env = "PREWARM_GATE_HOLD_MARGIN", default_value = "0.2", value_parser = margin)]
    pub gate_hold_margin: f64,
    /// A pull whose bytes have not moved this long no longer holds a pod.
    #[arg(long, env = "PREWARM_GATE_STALL_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub gate_stall_after: std::time::Duration,
    /// Do not release gated pods or run deploy groups.
    #[arg(long)]
    pub no_gate: bool,
    /// HTTPS address of the admission webhook that adds the warm gate to
    /// pods labelled prewarm.dev/gate=true (uses --tls-cert/--tls-key).
    #[arg(long, env = "PREWARM_WEBHOOK_LISTEN", requires = "tls_cert")]
    pub webhook_listen: Option<SocketAddr>,
}

fn positive_bytes(s: &str) -> Result<ByteSize, String> {
    match s.parse::<ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Ok(b),
        Ok(_) => Err("must be more than 0 bytes per second".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn margin(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(m) if (0.0..=0.9).contains(&m) => Ok(m),
        _ => Err(format!("{s:?} is not a fraction from 0 to 0.9 (e.g. 0.2)")),
    }
}

pub async fn run(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let auth: Arc<dyn Authenticator> = match &args.static_tokens {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--static-tokens {}", path.display()))?;
            let mut map = HashMap::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let (token, node) = line.split_once(char::is_whitespace).with_context(|| {
                    format!("{}:{}: expected `token node`", path.display(), n + 1)
                })?;
                map.insert(token.trim().to_string(), node.trim().to_string());
            }
            Arc::new(StaticAuth(map))
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes client (TokenReview)")?;
            Arc::new(TokenReviewAuth::new(
                client,
                AUDIENCE,
                &args.namespace,
                &args.agent_service_account,
            ))
        }
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        c.cancel();
    });
    #[cfg(unix)]
    {
        let c = cancel.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                c.cancel();
            });
        }
    }
    let opts = CoordinatorOptions {
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        tls: args.tls_cert.zip(args.tls_key),
    };
    let webhook = args.webhook_listen.zip(opts.tls.clone());
    let coordinator = Coordinator::start(opts, auth, cancel.clone()).await?;
    if let Some((addr, (cert, key))) = webhook {
        prewarm::coordinator::webhook::serve(addr, &cert, &key, cancel.clone()).await?;
    }
    if !args.no_watch {
        let client = kube::Client::try_default()
            .await
            .context("Kubernetes client (workload watch)")?;
        // Only the leader serves agents (the Service selects its label), so
        // its view is complete; it alone writes to the API.
        coordinator.state.serving.send_replace(false);
        let leadership = prewarm::coordinator::leader::spawn(
            client.clone(),
            args.namespace.clone(),
            args.pod_name.clone(),
            std::time::Duration::from_secs(15),
            cancel.clone(),
        );
        let state = coordinator.state.clone();
        let cfg = prewarm::coordinator::rollouts::RolloutConfig {
            namespaces: args.rollout_namespaces.clone(),
            ..Default::default()
        };
        tokio::spawn(prewarm::coordinator::rollouts::run(
            client.clone(),
            cfg,
            move |v| state.publish("rollouts", v),
            cancel.clone(),
        ));
        tokio::spawn(prewarm::coordinator::announce::run(
            coordinator.state.clone(),
            client.clone(),
            leadership.is_leader.clone(),
            cancel.clone(),
        ));
        tokio::spawn(prewarm::coordinator::nodes::run(
            client.clone(),
            coordinator.state.clone(),
            cancel.clone(),
        ));
        if !args.no_gate {
            let opts = prewarm::coordinator::gate::GateOptions {
                cfg: prewarm::plan::gate::GateConfig {
                    timeout: args.gate_timeout,
                    policy: args.gate_policy,
                    estimate: prewarm::plan::gate::EstimateConfig {
                        default_throughput: args.gate_default_throughput.as_u64() as f64,
                        release_overhead: args.gate_release_overhead,
                        hold_margin: args.gate_hold_margin,
                        stall_after: args.gate_stall_after,
                    },
                    ..Default::default()
                },
                ..Default::default()
            };
            tokio::spawn(prewarm::coordinator::gate::run(
                client.clone(),
                coordinator.state.clone(),
                opts,
                leadership.is_leader.clone(),
                cancel.clone(),
            ));
            tokio::spawn(prewarm::coordinator::deploys::run(
                client.clone(),
                coordinator.state.clone(),
                prewarm::coordinator::deploys::DeployOptions::default(),
                leadership.is_leader.clone(),
                cancel.clone(),
            ));
        }
        tokio::spawn(follow_leadership(
            client,
            coordinator.state.clone(),
            args.namespace.clone(),
            args.pod_name.clone(),
            leadership.is_leader,
        ));
    }
    coordinator.join().await;
    Ok(ExitCode::SUCCESS)
}

/// Mirrors leadership into the metric, whether this replica takes agents,
/// and its pod's leader label (retried until it sticks).
async fn follow_leadership(
    client: kube::Client,
    state: Arc<prewarm::coordinator::link::LinkState>,
    namespace: String,
    pod: String,
    mut is_leader: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let leader = *is_leader.borrow_and_update();
        state.metrics.is_leader.set(leader as i64);
        state.serving.send_replace(leader);
        let mut labelled = false;
        while !labelled {
            match prewarm::coordinator::leader::label_self(&client, &namespace, &pod, leader).await
            {
                Ok(()) => labelled = true,
                Err(e) => tracing::warn!(error = %e, leader, "leader label not set; retrying"),
            }
            if !labelled {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    // Leadership moved on: start over with the new value.
                    r = is_leader.changed() => if r.is_err() { return } else { break },
                }
            }
        }
        if labelled && is_leader.changed().await.is_err() {
            return;
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The coordinator's HTTP address.
    #[arg(
        long,
        env = "PREWARM_COORDINATOR",
        default_value = "http://prewarm-coordinator.prewarm-system.svc:9465"
    )]
    pub coordinator: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub what: Option<StatusWhat>,
}

#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWhat {
    /// Every deploy group: phase, current step, timings and last results.
    Deploys,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let base = args.coordinator.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            anyhow::ensure!(
                resp.status().is_success(),
                "GET {url}: HTTP {}",
                resp.status()
            );
            resp.text().await.with_context(|| format!("GET {url}"))
        }
    };
    if args.what == Some(StatusWhat::Deploys) {
        let rows: Vec<DeployGroupRow> =
            serde_json::from_str(&get("/v1/deploys").await?).context("bad /v1/deploys reply")?;
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            print!("{}", deploys_table(&rows));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let images: Vec<ImageRow> =
        serde_json::from_str(&get("/v1/images").await?).context("bad /v1/images reply")?;
    let nodes: Vec<NodeSummary> =
        serde_json::from_str(&get("/v1/nodes").await?).context("bad /v1/nodes reply")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "images": images, "nodes": nodes })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let connected = nodes.iter().filter(|n| n.connected).count();
    println!("{connected} of {} agents connected", nodes.len());
    println!(
        "{:<60} {:<16} {:>12} {:>14}",
        "IMAGE", "POOL", "WARM/NODES", "BYTES PENDING"
    );
    for r in &images {
        let pool = if r.pool.is_empty() { "-" } else { &r.pool };
        println!(
            "{:<60} {:<16} {:>12} {:>14}",
            r.image,
            pool,
            format!("{}/{}", r.warm_nodes, r.nodes),
            human(r.bytes_pending)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The deploy groups as text: one line per group, then its step and each
/// member's last result.
pub fn deploys_table(rows: &[DeployGroupRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no deploy groups\n");
        return out;
    }
    for r in rows {
        let _ = writeln!(
            out,
            "{}/{} ({} members: {})",
            r.namespace,
            r.name,
            r.members.len(),
            r.members.join(" → ")
        );
        for line in prewarm::plan::deploy::summary(&r.status).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
