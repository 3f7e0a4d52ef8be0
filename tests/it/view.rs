//! The cluster view on the coordinator's HTTPS listener, authenticated as
//! kube-rbac-proxy does against the in-memory API server (shipped RBAC plus
//! a binding of prewarm-view), with `prewarm status` as its client; metrics
//! stay open on the plain port.

use std::sync::Arc;

use prewarm::agent::link::{self, LinkConfig, NodeReport};
use prewarm::coordinator::view_auth::{view_cache_config, CachedViewAuth, KubeViewAuth, ViewAuth};
use prewarm::coordinator::Coordinator;
use prewarm::testkit::apiserver::{BoundToken, Identity, MockApi, Policy, API_AUDIENCE};
use prewarm::wire::v1::image_state::Phase;
use prewarm::wire::v1::ImageState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::{serving_certificate, tls_coordinator, wait_for};

const IMAGE: &str = "reg.example/erp/orders-api:1.4.2";

struct Rig {
    api: MockApi,
    coord: Coordinator,
    certs: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Rig {
    /// A TLS coordinator whose view is checked against `api`, where
    /// ops/viewer is bound to prewarm-view and ops/other is not, with one
    /// agent (node-b, one warm image) linked.
    async fn start() -> Self {
        let certs = serving_certificate();
        let d = certs.path();
        let viewer = Identity::service_account("ops", "viewer");
        let api = MockApi::with_policy(
            Policy::shipped().with_cluster_role_binding("prewarm-view", &viewer),
        );
        for (token, sa) in [("tok-viewer", "viewer"), ("tok-other", "other")] {
            api.issue_token(
                token,
                BoundToken {
                    namespace: "ops".into(),
                    service_account: sa.into(),
                    pod: None,
                    node: None,
                    audiences: vec![API_AUDIENCE.into()],
                },
            );
        }
        let reviews = KubeViewAuth::new(api.coordinator_client());
        let view_auth: Arc<dyn ViewAuth> =
            Arc::new(CachedViewAuth::new(reviews, view_cache_config()));
        let cancel = CancellationToken::new();
        let coord = tls_coordinator(d, Some(view_auth), &cancel).await;
        let token_file = d.join("b.token");
        std::fs::write(&token_file, "tok-b").unwrap();
        let mut report = NodeReport {
            pin_supported: true,
            ..Default::default()
        };
        let warm = ImageState {
            name: IMAGE.into(),
            phase: Phase::Warm as i32,
            ..Default::default()
        };
        report.images.insert(IMAGE.into(), warm);
        let (tx, rx) = watch::channel(Arc::new(report));
        let (itx, _irx) = watch::channel(Default::default());
        let cfg = LinkConfig {
            endpoint: format!("https://127.0.0.1:{}", coord.grpc_addr.port()),
            token_file,
            ca_file: Some(d.join("ca.crt")),
            node: "node-b".into(),
        };
        let c = cancel.clone();
        tokio::spawn(async move {
            let _keep = tx;
            link::run(cfg, rx, itx, c).await;
        });
        let state = coord.state.clone();
        wait_for("the TLS agent", 30, || state.view().connected() == 1).await;
        Self {
            api,
            coord,
            certs,
            cancel,
        }
    }

    fn https(&self, path: &str) -> String {
        let port = self.coord.https_addr.expect("HTTPS listener").port();
        format!("https://127.0.0.1:{port}{path}")
    }

    /// `prewarm status` with `args`: (success, stdout, stderr).
    async fn status(&self, args: Vec<String>) -> (bool, String, String) {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
                .arg("status")
                .args(args)
                .env_remove("PREWARM_TOKEN_FILE")
                .env_remove("PREWARM_COORDINATOR")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_needs_a_bound_token_over_https_and_metrics_stay_open() {
    let rig = Rig::start().await;
    let ca = std::fs::read(rig.certs.path().join("ca.crt")).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let get = |token: Option<&str>| {
        let mut req = http.get(rig.https("/v1/nodes"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            let challenge = resp.headers().get("www-authenticate").cloned();
            (code, challenge, resp.text().await.unwrap())
        }
    };
    let (code, challenge, body) = get(None).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(challenge.unwrap(), "Bearer");
    assert!(
        body.starts_with("Unauthorized: send a ServiceAccount token"),
        "{body}"
    );
    let (code, _, body) = get(Some("made-up")).await;
    assert_eq!(
        (code, body.as_str()),
        (401, "Unauthorized: the token was not accepted\n")
    );
    let (code, _, body) = get(Some("tok-other")).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body,
        "Forbidden: user \"system:serviceaccount:ops:other\" cannot get path \"/v1/nodes\": \
         bind the ClusterRole prewarm-view to it\n"
    );
    let (code, _, body) = get(Some("tok-viewer")).await;
    assert_eq!(code, 200, "{body}");
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(nodes[0]["node"], "node-b", "{nodes}");
    assert_eq!(nodes[0]["imagesWarm"], 1, "{nodes}");

    // The plain port: metrics and probes for anyone, the view for no one.
    let plain = format!("http://{}", rig.coord.http_addr);
    let metrics = reqwest::get(format!("{plain}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("prewarm_coordinator_connected_agents 1"));
    let healthz = reqwest::get(format!("{plain}/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 200);
    for path in ["/v1/nodes", "/v1/images", "/v1/deploys"] {
        let r = reqwest::get(format!("{plain}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the plain port");
    }
    assert!(rig.api.forbidden().is_empty(), "{:#?}", rig.api.forbidden());
    rig.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_status_reads_the_view_with_a_token_file_and_the_ca() {
    let rig = Rig::start().await;
    let d = rig.certs.path();
    let file = |name: &str, token: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("{token}\n")).unwrap();
        p.display().to_string()
    };
    let (viewer, other) = (file("viewer", "tok-viewer"), file("other", "tok-other"));
    let ca = d.join("ca.crt").display().to_string();
    let port = rig.coord.https_addr.unwrap().port();
    let args = |url: String, rest: &[&str]| {
        let mut a = vec!["--coordinator".to_string(), url];
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    };
    let direct = format!("https://127.0.0.1:{port}");

    let (ok, out, err) = rig
        .status(args(
            direct.clone(),
            &["--token-file", &viewer, "--ca-file", &ca],
        ))
        .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("1 of 1 agents connected\n"), "{out}");
    assert!(out.contains(IMAGE), "{out}");
    let (ok, out, err) = rig
        .status(args(
            direct.clone(),
            &["deploys", "--token-file", &viewer, "--ca-file", &ca],
        ))
        .await;
    assert!(ok, "{err}");
    assert_eq!(out, "no deploy groups\n");

    // As through a port-forward: another address, the certificate's name.
    let local = format!("https://localhost:{port}");
    let forwarded = [
        "--token-file",
        &viewer,
        "--ca-file",
        &ca,
        "--tls-server-name",
    ];
    let named = |name: &str| {
        let mut a = forwarded.to_vec();
        a.push(name);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (ok, out, err) = rig
        .status(args(
            direct.clone(),
            &named("localhost")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ))
        .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("1 of 1 agents connected\n"), "{out}");
    let (ok, _, err) = rig
        .status(args(
            local,
            &named("prewarm-coordinator.prewarm-system.svc")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ))
        .await;
    assert!(!ok, "a name the certificate lacks was accepted");
    assert!(
        err.contains("prewarm-coordinator.prewarm-system.svc"),
        "{err}"
    );

    // Without the CA the certificate is not trusted.
    let (ok, _, err) = rig
        .status(args(direct.clone(), &["--token-file", &viewer]))
        .await;
    assert!(!ok);
    assert!(err.contains(&format!("GET {direct}/v1/images")), "{err}");

    // 401 and 403 say what to do.
    let (ok, _, err) = rig.status(args(direct.clone(), &["--ca-file", &ca])).await;
    assert!(!ok);
    assert!(
        err.contains("Unauthorized")
            && err.contains("Pass --token-file")
            && err.contains("--clusterrole=prewarm-view"),
        "{err}"
    );
    let (ok, _, err) = rig
        .status(args(
            direct.clone(),
            &["--token-file", &other, "--ca-file", &ca],
        ))
        .await;
    assert!(!ok);
    assert!(
        err.contains("Forbidden: user \"system:serviceaccount:ops:other\"")
            && err.contains("Bind the ClusterRole prewarm-view to the token's user"),
        "{err}"
    );
    // The token never goes over plain HTTP.
    let plain = format!("http://{}", rig.coord.http_addr);
    let (ok, _, err) = rig.status(args(plain, &["--token-file", &viewer])).await;
    assert!(!ok);
    assert!(
        err.contains("--token-file: the token is not sent over plain http://"),
        "{err}"
    );
    assert!(!err.contains("tok-viewer"), "{err}");
    assert!(rig.api.forbidden().is_empty(), "{:#?}", rig.api.forbidden());
    rig.cancel.cancel();
}
