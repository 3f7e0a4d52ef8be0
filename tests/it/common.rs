//! Shared rig: a registry with the test corpus, a containerd, a node stack.

use std::sync::Arc;
use std::time::Duration;

use prewarm::config::units::DiskFloor;
use prewarm::config::AgentConfig;
use prewarm::node::containerd::Containerd;
use prewarm::node::manifest::host_platform;
use prewarm::node::pull::{NoopObserver, PullOptions};
use prewarm::node::runtime::ImageStore;
use prewarm::node::setup::{self, NodeStack};
use prewarm::testkit::containerd::{TestContainerd, Version};
use prewarm::testkit::corpus::{corpus_shapes_with, CorpusEntry};
use prewarm::testkit::faultproxy::{Fault, FaultProxy, Hold, Rule};
use prewarm::testkit::registry::Registry;

pub const MIB: usize = 1 << 20;

/// Runs an async test body on both containerd versions.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_1_7() {
                super::$name(prewarm::testkit::containerd::Version::V17).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_2_x() {
                super::$name(prewarm::testkit::containerd::Version::V2).await
            }
        }
    };
}

pub struct Upstream {
    /// The registry behind the proxy (kept alive as long as the rig).
    pub registry: Registry,
    pub proxy: FaultProxy,
    pub corpus: Vec<CorpusEntry>,
}

impl Upstream {
    /// A registry (optionally htpasswd-protected) holding the shapes corpus,
    /// reached through a counting fault proxy.
    pub async fn start(auth: Option<(&str, &str)>, large_layer: usize) -> Upstream {
        let registry = Registry::start(auth).await.expect("start registry");
        let corpus = corpus_shapes_with(7, large_layer);
        registry
            .pusher()
            .push_corpus(&corpus)
            .await
            .expect("push corpus");
        let proxy = FaultProxy::start(&registry.url())
            .await
            .expect("start proxy");
        Upstream {
            registry,
            proxy,
            corpus,
        }
    }

    /// Image reference through the proxy.
    pub fn image(&self, repo: &str) -> String {
        let (r, tag, _) = self
            .corpus
            .iter()
            .find(|(r, _, _)| r.ends_with(repo))
            .unwrap_or_else(|| panic!("no {repo} in corpus"));
        format!("{}/{}:{}", self.proxy.host(), r, tag)
    }
}

pub struct Node {
    pub ctd: TestContainerd,
    pub stack: NodeStack,
}

pub fn config_for(ctd: &TestContainerd) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.runtime.socket = ctd.socket.clone();
    cfg.runtime.root = Some(ctd.root.clone());
    cfg.registry.hosts_dir = Some(ctd.hosts_dir.clone());
    cfg.registry.docker_config = vec![];
    cfg.pacing.disk_floor = DiskFloor::Bytes(0);
    cfg.pacing.retry.initial_backoff = Duration::from_millis(50);
    cfg.pacing.retry.max_backoff = Duration::from_millis(500);
    cfg
}

impl Node {
    pub async fn start(v: Version, tweak: impl FnOnce(&mut AgentConfig)) -> Node {
        let ctd = TestContainerd::start(v).await.expect("start containerd");
        Node::on(ctd, tweak).await
    }

    /// A node stack on a containerd the test started itself.
    pub async fn on(ctd: TestContainerd, tweak: impl FnOnce(&mut AgentConfig)) -> Node {
        let mut cfg = config_for(&ctd);
        tweak(&mut cfg);
        let stack = setup::connect(&cfg, Arc::new(NoopObserver))
            .await
            .expect("connect");
        Node { ctd, stack }
    }

    /// Leases prewarm left behind (must be none once pulls end).
    pub async fn our_leases(&self) -> Vec<String> {
        let ids = self
            .stack
            .containerd
            .lease_ids()
            .await
            .expect("list leases");
        ids.into_iter()
            .filter(|l| l.starts_with("prewarm-"))
            .collect()
    }

    /// Ingests in progress: (ref, bytes written).
    pub async fn ingests(&self) -> Vec<(String, u64)> {
        self.stack.containerd.ingests().await.expect("list ingests")
    }

    pub async fn status(&self, name: &str) -> Option<prewarm::node::runtime::CriImage> {
        self.stack
            .containerd
            .image_status(name)
            .await
            .expect("image status")
    }
}

pub fn opts(pin: bool) -> PullOptions {
    PullOptions {
        pin,
        platform: host_platform(),
        cri_timeout: Duration::from_secs(300),
        priority: 0,
        bandwidth: None,
    }
}

/// Digest and size of the big layer of `shapes/large`.
pub fn large_layer(up: &Upstream) -> (String, u64) {
    let (_, _, built) = up
        .corpus
        .iter()
        .find(|(r, _, _)| r.ends_with("shapes/large"))
        .expect("shapes/large in the corpus");
    let layer = &built.images()[0].layers[0];
    (layer.digest.clone(), layer.data.len() as u64)
}

/// Holds the first GET of the blob `digest` once `after` bytes of it have
/// gone through, until the test releases the returned [`Hold`].
pub fn hold_first_get(up: &Upstream, digest: &str, after: usize) -> Hold {
    let hold = Hold::new(after);
    up.proxy.add(
        Rule::new(digest.to_string(), Fault::Hold(hold.clone()))
            .method("GET")
            .times(1),
    );
    hold
}

/// Polls `check` until it holds; panics naming `what` after `limit` (a
/// safety net only: every wait is on observable state).
/// Starts an in-process agent on `config_path`, serving on a free port.
pub async fn start_agent(
    config_path: std::path::PathBuf,
    node_name: &str,
    node_labels: Option<prewarm::k8s::Labels>,
    cancel: &tokio_util::sync::CancellationToken,
) -> prewarm::agent::Agent {
    let opts = prewarm::agent::AgentOptions {
        config_path,
        listen: "127.0.0.1:0".parse().unwrap(),
        node_name: node_name.into(),
        node_labels,
    };
    prewarm::agent::Agent::start(opts, cancel.clone())
        .await
        .unwrap()
}

pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes containerd holds of the ingest of `digest` once it has some.
pub async fn ingest_offset(store: &Containerd, digest: &str) -> u64 {
    let mut offset = 0;
    wait_until(
        &format!("containerd to have part of {digest}"),
        Duration::from_secs(60),
        async || {
            let ingests = store.ingests().await.expect("list ingests");
            offset = ingests
                .iter()
                .find(|(r, _)| r.ends_with(digest))
                .map_or(0, |(_, o)| *o);
            offset > 0
        },
    )
    .await;
    offset
}

/// The start of a `bytes=N-` Range header.
pub fn range_start(range: &str) -> Option<u64> {
    range
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

/// Start offsets of the open-ended Range requests the proxy saw for `digest`.
pub fn range_starts(proxy: &FaultProxy, digest: &str) -> Vec<u64> {
    proxy
        .ranges(digest)
        .iter()
        .filter_map(|r| range_start(r))
        .collect()
}

/// Chain id of the top layer, as containerd names unpacked snapshots.
pub fn chain_id(diff_ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut chain = diff_ids[0].clone();
    for d in &diff_ids[1..] {
        chain = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{chain} {d}").as_bytes()))
        );
    }
    chain
}

/// The value of one series (`name` or `name{labels}`) on `addr`'s /metrics.
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
