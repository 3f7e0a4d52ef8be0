//! The in-memory API server ([`MockApi`]) behind a real HTTPS listener, so
//! an unmodified `prewarm coordinator` reaches it through a kubeconfig as it
//! would a kube-apiserver. Each bearer token maps to one identity; its
//! requests go through [`MockApi::client_as`], so RBAC, validation and
//! TokenReview apply exactly as in the in-process tests. Watches are held
//! until there is an event, then answered (the client re-watches).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::coordinator::https::serve_tls;
use crate::coordinator::tls::CertReloader;
use crate::testkit::apiserver::{Identity, MockApi};

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error(transparent)]
    Tls(#[from] crate::coordinator::tls::TlsError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Request bodies above this are refused (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

struct Front {
    /// Bearer token → a client of the mock authenticated as its identity.
    clients: BTreeMap<String, kube::Client>,
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn forward(State(front): State<Arc<Front>>, req: Request) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_string();
    let Some(client) = front.clients.get(&token) else {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &e.to_string(),
            )
        }
    };
    let req = http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
    match client.send(req).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => status(StatusCode::BAD_GATEWAY, "InternalError", &e.to_string()),
    }
}

/// Serves `api` over HTTPS on `addr` with the pair `cert` holds, for the
/// callers in `users` (bearer token, identity), until cancelled; returns
/// the bound address.
pub async fn serve(
    api: &MockApi,
    users: Vec<(String, Identity)>,
    addr: SocketAddr,
    cert: Arc<CertReloader>,
    cancel: CancellationToken,
) -> Result<SocketAddr, FrontError> {
    let config = cert.server_config(&[b"http/1.1"])?;
    let clients = users
        .into_iter()
        .map(|(token, who)| (token, api.client_as(who)))
        .collect();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Arc::new(Front { clients }));
    serve_tls(addr, config, "apiserver", app, cancel)
        .await
        .map_err(|source| FrontError::Listen { addr, source })
}
