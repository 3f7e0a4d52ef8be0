//! The cluster demo's Kubernetes side (`prewarm testkit apiserver`): the
//! in-memory API server ([`MockApi`], enforcing the shipped RBAC) served
//! over HTTPS on loopback with a kubeconfig for the real coordinator and
//! tokens for the real agents and `prewarm status`, seeded with two nodes,
//! a gated pod and a two-member DeployGroup. What a cluster's scheduler,
//! kubelet and controllers would do is played by [`sim`], and said so.
//!
//! The demo script steps it through files in `dir`: it touches `go-gate`
//! (create the gated pod), `go-deploy` (change both members' templates) and
//! `go-exit`; this writes `gate.result` and `deploy.result` (`ok ...` or
//! `FAILED ...`) as each part ends. [`run`] returns whether both passed and
//! no request was refused by RBAC.

mod checks;
mod front;
mod objects;
mod sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::coordinator::tls::CertReloader;
use crate::testkit::apiserver::{BoundToken, Identity, MockApi, Policy, API_AUDIENCE};
pub use front::FrontError;
use objects::*;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Front(#[from] FrontError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// What `prewarm testkit apiserver` was asked to serve.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Serving pair and its CA (written into the kubeconfig).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub ca_file: PathBuf,
    /// The gated pod's image (warm on node-a only).
    pub gate_image: String,
    /// The members' new images, in member order.
    pub deploy_images: Vec<String>,
    /// How long each part may take.
    pub timeout: Duration,
}

/// The agents' link audience (a projected token's).
const LINK_AUDIENCE: &str = "prewarm.dev/coordinator";
/// Who `prewarm status` runs as: bound to ClusterRole prewarm-view.
fn viewer() -> Identity {
    Identity::service_account(NS, "prewarm-status")
}

fn write(path: &Path, text: &str) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ClusterError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The cluster as the demo starts it: RBAC as shipped, plus what the
/// demo's namespace owner and administrator grant.
fn seeded(check_url: &str, images: &[String]) -> MockApi {
    let policy = Policy::shipped()
        .with_role_binding(
            NS,
            crate::coordinator::deploys::DEPLOYGROUP_ROLE,
            &Identity::coordinator(),
        )
        .with_cluster_role_binding(crate::coordinator::view_auth::VIEW_ROLE, &viewer());
    let api = MockApi::with_policy(policy);
    api.put(NAMESPACES, namespace());
    for (name, zone) in NODE_ZONES {
        api.put(NODES, node(name, zone));
    }
    for (member, image) in MEMBERS.iter().zip(images) {
        api.put(DEPLOYMENTS, deployment(member, &previous(image)));
    }
    api.put(SCALED, scaled_object(MEMBERS[0]));
    api.put(GROUPS, deploy_group(check_url));
    api
}

/// A kubeconfig for `server` with `token`, trusting `ca`.
fn kubeconfig(server: &str, ca: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: demo\n\
clusters:\n- name: demo\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
users:\n- name: prewarm-coordinator\n  user:\n    token: {token}\n\
contexts:\n- name: demo\n  context:\n    cluster: demo\n    user: prewarm-coordinator\n    namespace: prewarm-system\n"
    )
}

/// Writes the tokens and kubeconfig; returns the coordinator's token.
fn issue(api: &MockApi, o: &ClusterOptions, server: &str) -> Result<String, ClusterError> {
    for (node, _) in NODE_ZONES {
        let t = token();
        api.issue_token(
            &t,
            BoundToken {
                namespace: "prewarm-node".into(),
                service_account: "prewarm-agent".into(),
                pod: Some(format!("prewarm-agent-{node}")),
                node: Some(node.into()),
                audiences: vec![LINK_AUDIENCE.into()],
            },
        );
        write(&o.dir.join(format!("{node}.token")), &t)?;
    }
    let view = token();
    api.issue_token(
        &view,
        BoundToken {
            namespace: NS.into(),
            service_account: "prewarm-status".into(),
            pod: None,
            node: None,
            audiences: vec![API_AUDIENCE.into()],
        },
    );
    write(&o.dir.join("view.token"), &view)?;
    let coordinator = token();
    let ca = std::fs::read(&o.ca_file).map_err(|source| ClusterError::Io {
        path: o.ca_file.display().to_string(),
        source,
    })?;
    write(
        &o.dir.join("kubeconfig"),
        &kubeconfig(server, &ca, &coordinator),
    )?;
    Ok(coordinator)
}

/// A loopback health endpoint for billing-api's httpCheck.
async fn health_endpoint() -> Result<u16, ClusterError> {
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ClusterError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| ClusterError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?
        .port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

/// Waits for the script's `go-<what>` file, up to `timeout`.
async fn go(dir: &Path, what: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let file = dir.join(format!("go-{what}"));
    while Instant::now() < deadline {
        if file.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Serves the demo cluster until the script says `go-exit` (or the parts
/// time out); returns whether the gate and the deploy group did what the
/// demo shows.
pub async fn run(o: ClusterOptions) -> Result<bool, ClusterError> {
    if o.deploy_images.len() != MEMBERS.len() {
        return Err(ClusterError::Usage(format!(
            "--deploy-image: give {} images, one per member ({}), got {}",
            MEMBERS.len(),
            MEMBERS.join(", "),
            o.deploy_images.len()
        )));
    }
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let check_port = health_endpoint().await?;
    let check_url = format!("http://localhost:{check_port}/healthz");
    let api = seeded(&check_url, &o.deploy_images);
    let cert = CertReloader::load(&o.tls_cert, &o.tls_key).map_err(FrontError::from)?;
    // Bound first, so the kubeconfig names the real port.
    let listener = std::net::TcpListener::bind(o.listen).map_err(|source| ClusterError::Io {
        path: o.listen.to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ClusterError::Io {
        path: o.listen.to_string(),
        source,
    })?;
    drop(listener);
    let server = format!("https://{addr}");
    let coordinator_token = issue(&api, &o, &server)?;
    let users = vec![(coordinator_token, Identity::coordinator())];
    front::serve(&api, users, addr, cert, cancel.clone()).await?;
    sim::spawn(&api, &cancel);
    write(
        &o.dir.join("env"),
        &format!(
            "KUBECONFIG={}\nAPISERVER={server}\nCHECK_URL={check_url}\n",
            o.dir.join("kubeconfig").display()
        ),
    )?;
    let gate = if go(&o.dir, "gate", o.timeout).await {
        checks::gate(&api, &o.gate_image, o.timeout).await
    } else {
        Err("the demo never asked for the gated pod".to_string())
    };
    write(&o.dir.join("gate.result"), &result_line(&gate))?;
    let deploy = if go(&o.dir, "deploy", o.timeout).await {
        change_templates(&api, &o.deploy_images);
        checks::deploy_group(&api, o.timeout).await
    } else {
        Err("the demo never asked for the deploy".to_string())
    };
    write(&o.dir.join("deploy.result"), &result_line(&deploy))?;
    go(&o.dir, "exit", o.timeout).await;
    let forbidden = api.forbidden();
    for r in &forbidden {
        println!("   refused by RBAC: {} {} as {}", r.method, r.path, r.user);
    }
    Ok(gate.is_ok() && deploy.is_ok() && forbidden.is_empty())
}

fn result_line(r: &Result<String, String>) -> String {
    match r {
        Ok(s) => format!("ok {s}\n"),
        Err(s) => format!("FAILED {s}\n"),
    }
}

/// A new release of both members, as `kubectl set image` on each would
/// make it (the controller counts the spec change in the generation).
fn change_templates(api: &MockApi, images: &[String]) {
    for (member, image) in MEMBERS.iter().zip(images) {
        api.update(DEPLOYMENTS, NS, member, |d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
            let g = d["metadata"]["generation"].as_i64().unwrap_or(1);
            d["metadata"]["generation"] = json!(g + 1);
        });
        println!("   new release: {NS}/{member} → {image} (the Deployment stays paused)");
    }
}
