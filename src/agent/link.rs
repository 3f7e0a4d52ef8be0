//! The agent's end of the link to the coordinator. It reconnects with
//! backoff and jitter, sends a full snapshot on every connect and deltas
//! after, and hands received intents to the reconcile loop. The agent never
//! waits on it: with the coordinator down, windows and intents already
//! received keep running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::wire::limits;
use crate::wire::v1::link_client::LinkClient;
use crate::wire::v1::{
    agent_message, coordinator_message, AgentMessage, Delta, ImageState, Intent, Snapshot,
    WindowState,
};

/// What the agent currently knows about its node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeReport {
    pub labels: BTreeMap<String, String>,
    pub images: BTreeMap<String, ImageState>,
    pub windows: BTreeMap<String, WindowState>,
    pub free_disk_bytes: u64,
    pub pin_supported: bool,
    /// Learned pull throughput, bytes/s; None until a pull was measured.
    pub throughput_bytes_per_second: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// e.g. https://prewarm-coordinator.prewarm-system.svc:8443
    pub endpoint: String,
    /// Projected ServiceAccount token, re-read on every connect (it rotates).
    pub token_file: PathBuf,
    /// CA of the coordinator's serving certificate; None for plain HTTP.
    pub ca_file: Option<PathBuf>,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("coordinator endpoint {0}: {1}")]
    Endpoint(String, String),
    #[error("token {0}: {1}")]
    Token(String, String),
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("coordinator closed the stream")]
    Closed,
}

/// Runs until cancelled.
pub async fn run(
    cfg: LinkConfig,
    mut reports: watch::Receiver<Arc<NodeReport>>,
    intents: watch::Sender<Vec<Intent>>,
    cancel: CancellationToken,
) {
    let mut delays = backoff();
    loop {
        let started = Instant::now();
        match session(&cfg, &mut reports, &intents, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, endpoint = %cfg.endpoint, "coordinator link down; agent continues on its own")
            }
        }
        // A session that lasted was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn session(
    cfg: &LinkConfig,
    reports: &mut watch::Receiver<Arc<NodeReport>>,
    intents: &watch::Sender<Vec<Intent>>,
    cancel: &CancellationToken,
) -> Result<(), LinkError> {
    let endpoint_err =
        |e: &dyn std::fmt::Display| LinkError::Endpoint(cfg.endpoint.clone(), e.to_string());
    let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| endpoint_err(&e))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| LinkError::Endpoint(ca.display().to_string(), e.to_string()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| endpoint_err(&e))?;
    }
    let channel = endpoint.connect().await.map_err(|e| endpoint_err(&e))?;
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| LinkError::Token(cfg.token_file.display().to_string(), e.to_string()))?;
    let mut client = LinkClient::new(channel)
        .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let mut seq = 1u64;
    let mut sent = reports.borrow_and_update().clone();
    tx.send(snapshot(&cfg.node, &sent, seq))
        .await
        .map_err(|_| LinkError::Closed)?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let auth = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        LinkError::Token(
            cfg.token_file.display().to_string(),
            "not a valid header value".into(),
        )
    })?;
    req.metadata_mut().insert("authorization", auth);
    let mut inbound = client.attach(req).await?.into_inner();
    tracing::info!(endpoint = %cfg.endpoint, "connected to the coordinator");
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                Some(m) => {
                    if let Some(coordinator_message::Body::Intents(set)) = m.body {
                        tracing::info!(intents = set.intents.len(), "intents received");
                        let _ = intents.send(set.intents);
                    }
                }
                None => return Err(LinkError::Closed),
            },
            changed = reports.changed() => {
                if changed.is_err() { return Ok(()); }
                let now = reports.borrow_and_update().clone();
                if let Some(delta) = diff(&sent, &now, seq + 1) {
                    seq += 1;
                    tx.send(AgentMessage { body: Some(agent_message::Body::Delta(delta)) }).await.map_err(|_| LinkError::Closed)?;
                }
                sent = now;
            }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

pub fn snapshot(node: &str, r: &NodeReport, seq: u64) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Snapshot(Snapshot {
            node: node.to_string(),
            labels: r.labels.clone().into_iter().collect(),
            taints: Vec::new(),
            images: r.images.values().cloned().collect(),
            windows: r.windows.values().cloned().collect(),
            free_disk_bytes: r.free_disk_bytes,
            pin_supported: r.pin_supported,
            seq,
            throughput_bytes_per_second: r.throughput_bytes_per_second,
        })),
    }
}

/// What changed between two reports; None when nothing did.
pub fn diff(old: &NodeReport, new: &NodeReport, seq: u64) -> Option<Delta> {
    let upserted: Vec<ImageState> = new
        .images
        .iter()
        .filter(|(k, v)| old.images.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let removed: Vec<String> = old
        .images
        .keys()
        .filter(|k| !new.images.contains_key(*k))
        .cloned()
        .collect();
    let windows: Vec<WindowState> = new
        .windows
        .iter()
        .filter(|(k, v)| old.windows.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let labels_changed = old.labels != new.labels;
    let free = (old.free_disk_bytes != new.free_disk_bytes).then_some(new.free_disk_bytes);
    // A learned throughput is only ever replaced, never forgotten.
    let throughput = new
        .throughput_bytes_per_second
        .filter(|t| old.throughput_bytes_per_second != Some(*t));
    if upserted.is_empty()
        && removed.is_empty()
        && windows.is_empty()
        && !labels_changed
        && free.is_none()
        && throughput.is_none()
    {
        return None;
    }
    Some(Delta {
        seq,
        upserted,
        removed,
        windows,
        free_disk_bytes: free,
        labels: if labels_changed {
            new.labels.clone().into_iter().collect()
        } else {
            Default::default()
        },
        labels_changed,
        throughput_bytes_per_second: throughput,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::v1::image_state::Phase;

    fn img(name: &str, phase: Phase) -> ImageState {
        ImageState {
            name: name.into(),
            phase: phase as i32,
            ..Default::default()
        }
    }

    #[test]
    fn diff_carries_only_changes() {
        let mut a = NodeReport::default();
        a.images
            .insert("r/a:1".into(), img("r/a:1", Phase::Pulling));
        a.images.insert("r/b:1".into(), img("r/b:1", Phase::Warm));
        let mut b = a.clone();
        assert_eq!(diff(&a, &b, 2), None);
        b.images.insert("r/a:1".into(), img("r/a:1", Phase::Warm));
        b.images.remove("r/b:1");
        b.free_disk_bytes = 7;
        let d = diff(&a, &b, 2).unwrap();
        assert_eq!(d.seq, 2);
        assert_eq!(d.upserted, vec![img("r/a:1", Phase::Warm)]);
        assert_eq!(d.removed, vec!["r/b:1".to_string()]);
        assert_eq!(d.free_disk_bytes, Some(7));
        assert!(!d.labels_changed);
        assert_eq!(d.throughput_bytes_per_second, None);
    }

    #[test]
    fn throughput_travels_in_snapshots_and_in_deltas_when_it_changes() {
        let mut a = NodeReport::default();
        let Some(agent_message::Body::Snapshot(s)) = snapshot("n1", &a, 1).body else {
            panic!("a snapshot");
        };
        assert_eq!(s.throughput_bytes_per_second, None, "nothing measured yet");
        let mut b = a.clone();
        b.throughput_bytes_per_second = Some(40e6);
        let d = diff(&a, &b, 2).expect("a learned throughput is a change");
        assert_eq!(d.throughput_bytes_per_second, Some(40e6));
        assert!(d.upserted.is_empty() && d.removed.is_empty());
        a = b.clone();
        assert_eq!(diff(&a, &b, 3), None, "unchanged: nothing sent");
        b.throughput_bytes_per_second = Some(42e6);
        assert_eq!(
            diff(&a, &b, 3).unwrap().throughput_bytes_per_second,
            Some(42e6)
        );
        let Some(agent_message::Body::Snapshot(s)) = snapshot("n1", &b, 4).body else {
            panic!("a snapshot");
        };
        assert_eq!(s.throughput_bytes_per_second, Some(42e6));
    }
}
