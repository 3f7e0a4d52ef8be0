//! The coordinator's HTTPS listener (`--https-listen`, 9443), with the
//! reloading serving certificate: the admission webhook (`/mutate-pods`,
//! called by the API server) and the cluster view (`/v1/...`), which
//! answers only callers whose bearer token TokenReview accepts and whose
//! user a SubjectAccessReview allows `get` on the path ([`view_auth`]).
//! Metrics and probes stay on the plain HTTP port ([`super::http`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::link::LinkState;
use super::tls::CertReloader;
use super::view_auth::{self, ViewAuth, ViewAuthError, VIEW_ROLE};

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// TLS connections whose handshake completed, accepted on their own tasks
/// so one slow client does not hold up the others.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped (shutdown): wait for the server to end.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The refusal a view request gets; short, and never the token.
fn refusal(e: &ViewAuthError) -> Response {
    let (code, text) = match e {
        ViewAuthError::Missing => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized: send a ServiceAccount token (Authorization: Bearer)\n".to_string(),
        ),
        ViewAuthError::Rejected(_) => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized: the token was not accepted\n".to_string(),
        ),
        ViewAuthError::Forbidden { user, path } => (
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: user \"{user}\" cannot get path \"{path}\": bind the ClusterRole {VIEW_ROLE} to it\n"
            ),
        ),
        ViewAuthError::Unavailable(_) | ViewAuthError::RateLimited => (
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot check the token right now; retry later\n".to_string(),
        ),
    };
    let mut resp = (code, text).into_response();
    let headers = resp.headers_mut();
    match code {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

/// Lets a view request through only when its caller may get its path.
async fn require_access(
    State(auth): State<Arc<dyn ViewAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match view_auth::check(auth.as_ref(), authorization, &path).await {
        Ok(caller) => {
            tracing::debug!(user = %caller.user, %path, "view request allowed");
            next.run(req).await
        }
        Err(e) => {
            match &e {
                ViewAuthError::Unavailable(_) | ViewAuthError::RateLimited => {
                    tracing::warn!(error = %e, %path, "view request not checked")
                }
                _ => tracing::debug!(error = %e, %path, "view request refused"),
            }
            refusal(&e)
        }
    }
}

/// The authenticated cluster view.
pub fn view_routes(state: Arc<LinkState>, auth: Arc<dyn ViewAuth>) -> Router {
    super::http::view_routes(state)
        .route_layer(axum::middleware::from_fn_with_state(auth, require_access))
}

/// Serves the webhook, and the view when `view` is given, over HTTPS on
/// `addr` until cancelled, with the certificate `cert` holds now (reloaded
/// on change); returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    cert: Arc<CertReloader>,
    view: Option<(Arc<LinkState>, Arc<dyn ViewAuth>)>,
    cancel: CancellationToken,
) -> Result<SocketAddr, HttpsError> {
    let config = cert.server_config(&[])?;
    let mut app = super::webhook::routes();
    if let Some((state, auth)) = view {
        app = app.merge(view_routes(state, auth));
    }
    let local = serve_tls(addr, config, "https", app, cancel)
        .await
        .map_err(|source| HttpsError::Listen { addr, source })?;
    tracing::info!(%local, "HTTPS serving (admission webhook, cluster view)");
    Ok(local)
}

/// Binds `addr` and serves `app` over TLS with `config` (handshakes on
/// their own tasks, named `what` in logs) until cancelled; returns the
/// bound address.
pub(crate) async fn serve_tls(
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    what: &'static str,
    app: Router,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let tcp = TcpListener::bind(addr).await?;
    let local = tcp.local_addr()?;
    let rx = super::tls::accept(tcp, config, what, cancel.clone());
    let listener = TlsListener { rx, local };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(local)
}
