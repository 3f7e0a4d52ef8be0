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
use prewarm::coordinator::auth_cache::{CacheConfig, CachedAuth};
use prewarm::coordinator::http::{DeployGroupRow, ImageRow, NodeSummary};
use prewarm::coordinator::view_auth::{view_cache_config, CachedViewAuth, KubeViewAuth, ViewAuth};
use prewarm::coordinator::{Coordinator, CoordinatorOptions};
use prewarm::plan::gate::TimeoutPolicy;

use super::pull::human;

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// gRPC address agents attach to.
    #[arg(long, env = "PREWARM_GRPC_LISTEN", default_value = "0.0.0.0:8443")]
    pub grpc_listen: SocketAddr,
    /// Plain HTTP address of /metrics, /healthz and /readyz (open: for
    /// Prometheus and the probes).
    #[arg(long, env = "PREWARM_HTTP_LISTEN", default_value = "0.0.0.0:9465")]
    pub http_listen: SocketAddr,
    /// HTTPS address (with --tls-cert/--tls-key) of the admission webhook
    /// and of the cluster view, which requires a bearer token whose user
    /// may get the path (ClusterRole prewarm-view).
    #[arg(long, env = "PREWARM_HTTPS_LISTEN", default_value = "0.0.0.0:9443")]
    pub https_listen: SocketAddr,
    /// Allow running without a serving certificate (local tests only):
    /// plaintext link, and the cluster view on --http-listen without
    /// authentication. Logged loudly.
    #[arg(long, env = "PREWARM_INSECURE")]
    pub insecure: bool,
    /// Serving certificate (PEM), e.g. tls.crt of a cert-manager Secret.
    #[arg(long, env = "PREWARM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PREWARM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA of the serving certificate (ca.crt of the Secret); the leader
    /// publishes it as the ConfigMap --ca-configmap for the agents.
    #[arg(long, env = "PREWARM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// ConfigMap (key ca.crt, in --agent-namespace) the CA is published as.
    #[arg(long, default_value = prewarm::coordinator::ca::CA_CONFIGMAP)]
    pub ca_configmap: String,
    /// The coordinator's own namespace: its leader Lease and the pods the
    /// leader label goes on.
    #[arg(long, env = "POD_NAMESPACE", default_value = "prewarm-system")]
    pub namespace: String,
    /// The agents' namespace: their ServiceAccount's (checked in every
    /// TokenReview), where the CA ConfigMap is published, and where an
    /// agent's pod is read when its token names no node.
    #[arg(long, env = "PREWARM_AGENT_NAMESPACE", default_value = "prewarm-node")]
    pub agent_namespace: String,
    #[arg(long, default_value = "prewarm-agent")]
    pub agent_service_account: String,
    /// Instead of TokenReview: a file of `token node` lines (development only).
    #[arg(long)]
    pub static_tokens: Option<PathBuf>,
    /// Namespaces whose workloads all get rollout pre-warm (besides those
    /// labelled prewarm.dev/rollout=true), comma-separated.
    #[arg(long, env = "PREWARM_ROLLOUT_NAMESPACES", value_delimiter = ',')]
    pub rollout_namespaces: Vec<String>,
    /// Lead time of windows from KEDA ScaledObjects that have no
    /// prewarm.dev/lead-time annotation.
    #[arg(long, env = "PREWARM_KEDA_LEAD_TIME", value_parser = humantime::parse_duration, default_value = "10m")]
    pub keda_lead_time: std::time::Duration,
    /// This replica's pod (downward API): its identity in the leader Lease
    /// and the pod the leader label goes on. Without it (outside a pod) the
    /// Lease identity is `<hostname>_<random>` and the label is off.
    #[arg(long, env = "POD_NAME", default_value = "")]
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
    /// A node whose agent has been disconnected and silent this long is
    /// forgotten (view, metrics, intents); nodes deleted from the API
    /// server are forgotten once their agent disconnects.
    #[arg(long, env = "PREWARM_FORGET_NODES_AFTER", default_value = "1h", value_parser = humantime::parse_duration)]
    pub forget_nodes_after: std::time::Duration,
    /// TokenReviews per second at most (agents' attaches; twice as many at
    /// once after a quiet spell). Attaches beyond it are told to back off;
    /// reviewed tokens are cached for a minute.
    #[arg(long, env = "PREWARM_TOKEN_REVIEWS_PER_SECOND", default_value = "50", value_parser = review_rate)]
    pub token_reviews_per_second: f64,
    /// A registry's egress budget for the whole cluster: HOST=RATE[,nodes=N]
    /// (RATE per second, e.g. 2GiB; at most N nodes pulling from it at
    /// once; HOST `*` for any host without its own). Repeatable. Agents are
    /// then told when to start warming and how fast.
    #[arg(long = "registry-budget", value_name = "HOST=RATE[,nodes=N]", value_parser = prewarm::coordinator::budget::parse_budget)]
    pub registry_budgets: Vec<prewarm::plan::registry_budget::RegistryBudget>,
    // ---- Deploy groups' validation checks ----
    /// The cluster's DNS domain: httpCheck URLs may name
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.<domain>`.
    #[arg(long, env = "PREWARM_CLUSTER_DOMAIN", default_value = prewarm::plan::deploy::DEFAULT_CLUSTER_DOMAIN, value_parser = cluster_domain)]
    pub cluster_domain: String,
    /// More hosts httpCheck URLs may name besides in-cluster Services: host
    /// names or `*.suffix` patterns, comma-separated or repeated. IP
    /// addresses are never fetched.
    #[arg(
        long = "http-check-allow-host",
        value_name = "HOST",
        env = "PREWARM_HTTP_CHECK_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub http_check_allow_hosts: Vec<prewarm::plan::deploy::HostPattern>,
}

fn cluster_domain(s: &str) -> Result<String, String> {
    prewarm::plan::deploy::host_name(s)
        .map_err(|_| format!("{s:?} is not a DNS domain (e.g. cluster.local)"))
}

fn review_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (0.1..=10_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate from 0.1 to 10000 reviews per second"
        )),
    }
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
    let deploy_opts = deploy_options(&args)?;
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
            let reviews = TokenReviewAuth::new(
                client,
                AUDIENCE,
                &args.agent_namespace,
                &args.agent_service_account,
            );
            let cfg = CacheConfig {
                reviews_per_second: args.token_reviews_per_second,
                burst: (args.token_reviews_per_second * 2.0).ceil().max(1.0) as u32,
                ..CacheConfig::default()
            };
            Arc::new(CachedAuth::new(reviews, cfg))
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
    let tls = args.tls_cert.clone().zip(args.tls_key.clone());
    let view_auth = match &tls {
        Some(_) => Some(view_auth().await?),
        None => None,
    };
    let opts = CoordinatorOptions {
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        https_listen: args.https_listen,
        tls,
        insecure: args.insecure,
        view_auth,
        retention: prewarm::plan::forget::Retention {
            silent_ttl: args.forget_nodes_after,
        },
        watch_api: !args.no_watch,
    };
    let budget = budget_options(&args)?;
    let coordinator = Coordinator::start(opts, auth, cancel.clone()).await?;
    if let Some(budget) = budget {
        // Plans only while this replica serves agents (the leader).
        tokio::spawn(prewarm::coordinator::budget::run(
            coordinator.state.clone(),
            budget,
            cancel.clone(),
        ));
    }
    if !args.no_watch {
        let client = kube::Client::try_default()
            .await
            .context("Kubernetes client (workload watch)")?;
        // Only the leader serves agents (the Service selects its label), so
        // its view is complete; it alone writes to the API.
        coordinator.state.serving.send_replace(false);
        let lease_duration = prewarm::coordinator::leader::LEASE_DURATION;
        let identity = lease_identity(&args.pod_name);
        let leadership = prewarm::coordinator::leader::spawn(
            client.clone(),
            args.namespace.clone(),
            identity.clone(),
            lease_duration,
            cancel.clone(),
        );
        let period = prewarm::coordinator::leader::renew_period(lease_duration);
        if args.pod_name.is_empty() {
            tracing::warn!(lease_identity = %identity, "no pod name (POD_NAME or --pod-name): the leader label is off, so the prewarm-coordinator Service cannot route agents to this replica; agents must dial it directly");
        } else {
            let label = prewarm::coordinator::leader_label::LeaderLabel::new(
                client.clone(),
                &args.namespace,
                &args.pod_name,
            );
            tokio::spawn(prewarm::coordinator::leader_label::run(
                label,
                leadership.is_leader.clone(),
                period,
                cancel.clone(),
            ));
        }
        match &args.tls_ca {
            Some(file) => {
                let publisher = prewarm::coordinator::ca::CaPublisher::new(
                    client.clone(),
                    &args.agent_namespace,
                    &args.ca_configmap,
                    file.clone(),
                );
                tokio::spawn(prewarm::coordinator::ca::run(
                    publisher,
                    leadership.is_leader.clone(),
                    prewarm::coordinator::ca::PERIOD,
                    cancel.clone(),
                ));
            }
            None => {
                tracing::info!(configmap = %args.ca_configmap, "no --tls-ca: the CA bundle for agents is not published")
            }
        }
        let cfg = prewarm::coordinator::rollouts::RolloutConfig {
            namespaces: args.rollout_namespaces.clone(),
            ..Default::default()
        };
        // Workload pull secrets go only over the TLS link.
        use prewarm::coordinator::pull_secrets::{self as ps, Publisher, PullSecrets};
        let pull_secrets = coordinator.tls.is_some().then(|| {
            let ps = PullSecrets::new(
                client.clone(),
                coordinator.state.clone(),
                Default::default(),
            );
            tokio::spawn(ps.clone().run(cancel.clone()));
            ps
        });
        let publisher = Publisher {
            state: coordinator.state.clone(),
            secrets: pull_secrets.clone(),
        };
        tokio::spawn(prewarm::coordinator::rollouts::run(
            client.clone(),
            cfg,
            ps::RolloutPublisher(publisher),
            cancel.clone(),
        ));
        // Opted in like rollouts: the label, or the same namespaces.
        let keda = prewarm::coordinator::keda::KedaConfig {
            namespaces: args.rollout_namespaces.clone(),
            defaults: prewarm::plan::keda::KedaDefaults {
                lead_time: args.keda_lead_time,
                ..Default::default()
            },
            ..Default::default()
        };
        tokio::spawn(prewarm::coordinator::keda::run(
            client.clone(),
            coordinator.state.clone(),
            keda,
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
                pull_secrets: pull_secrets.clone(),
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
                deploy_opts,
                leadership.is_leader.clone(),
                cancel.clone(),
            ));
        }
        tokio::spawn(prewarm::coordinator::follow_leadership(
            coordinator.state.clone(),
            leadership,
        ));
    }
    coordinator.join().await;
    Ok(ExitCode::SUCCESS)
}

/// The registry budget from `--registry-budget`; None without one.
fn budget_options(
    args: &CoordinatorArgs,
) -> anyhow::Result<Option<prewarm::coordinator::budget::BudgetOptions>> {
    use prewarm::plan::registry_budget::{Budgets, PlanOptions};
    let mut seen = std::collections::BTreeSet::new();
    for b in &args.registry_budgets {
        if !seen.insert(b.host.as_str()) {
            anyhow::bail!("--registry-budget: host {} is given twice", b.host);
        }
    }
    let budgets = Budgets {
        registries: args.registry_budgets.clone(),
    };
    if budgets.is_unlimited() {
        tracing::info!("no --registry-budget: agents start warming on their own plans");
        return Ok(None);
    }
    for b in &budgets.registries {
        tracing::info!(registry = %b.host, bytes_per_second = b.bytes_per_sec, max_nodes = b.max_nodes, "registry budget");
    }
    let defaults = prewarm::config::windows::Scheduling::default();
    Ok(Some(prewarm::coordinator::budget::BudgetOptions {
        budgets,
        plan: PlanOptions {
            default_node_rate: args.gate_default_throughput.as_u64() as f64,
            safety_factor: defaults.safety_factor,
            min_lead: prewarm::coordinator::budget::MIN_LEAD,
        },
        tick: prewarm::coordinator::budget::TICK,
    }))
}

/// Deploy groups' options from the flags; logs which hosts checks may reach.
fn deploy_options(
    args: &CoordinatorArgs,
) -> anyhow::Result<prewarm::coordinator::deploys::DeployOptions> {
    let allow = args.http_check_allow_hosts.clone();
    let http_checks = prewarm::plan::deploy::HttpCheckPolicy::new(&args.cluster_domain, allow)
        .context("--cluster-domain")?;
    let allowed: Vec<String> = args
        .http_check_allow_hosts
        .iter()
        .map(|p| p.to_string())
        .collect();
    tracing::info!(
        cluster_domain = %args.cluster_domain,
        allowed = %allowed.join(","),
        "deploy group httpCheck URLs: in-cluster Services (*.svc, *.svc.<cluster domain>) and the allowed hosts only; no IP addresses, no redirects"
    );
    Ok(prewarm::coordinator::deploys::DeployOptions {
        http_checks,
        ..Default::default()
    })
}

/// The view's authenticator on the HTTPS listener: TokenReview and
/// SubjectAccessReview, cached briefly.
async fn view_auth() -> anyhow::Result<Arc<dyn ViewAuth>> {
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (cluster view authentication on --https-listen)")?;
    let reviews = KubeViewAuth::new(client);
    Ok(Arc::new(CachedViewAuth::new(reviews, view_cache_config())))
}

/// The Lease identity: the pod name, or outside a pod `<hostname>_<random>`
/// (as kube-controller-manager does), so two processes on one host never
/// share it.
fn lease_identity(pod_name: &str) -> String {
    if !pod_name.is_empty() {
        return pod_name.to_string();
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "prewarm-coordinator".to_string());
    format!("{host}_{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod lease_identity_tests {
    use super::lease_identity;

    /// Outside a pod there is no pod to label: no made-up default name.
    #[test]
    fn without_pod_name_the_leader_label_has_no_target() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["prewarm", "coordinator"]).unwrap();
        let crate::cli::Command::Coordinator(args) = cli.command else {
            panic!("not the coordinator");
        };
        let from_env = std::env::var("POD_NAME").unwrap_or_default();
        assert_eq!(args.pod_name, from_env);
    }

    /// `--registry-budget` repeats; a bad value names the flag and the
    /// bad part; a host given twice is refused; no flag, no budget loop.
    #[test]
    fn registry_budgets_parse_and_errors_name_the_flag() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut words = vec!["prewarm", "coordinator"];
            words.extend(extra);
            crate::cli::Cli::try_parse_from(words).map(|cli| match cli.command {
                crate::cli::Command::Coordinator(args) => args,
                _ => panic!("not the coordinator"),
            })
        };
        let args = parse(&[
            "--registry-budget",
            "registry.example=2GiB,nodes=4",
            "--registry-budget=*=100MiB/s",
        ])
        .unwrap();
        let opts = super::budget_options(&args).unwrap().expect("a budget");
        let hosts: Vec<(&str, u64, u32)> = opts
            .budgets
            .registries
            .iter()
            .map(|b| (b.host.as_str(), b.bytes_per_sec, b.max_nodes))
            .collect();
        assert_eq!(
            hosts,
            [("registry.example", 2 << 30, 4), ("*", 100 << 20, 0)]
        );
        let err = parse(&["--registry-budget", "registry.example=lots"]).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("--registry-budget"), "{shown}");
        assert!(shown.contains("rate \"lots\""), "{shown}");
        let twice = parse(&[
            "--registry-budget",
            "r.example=1MiB",
            "--registry-budget",
            "R.example=2MiB",
        ])
        .unwrap();
        let e = super::budget_options(&twice).unwrap_err().to_string();
        assert_eq!(e, "--registry-budget: host r.example is given twice");
        assert!(super::budget_options(&parse(&[]).unwrap())
            .unwrap()
            .is_none());
    }

    /// Allowed check hosts come as a comma list or repeated, and reach the
    /// deploy groups' policy with the cluster domain.
    #[test]
    fn check_hosts_and_the_cluster_domain_reach_the_policy() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "prewarm",
            "coordinator",
            "--http-check-allow-host",
            "status.example.com,*.corp.internal",
            "--http-check-allow-host",
            "localhost",
            "--cluster-domain",
            "corp.example",
        ])
        .unwrap();
        let crate::cli::Command::Coordinator(args) = cli.command else {
            panic!("not the coordinator");
        };
        assert_eq!(args.http_check_allow_hosts.len(), 3);
        let policy = super::deploy_options(&args).unwrap().http_checks;
        for ok in [
            "http://status.example.com/",
            "http://a.corp.internal/",
            "http://localhost:8080/",
            "http://orders.prod.svc.corp.example/",
            "http://orders.prod.svc/",
        ] {
            assert_eq!(policy.check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://orders.prod.svc.cluster.local/",
            "http://example.com/",
            "http://127.0.0.1/",
        ] {
            assert!(policy.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_pod_name_or_a_unique_host_identity() {
        assert_eq!(
            lease_identity("coordinator-7d9f-abcde"),
            "coordinator-7d9f-abcde"
        );
        let (a, b) = (lease_identity(""), lease_identity(""));
        assert_ne!(a, b, "two processes on one host");
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert!(a.starts_with(&format!("{host}_")), "{a}");
    }
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The coordinator's cluster view: its HTTPS address, or the plain
    /// HTTP one of a coordinator run with --insecure (also accepted after
    /// `deploys`, as are the flags below).
    #[arg(
        long,
        global = true,
        env = "PREWARM_COORDINATOR",
        default_value = "https://prewarm-coordinator.prewarm-system.svc:9443"
    )]
    pub coordinator: String,
    /// A bearer token (e.g. from `kubectl create token`) whose user is
    /// bound to the ClusterRole prewarm-view.
    #[arg(long, global = true, env = "PREWARM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA (PEM) to check the coordinator's certificate against instead of
    /// the system's: ca.crt of the ConfigMap prewarm-coordinator-ca.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// The name the certificate must carry when --coordinator is another
    /// address, e.g. prewarm-coordinator.prewarm-system.svc through
    /// `kubectl port-forward` to localhost.
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: Option<StatusWhat>,
}

#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWhat {
    /// Every deploy group: phase, current step, timings and last results.
    Deploys,
}

/// How to bind the view, for 401 and 403 answers.
const BIND_VIEW: &str = "kubectl create clusterrolebinding prewarm-view-<name> \
--clusterrole=prewarm-view --serviceaccount=<namespace>:<serviceaccount>";

/// The view's URL, an HTTP client for it and the token to send.
fn view_client(args: &StatusArgs) -> anyhow::Result<(url::Url, reqwest::Client, Option<String>)> {
    let mut url = url::Url::parse(&args.coordinator)
        .with_context(|| format!("--coordinator {:?}: not a URL", args.coordinator))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => anyhow::bail!(
            "--coordinator {url}: use https:// (or http:// for a coordinator run with --insecure)"
        ),
    };
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            let token = text.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "--token-file {}: the file is empty",
                path.display()
            );
            Some(token)
        }
        None => None,
    };
    if !https {
        anyhow::ensure!(
            token.is_none(),
            "--token-file: the token is not sent over plain http:// (--coordinator {url}); use the https:// address"
        );
        anyhow::ensure!(
            args.ca_file.is_none() && args.tls_server_name.is_none(),
            "--ca-file and --tls-server-name apply to an https:// --coordinator only"
        );
    }
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .with_context(|| format!("--ca-file {}: no PEM certificate in it", path.display()))?;
        builder = certs
            .into_iter()
            .fold(builder.tls_built_in_root_certs(false), |b, c| {
                b.add_root_certificate(c)
            });
    }
    if let Some(name) = &args.tls_server_name {
        // Connect where --coordinator points, but ask for and check `name`.
        let addrs = url
            .socket_addrs(|| None)
            .with_context(|| format!("--coordinator {url}"))?;
        url.set_host(Some(name))
            .ok()
            .filter(|_| url.host_str() == Some(name.as_str()))
            .with_context(|| format!("--tls-server-name {name:?}: not a host name"))?;
        builder = builder.resolve_to_addrs(name, &addrs);
    }
    Ok((url, builder.build()?, token))
}

/// GETs `path` of the view; 401 and 403 say what to do.
async fn view_get(
    client: &reqwest::Client,
    base: &url::Url,
    token: Option<&str>,
    path: &str,
) -> anyhow::Result<String> {
    let url = base
        .join(path)
        .with_context(|| format!("--coordinator {base}"))?;
    let mut req = client.get(url.clone());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let code = resp.status();
    let body = resp.text().await.with_context(|| format!("GET {url}"))?;
    let said = body.trim();
    match code.as_u16() {
        200..=299 => Ok(body),
        401 if token.is_none() => anyhow::bail!(
            "GET {url}: {said}\nPass --token-file with a token whose user is bound to the ClusterRole prewarm-view, e.g. `kubectl create token <serviceaccount> -n <namespace>`; bind it with: {BIND_VIEW}"
        ),
        401 => anyhow::bail!(
            "GET {url}: {said}\nThe token of --token-file was refused (expired, or not issued for the API server's audience); make a new one with `kubectl create token <serviceaccount> -n <namespace>`"
        ),
        403 => anyhow::bail!(
            "GET {url}: {said}\nBind the ClusterRole prewarm-view to the token's user: {BIND_VIEW}"
        ),
        _ => anyhow::bail!("GET {url}: HTTP {code}: {said}"),
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (base, client, token) = view_client(&args)?;
    let get = |path: &'static str| view_get(&client, &base, token.as_deref(), path);
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
    let windows: Vec<prewarm::coordinator::http::WindowRow> =
        serde_json::from_str(&get("/v1/windows").await?).context("bad /v1/windows reply")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "images": images, "nodes": nodes, "windows": windows })
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", images_table(&images, &nodes));
    print!("{}", windows_table(&windows));
    Ok(ExitCode::SUCCESS)
}

/// Each linked node's windows and where they come from (nothing when none).
pub fn windows_table(rows: &[prewarm::coordinator::http::WindowRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<40} {:<40} {:<20} {:<8} {:<5} NEXT ACTIVATION",
        "WINDOW", "SOURCE", "NODE", "PHASE", "WARM"
    );
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (&a.window, &a.node).cmp(&(&b.window, &b.node)));
    for r in &rows {
        let next = chrono::DateTime::from_timestamp(r.next_activation_unix, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into());
        let warm = if r.warm { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{:<40} {:<40} {:<20} {:<8} {:<5} {next}",
            r.window, r.source, r.node, r.phase, warm
        );
    }
    out.push_str("SOURCE: config is the agent's ConfigMap; keda:<namespace>/<name>#<trigger> a KEDA ScaledObject's cron trigger.\n");
    out
}

/// What the image table covers, printed under it.
const IMAGES_COVERED: &str = "Listed: every image a linked agent keeps warm or pinned: its config images, \
its windows warming, active or in grace, the coordinator's intents, and pins held after their intent \
(scheduling.intentHold) or while a container uses the image.\n\
WARM/NODES: of the pool's linked nodes that want the image, how many hold it. \
POOL: the nodes' kubernetes.azure.com/agentpool label (- without one).\n";

/// The image × pool table as text, with what it covers; an empty table
/// says why it is empty.
pub fn images_table(images: &[ImageRow], nodes: &[NodeSummary]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let connected = nodes.iter().filter(|n| n.connected).count();
    let _ = writeln!(out, "{connected} of {} agents connected", nodes.len());
    if images.is_empty() {
        out.push_str(match (nodes.len(), connected) {
            (0, _) => {
                "No agent is linked to this coordinator: only the leader replica takes agents \
(the Service selects it), and only agents whose config has a coordinator: section link.\n"
            }
            (_, 0) => "No agent is linked right now: the table counts linked nodes only.\n",
            _ => {
                "No linked agent wants any image right now: config images, windows warming, \
active or in grace, intents and pins held after their intent are listed.\n"
            }
        });
        return out;
    }
    let _ = writeln!(
        out,
        "{:<60} {:<16} {:>12} {:>14}",
        "IMAGE", "POOL", "WARM/NODES", "BYTES PENDING"
    );
    for r in images {
        let pool = if r.pool.is_empty() { "-" } else { &r.pool };
        let _ = writeln!(
            out,
            "{:<60} {:<16} {:>12} {:>14}",
            r.image,
            pool,
            format!("{}/{}", r.warm_nodes, r.nodes),
            human(r.bytes_pending)
        );
    }
    out.push_str(IMAGES_COVERED);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, connected: bool) -> NodeSummary {
        NodeSummary {
            node: name.into(),
            pool: "integrations".into(),
            connected,
            last_report_seconds_ago: 1.0,
            images_warm: 0,
            images_pulling: 0,
            free_disk_bytes: 0,
            pin_supported: true,
        }
    }

    #[test]
    fn the_table_says_what_it_covers() {
        let rows = [ImageRow {
            image: "reg.io/erp/orders-sync:1.5.0".into(),
            pool: String::new(),
            warm_nodes: 1,
            nodes: 2,
            bytes_pending: 2048,
        }];
        let text = images_table(&rows, &[node("a", true), node("b", true)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 of 2 agents connected");
        assert!(lines[1].starts_with("IMAGE") && lines[1].ends_with("BYTES PENDING"));
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            ["reg.io/erp/orders-sync:1.5.0", "-", "1/2", "2.0", "KiB"]
        );
        assert!(
            text.contains("pins held after their intent (scheduling.intentHold)"),
            "{text}"
        );
        assert!(
            text.contains("of the pool's linked nodes that want the image"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_table_says_why() {
        let why =
            |nodes: &[NodeSummary]| images_table(&[], nodes).lines().nth(1).unwrap().to_string();
        assert!(why(&[]).starts_with("No agent is linked to this coordinator: only the leader"));
        assert!(why(&[node("a", false)]).starts_with("No agent is linked right now"));
        let text = images_table(&[], &[node("a", true)]);
        assert_eq!(text.lines().count(), 2, "no header without rows: {text}");
        assert!(text.contains("No linked agent wants any image right now: config images"));
    }
}
