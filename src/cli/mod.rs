//! Subcommands. Each parses its flags (with env fallbacks), builds the typed
//! config and hands over to the library.

mod coordinator;
#[cfg(test)]
mod doc_commands;
mod plan;
mod plan_objects;
mod pull;
mod testkit;

#[cfg(test)]
mod manifests_tests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "prewarm",
    version,
    about = "Warms container images on Kubernetes nodes before they are needed"
)]
pub struct Cli {
    /// Log format: text for terminals, json in clusters.
    #[arg(
        long,
        global = true,
        env = "PREWARM_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Warm images into the node's containerd exactly as a kubelet pull would.
    Pull(Box<pull::PullArgs>),
    /// Run the node agent: keep the configured images warm and pinned.
    Agent(AgentArgs),
    /// Run the coordinator: the agents' link, the cluster view, rollout intents.
    Coordinator(Box<coordinator::CoordinatorArgs>),
    /// Warmth of images per node pool, from the coordinator.
    Status(coordinator::StatusArgs),
    /// Dry run of the activation windows for one node: next activations,
    /// when warming starts, which images and bytes.
    Plan(plan::PlanArgs),
    /// Test kit: push generated images to a registry (demo and benches).
    #[command(hide = true)]
    Testkit(testkit::TestkitArgs),
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Agent config file (the mounted ConfigMap's config.yaml).
    #[arg(
        long,
        env = "PREWARM_CONFIG",
        default_value = "/etc/prewarm/config.yaml"
    )]
    pub config: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "PREWARM_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: std::net::SocketAddr,
    /// This node's name (downward API).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Fixed node labels k=v,... instead of reading them from the API server.
    #[arg(long, env = "PREWARM_NODE_LABELS", value_parser = prewarm::k8s::parse_labels)]
    pub node_labels: Option<prewarm::k8s::Labels>,
}

pub fn init_logging(format: &LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Pull(args) => pull::run(*args).await,
        Command::Agent(args) => {
            prewarm::agent::run(prewarm::agent::AgentOptions {
                config_path: args.config,
                listen: args.listen,
                node_name: args.node_name,
                node_labels: args.node_labels,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => plan::run(args).await,
        Command::Coordinator(args) => coordinator::run(*args).await,
        Command::Status(args) => coordinator::status(args).await,
        Command::Testkit(args) => testkit::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(args: &[&str]) -> coordinator::StatusArgs {
        match Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            Cli {
                command: Command::Status(s),
                ..
            } => s,
            other => panic!("{other:?}"),
        }
    }

    /// `prewarm status`'s flags may come before or after `deploys`.
    #[test]
    fn status_flags_before_or_after_deploys() {
        let url = "http://localhost:9465";
        for args in [
            [
                "prewarm",
                "status",
                "--coordinator",
                url,
                "--json",
                "deploys",
            ],
            [
                "prewarm",
                "status",
                "deploys",
                "--coordinator",
                url,
                "--json",
            ],
            [
                "prewarm",
                "status",
                "--json",
                "deploys",
                "--coordinator",
                url,
            ],
        ] {
            let s = status(&args);
            assert_eq!(
                (s.coordinator.as_str(), s.json, s.what),
                (url, true, Some(coordinator::StatusWhat::Deploys)),
                "{args:?}"
            );
        }
        let s = status(&["prewarm", "status", "--coordinator", url]);
        assert_eq!((s.coordinator.as_str(), s.json, s.what), (url, false, None));
    }
}
