//! The plain HTTP port (`--http-listen`, 9465): `/metrics`, `/healthz` and
//! `/readyz`, open to Prometheus and the kubelet's probes. The cluster view
//! (`/v1/nodes`, `/v1/images`, `/v1/windows`, `/v1/deploys`, read-only
//! JSON) is defined here but served on the HTTPS listener behind
//! authentication ([`super::https`]); only `--insecure` without a
//! certificate serves it here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::link::LinkState;
use crate::wire::v1::image_state::Phase;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub node: String,
    pub pool: String,
    pub connected: bool,
    pub last_report_seconds_ago: f64,
    pub images_warm: usize,
    pub images_pulling: usize,
    pub free_disk_bytes: u64,
    pub pin_supported: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRow {
    pub image: String,
    pub pool: String,
    pub warm_nodes: usize,
    pub nodes: usize,
    pub bytes_pending: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WindowRow {
    pub window: String,
    pub node: String,
    pub phase: String,
    pub warm: bool,
    pub next_activation_unix: i64,
    /// "config" (the agent's ConfigMap) or `keda:<namespace>/<name>#<trigger>`.
    #[serde(default)]
    pub source: String,
}

/// A deploy group as the leader last reconciled it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeployGroupRow {
    pub namespace: String,
    pub name: String,
    /// Members in deploy order.
    pub members: Vec<String>,
    pub status: crate::wire::deploygroup::DeployGroupStatus,
}

/// The cluster view's routes (`/v1/...`), without authentication: the
/// HTTPS listener puts [`super::https::view_routes`] in front of them.
pub fn view_routes(state: Arc<LinkState>) -> Router {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/images", get(images))
        .route("/v1/windows", get(windows))
        .route("/v1/deploys", get(deploys))
        .with_state(state)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until cancelled,
/// and the view too when `with_view` (insecure mode only: it is then
/// unauthenticated); returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<LinkState>,
    with_view: bool,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    if with_view {
        app = app.merge(view_routes(state));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(local)
}

async fn readyz(State(s): State<Arc<LinkState>>) -> impl IntoResponse {
    let (code, body) = super::ready::answer(&s.readiness, s.shutdown.is_cancelled());
    let code = axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK);
    (code, body)
}

async fn deploys(State(state): State<Arc<LinkState>>) -> Json<Vec<DeployGroupRow>> {
    let rows = state.deploys.read().unwrap_or_else(|p| p.into_inner());
    Json(rows.values().cloned().collect())
}

pub fn node_summaries(state: &LinkState) -> Vec<NodeSummary> {
    let now = Utc::now();
    state
        .view()
        .nodes()
        .map(|n| NodeSummary {
            node: n.node.clone(),
            pool: n.pool().to_string(),
            connected: n.connected,
            last_report_seconds_ago: (now - n.last_report).num_milliseconds().max(0) as f64
                / 1000.0,
            images_warm: n
                .images
                .values()
                .filter(|i| i.phase == Phase::Warm as i32)
                .count(),
            images_pulling: n
                .images
                .values()
                .filter(|i| i.phase == Phase::Pulling as i32)
                .count(),
            free_disk_bytes: n.free_disk_bytes,
            pin_supported: n.pin_supported,
        })
        .collect()
}

/// Image × pool rows over the connected nodes that want each image (see
/// [`crate::plan::view::ClusterView::image_pools`]).
pub fn image_rows(state: &LinkState) -> Vec<ImageRow> {
    let intents = state.intents.borrow().clone();
    state
        .view()
        .image_pools(&intents, Utc::now())
        .into_iter()
        .map(|r| ImageRow {
            image: r.image,
            pool: r.pool,
            warm_nodes: r.warm_nodes,
            nodes: r.nodes,
            bytes_pending: r.bytes_pending,
        })
        .collect()
}

async fn nodes(State(s): State<Arc<LinkState>>) -> Json<Vec<NodeSummary>> {
    Json(node_summaries(&s))
}

async fn images(State(s): State<Arc<LinkState>>) -> Json<Vec<ImageRow>> {
    Json(image_rows(&s))
}

async fn windows(State(s): State<Arc<LinkState>>) -> Json<Vec<WindowRow>> {
    let view = s.view();
    let rows = view
        .nodes()
        .flat_map(|n| {
            n.windows.values().map(|w| WindowRow {
                window: w.name.clone(),
                node: n.node.clone(),
                phase: w.phase.clone(),
                warm: w.warm,
                next_activation_unix: w.next_activation_unix,
                source: match w.source.as_str() {
                    "" => "config".to_string(),
                    s => s.to_string(),
                },
            })
        })
        .collect();
    Json(rows)
}

async fn metrics(State(s): State<Arc<LinkState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        refresh_metrics(&s),
    )
}

/// Brings the view-derived metrics up to date and renders them all.
fn refresh_metrics(s: &LinkState) -> String {
    let now = Utc::now();
    {
        let view = s.view();
        let lag = view.report_lag(now).into_iter().fold(0.0, f64::max);
        s.metrics.report_lag.set(lag);
        let disconnected = view.nodes().filter(|n| !n.connected).count();
        s.metrics.disconnected.set(disconnected as i64);
        s.metrics
            .set_window_pools(&crate::plan::window_pools::window_pools(view.nodes()));
    }
    s.metrics
        .set_warm_fractions(image_rows(s).into_iter().map(|r| {
            let frac = if r.nodes == 0 {
                0.0
            } else {
                r.warm_nodes as f64 / r.nodes as f64
            };
            (r.image, r.pool, frac)
        }));
    s.metrics.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::view::POOL_LABEL;
    use crate::wire::v1::{Snapshot, WindowState};

    // Valid as WindowState gains fields (the KEDA windows add `source`).
    #[allow(clippy::needless_update)]
    fn snap(node: &str, phase: &str, warm: bool) -> Snapshot {
        Snapshot {
            node: node.into(),
            labels: [(POOL_LABEL.to_string(), "int".to_string())].into(),
            windows: vec![WindowState {
                name: "erp".into(),
                phase: phase.into(),
                next_activation_unix: 1_800_000_000,
                warm,
                ..Default::default()
            }],
            seq: 1,
            ..Default::default()
        }
    }

    /// The scrape brings the view-derived series up to date: the
    /// disconnected node is counted, and left out of the window rows.
    #[test]
    fn metrics_count_disconnected_nodes_and_windows_per_pool() {
        let state = LinkState::with_nodes(
            vec![
                snap("n1", "warming", true),
                snap("n2", "late", false),
                snap("n3", "late", false),
            ],
            CancellationToken::new(),
        );
        state.update_view(|v| v.disconnect("n3"));
        let text = refresh_metrics(&state);
        for line in [
            "prewarm_coordinator_disconnected_agents 1",
            r#"prewarm_coordinator_window_warm_fraction{pool="int",window="erp"} 0.5"#,
            r#"prewarm_coordinator_window_nodes{phase="late",pool="int",window="erp"} 1"#,
            r#"prewarm_coordinator_window_nodes{phase="warming",pool="int",window="erp"} 1"#,
            r#"prewarm_coordinator_window_next_activation_timestamp_seconds{pool="int",window="erp"} 1800000000"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
