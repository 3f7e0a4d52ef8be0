//! `prewarm testkit push`: generate an image corpus and push it to a
//! registry over the distribution API. Used by the demo and the benches.
//! `prewarm testkit up`: a throwaway containerd and registry.
//! `prewarm testkit apiserver`: the cluster demo's in-memory API server.

use std::process::ExitCode;

use clap::ValueEnum;
use prewarm::testkit::corpus::{bench_corpus, corpus_shapes, demo_corpus};
use prewarm::testkit::push::Pusher;

#[derive(clap::Args, Debug)]
pub struct TestkitArgs {
    #[command(subcommand)]
    pub command: TestkitCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TestkitCommand {
    /// Push a generated corpus; prints one image reference per line.
    Push {
        /// Registry base URL, e.g. http://127.0.0.1:5000
        #[arg(long)]
        registry: String,
        #[arg(long, value_enum, default_value = "demo")]
        corpus: Corpus,
        /// bench corpus: number of images.
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// bench corpus: total uncompressed bytes.
        #[arg(long, default_value_t = 640 << 20)]
        total_bytes: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// HTTP basic credentials user:password.
        #[arg(long)]
        basic: Option<String>,
    },
    /// Start a throwaway containerd and registry, write their addresses to
    /// DIR/env, and keep them running until interrupted.
    Up {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "2")]
        containerd: CtdVersion,
    },
    /// Serve the in-memory API server over HTTPS for the cluster demo:
    /// writes DIR/kubeconfig, DIR/env and the tokens, seeds the demo's
    /// objects, plays the scheduler, kubelet and controllers, and steps
    /// through the demo as the script asks (see src/testkit/cluster).
    /// Exits 0 when the gated pod went to the warm node and the deploy
    /// group deployed both members in order.
    Apiserver {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        tls_cert: std::path::PathBuf,
        #[arg(long)]
        tls_key: std::path::PathBuf,
        /// The CA of --tls-cert, written into the kubeconfig.
        #[arg(long)]
        ca_file: std::path::PathBuf,
        /// The gated pod's image.
        #[arg(long)]
        gate_image: String,
        /// The deploy group members' new images, one per member, in order.
        #[arg(long, required = true)]
        deploy_image: Vec<String>,
        /// How long each part of the demo may take.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CtdVersion {
    #[value(name = "1.7")]
    V17,
    #[value(name = "2")]
    V2,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Corpus {
    Demo,
    Shapes,
    Bench,
}

pub async fn run(args: TestkitArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TestkitCommand::Push {
            registry,
            corpus,
            images,
            total_bytes,
            seed,
            basic,
        } => {
            let auth = basic
                .map(|b| {
                    b.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--basic: expected user:password"))
                })
                .transpose()?;
            let entries = match corpus {
                Corpus::Demo => demo_corpus(),
                Corpus::Shapes => corpus_shapes(seed),
                Corpus::Bench => bench_corpus(images, total_bytes, seed),
            };
            let pusher = Pusher::new(&registry, auth)?;
            pusher.push_corpus(&entries).await?;
            let host = registry
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            for (repo, tag, _) in &entries {
                println!("{host}/{repo}:{tag}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TestkitCommand::Up { dir, containerd } => up(&dir, containerd).await,
        TestkitCommand::Apiserver {
            dir,
            listen,
            tls_cert,
            tls_key,
            ca_file,
            gate_image,
            deploy_image,
            timeout,
        } => {
            use prewarm::testkit::cluster::{run, ClusterOptions};
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("--dir {}: {e}", dir.display()))?;
            let ok = run(ClusterOptions {
                dir,
                listen,
                tls_cert,
                tls_key,
                ca_file,
                gate_image,
                deploy_images: deploy_image,
                timeout,
            })
            .await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn up(dir: &std::path::Path, v: CtdVersion) -> anyhow::Result<ExitCode> {
    use prewarm::testkit::containerd::{TestContainerd, Version};
    use prewarm::testkit::registry::Registry;
    let version = match v {
        CtdVersion::V17 => Version::V17,
        CtdVersion::V2 => Version::V2,
    };
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let ctd = TestContainerd::start_in(version, &dir.join("containerd")).await?;
    let registry = Registry::start(None).await?;
    let env = format!(
        "SOCKET={}\nCTD_ROOT={}\nHOSTS_DIR={}\nREGISTRY={}\nCTR={}\n",
        ctd.socket.display(),
        ctd.root.display(),
        ctd.hosts_dir.display(),
        registry.host(),
        version.binary().with_file_name("ctr").display()
    );
    let tmp = dir.join("env.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, dir.join("env"))?;
    eprintln!(
        "containerd {} at {} and a registry at {} are up; Ctrl-C stops them",
        version.label(),
        ctd.socket.display(),
        registry.url()
    );
    tokio::signal::ctrl_c().await?;
    drop(registry);
    drop(ctd);
    Ok(ExitCode::SUCCESS)
}
