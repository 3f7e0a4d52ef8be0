//! The agent's link state as a newcomer sees it (metrics and reasons) and
//! how soon it reattaches: a CA not yet published, a CA that does not
//! match, and a follower refusing until it leads.

use std::sync::Arc;
use std::time::Instant;

use prewarm::agent::link::{self, LinkConfig, NodeReport, REATTACH_BOUND};
use prewarm::agent::metrics::Metrics;
use prewarm::coordinator::{Coordinator, CoordinatorOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::{serving_certificate, tokens, wait_for};

async fn coordinator(tls: Option<&std::path::Path>, cancel: &CancellationToken) -> Coordinator {
    let opts = CoordinatorOptions {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        tls: tls.map(|d| (d.join("tls.crt"), d.join("tls.key"))),
        insecure: tls.is_none(),
        view_auth: None,
        retention: Default::default(),
        watch_api: false,
    };
    Coordinator::start(opts, tokens(), cancel.clone())
        .await
        .unwrap()
}

/// The real link client for node-b, observed by the agent's metrics.
fn agent(
    endpoint: String,
    ca: Option<std::path::PathBuf>,
    dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Arc<Metrics> {
    let token_file = dir.join("b.token");
    std::fs::write(&token_file, "tok-b").unwrap();
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(Arc::new(NodeReport::default()));
    let (itx, _irx) = watch::channel(Default::default());
    let cfg = LinkConfig {
        endpoint,
        token_file,
        ca_file: ca,
        node: "node-b".into(),
    };
    let (c, m) = (cancel.clone(), metrics.clone());
    tokio::spawn(async move {
        let _keep = (tx, _irx);
        link::run_observed(cfg, rx, itx, m, c).await;
    });
    metrics
}

fn failures(m: &Metrics, reason: &str) -> u64 {
    m.coordinator_link_failures
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_is_a_reason_retried_until_the_ca_appears() {
    let certs = serving_certificate();
    let cancel = CancellationToken::new();
    let coord = coordinator(Some(certs.path()), &cancel).await;
    let work = tempfile::tempdir().unwrap();
    // Where the kubelet projects the optional ConfigMap once it exists.
    let ca = work.path().join("coordinator-ca/ca.crt");
    let m = agent(
        format!("https://127.0.0.1:{}", coord.grpc_addr.port()),
        Some(ca.clone()),
        work.path(),
        &cancel,
    );
    wait_for("ca_missing counted", 10, || failures(&m, "ca_missing") >= 2).await;
    assert_eq!(m.coordinator_linked.get(), 0);
    assert_eq!(coord.state.view().connected(), 0);

    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::copy(certs.path().join("ca.crt"), &ca).unwrap();
    // Waiting-class retries are at most 5 s apart.
    wait_for("linked once the CA is there", 8, || {
        m.coordinator_linked.get() == 1
    })
    .await;
    assert_eq!(coord.state.view().connected(), 1);
    assert!(m.coordinator_last_attach.get() > 0.0);
    let text = m.render();
    assert!(text.contains("prewarm_coordinator_linked 1"), "{text}");
    assert!(
        text.contains("prewarm_coordinator_link_failures_total{reason=\"ca_missing\"}"),
        "{text}"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_certificate_is_a_tls_failure() {
    let certs = serving_certificate();
    let other = serving_certificate();
    let cancel = CancellationToken::new();
    let coord = coordinator(Some(certs.path()), &cancel).await;
    let work = tempfile::tempdir().unwrap();
    let m = agent(
        format!("https://127.0.0.1:{}", coord.grpc_addr.port()),
        Some(other.path().join("ca.crt")),
        work.path(),
        &cancel,
    );
    wait_for("a tls failure", 10, || failures(&m, "tls") >= 1).await;
    assert_eq!(failures(&m, "connect"), 0);
    assert_eq!(m.coordinator_linked.get(), 0);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refused_by_a_follower_attaches_soon_after_it_leads() {
    let cancel = CancellationToken::new();
    let coord = coordinator(None, &cancel).await;
    coord.state.serving.send_replace(false);
    let work = tempfile::tempdir().unwrap();
    let m = agent(
        format!("http://127.0.0.1:{}", coord.grpc_addr.port()),
        None,
        work.path(),
        &cancel,
    );
    // A long enough outage that a doubling backoff would be at 8 s or more.
    wait_for("refusals", 30, || failures(&m, "unavailable") >= 6).await;
    assert_eq!(m.coordinator_linked.get(), 0);
    let served = Instant::now();
    coord.state.serving.send_replace(true);
    wait_for("attached", 10, || m.coordinator_linked.get() == 1).await;
    let gap = served.elapsed();
    assert!(
        gap <= REATTACH_BOUND,
        "attached {gap:?} after the coordinator started serving"
    );
    assert!(failures(&m, "unavailable") >= 6);
    cancel.cancel();
}
