//! The agent's end of the link to the coordinator. It reconnects with
//! jittered backoff (short for transient failures such as a failover, long
//! when refused, see [`retry_delay`]), sends a full snapshot on every
//! connect and deltas after, and hands received intents to the reconcile
//! loop. The agent never waits on it: with the coordinator down, windows
//! and intents already received keep running (the last set received,
//! coordinator windows included, stays in the watch channel).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::wire::limits;
use crate::wire::v1::link_client::LinkClient;
use crate::wire::v1::{
    agent_message, coordinator_message, AgentMessage, Delta, ImageState, IntentSet, Snapshot,
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
    #[error("coordinator CA {0}: {1} (the ConfigMap prewarm-coordinator-ca is published by the leading coordinator from its serving Secret)")]
    CaMissing(String, String),
    #[error("coordinator CA {0}: {1}")]
    CaInvalid(String, String),
    #[error("token {0}: {1}")]
    Token(String, String),
    #[error("coordinator endpoint {0}: {1}")]
    Endpoint(String, String),
    #[error("coordinator {0}: TLS: {1}")]
    Tls(String, String),
    #[error("coordinator {0}: cannot connect: {1}")]
    Connect(String, String),
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("coordinator closed the stream")]
    Closed,
}

/// Why an attempt or a session failed: the `reason` label of
/// `prewarm_coordinator_link_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    CaMissing,
    CaInvalid,
    TokenMissing,
    Endpoint,
    Tls,
    Connect,
    /// Refused or ended with `Unavailable`: a follower, a replica shutting
    /// down, a leader gone mid-stream.
    Unavailable,
    Unauthenticated,
    PermissionDenied,
    Protocol,
    Closed,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CaMissing => "ca_missing",
            Self::CaInvalid => "ca_invalid",
            Self::TokenMissing => "token_missing",
            Self::Endpoint => "endpoint",
            Self::Tls => "tls",
            Self::Connect => "connect",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::Protocol => "protocol",
            Self::Closed => "closed",
        }
    }

    pub fn retry(self) -> RetryClass {
        match self {
            Self::Connect | Self::Unavailable | Self::Closed => RetryClass::Transient,
            Self::CaMissing | Self::CaInvalid | Self::TokenMissing => RetryClass::Waiting,
            Self::Endpoint
            | Self::Tls
            | Self::Unauthenticated
            | Self::PermissionDenied
            | Self::Protocol => RetryClass::Rejected,
        }
    }
}

impl LinkError {
    pub fn reason(&self) -> FailureReason {
        use tonic::Code;
        match self {
            Self::CaMissing(..) => FailureReason::CaMissing,
            Self::CaInvalid(..) => FailureReason::CaInvalid,
            Self::Token(..) => FailureReason::TokenMissing,
            Self::Endpoint(..) => FailureReason::Endpoint,
            Self::Tls(..) => FailureReason::Tls,
            Self::Connect(..) => FailureReason::Connect,
            Self::Closed => FailureReason::Closed,
            Self::Rpc(s) => match s.code() {
                Code::Unavailable => FailureReason::Unavailable,
                Code::Unauthenticated => FailureReason::Unauthenticated,
                Code::PermissionDenied => FailureReason::PermissionDenied,
                Code::InvalidArgument
                | Code::ResourceExhausted
                | Code::Unimplemented
                | Code::OutOfRange => FailureReason::Protocol,
                // A reset connection, a cancelled stream, "resend a
                // snapshot": a reconnect fixes them.
                _ => FailureReason::Closed,
            },
        }
    }
}

/// How a failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// No coordinator reachable or willing right now (a failover, a
    /// restart): retried often, so an agent attaches within
    /// [`REATTACH_BOUND`] of a leader serving, however long the outage.
    Transient,
    /// A local file not there yet (the CA ConfigMap before the coordinator
    /// published it, the token before the kubelet projected it): cheap to
    /// look again.
    Waiting,
    /// The coordinator refused us, or the config is wrong: backs off to
    /// 30 s so thousands of agents do not hammer it.
    Rejected,
}

/// TCP (and TLS) connect timeout of one attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between a leader starting to serve and the next attempt
/// of an agent whose attempts fail transiently: one hung connect plus the
/// longest transient delay. The rest of the 5 s target is the Service's
/// endpoints catching up with the leader label.
pub const REATTACH_BOUND: Duration = Duration::from_secs(4);

/// The delay before the next attempt after `failures` consecutive failures
/// (1 for the first) of `class`; `jitter` in [0, 1) spreads agents out
/// ("equal jitter": between half and all of the exponential step, never 0).
pub fn retry_delay(class: RetryClass, failures: u32, jitter: f64) -> Duration {
    let (base, cap) = match class {
        RetryClass::Transient => (Duration::from_millis(250), Duration::from_secs(2)),
        RetryClass::Waiting => (Duration::from_secs(1), Duration::from_secs(5)),
        RetryClass::Rejected => (Duration::from_secs(1), Duration::from_secs(30)),
    };
    let step = base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Told about the link's state (the agent's metrics).
pub trait LinkObserver: Send + Sync {
    /// A stream was accepted.
    fn attached(&self);
    /// An attempt failed or a session ended.
    fn failed(&self, reason: FailureReason);
}

/// For links nobody watches.
pub struct Unobserved;

impl LinkObserver for Unobserved {
    fn attached(&self) {}
    fn failed(&self, _: FailureReason) {}
}

/// Runs until cancelled.
pub async fn run(
    cfg: LinkConfig,
    reports: watch::Receiver<Arc<NodeReport>>,
    intents: watch::Sender<IntentSet>,
    cancel: CancellationToken,
) {
    run_observed(cfg, reports, intents, Arc::new(Unobserved), cancel).await
}

/// [`run`], reporting the link's state to `observer`. Logs when the link
/// comes up and when it goes down or the reason changes, not every retry.
pub async fn run_observed(
    cfg: LinkConfig,
    mut reports: watch::Receiver<Arc<NodeReport>>,
    intents: watch::Sender<IntentSet>,
    observer: Arc<dyn LinkObserver>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let mut last: Option<FailureReason> = None;
    loop {
        let started = Instant::now();
        let on_attach = || {
            observer.attached();
            tracing::info!(endpoint = %cfg.endpoint, after_failures = failures, "linked to the coordinator");
        };
        let result = session(&cfg, &mut reports, &intents, &cancel, on_attach).await;
        let Err(e) = result else { return };
        // Schedules count only while the link is up: the agent falls back to
        // its jittered local plan (intents and windows stay).
        intents.send_if_modified(|set| {
            let had = !set.schedules.is_empty();
            set.schedules.clear();
            had
        });
        let reason = e.reason();
        observer.failed(reason);
        // A session that lasted was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
            last = None;
        }
        failures = failures.saturating_add(1);
        let delay = retry_delay(reason.retry(), failures, rand::random::<f64>());
        if last != Some(reason) {
            tracing::warn!(reason = reason.as_str(), error = %e, endpoint = %cfg.endpoint, retry_in = ?delay, "coordinator link down; agent continues on its own");
        } else {
            tracing::debug!(reason = reason.as_str(), error = %e, retry_in = ?delay, "coordinator link still down");
        }
        last = Some(reason);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Reads the CA bundle: present, and PEM certificates.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, LinkError> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display().to_string();
    let pem =
        std::fs::read(path).map_err(|e| LinkError::CaMissing(shown.clone(), e.to_string()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LinkError::CaInvalid(shown.clone(), format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(LinkError::CaInvalid(
            shown,
            "holds no PEM certificate".into(),
        ));
    }
    Ok(pem)
}

/// Whether a connect error came from the TLS handshake (rustls), looking
/// through the error's sources and the io::Errors wrapping them.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tokio_rustls::rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_tls(inner) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A connect error with its causes, e.g. "transport error: connection refused".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

async fn session(
    cfg: &LinkConfig,
    reports: &mut watch::Receiver<Arc<NodeReport>>,
    intents: &watch::Sender<IntentSet>,
    cancel: &CancellationToken,
    on_attach: impl FnOnce(),
) -> Result<(), LinkError> {
    let endpoint_err =
        |e: &dyn std::fmt::Display| LinkError::Endpoint(cfg.endpoint.clone(), e.to_string());
    let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| endpoint_err(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    // Both files are read on every attempt: the CA may have been published
    // or renewed, and the token rotates.
    if let Some(ca) = &cfg.ca_file {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_ca(ca)?));
        endpoint = endpoint.tls_config(tls).map_err(|e| endpoint_err(&e))?;
    }
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| LinkError::Token(cfg.token_file.display().to_string(), e.to_string()))?;
    let auth = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        LinkError::Token(
            cfg.token_file.display().to_string(),
            "not a valid header value".into(),
        )
    })?;
    let channel = endpoint.connect().await.map_err(|e| {
        if is_tls(&e) {
            LinkError::Tls(cfg.endpoint.clone(), chain(&e))
        } else {
            LinkError::Connect(cfg.endpoint.clone(), chain(&e))
        }
    })?;
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
    req.metadata_mut().insert("authorization", auth);
    let mut inbound = client.attach(req).await?.into_inner();
    on_attach();
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                Some(m) => {
                    if let Some(coordinator_message::Body::Intents(set)) = m.body {
                        tracing::info!(intents = set.intents.len(), windows = set.windows.len(), schedules = set.schedules.len(), "intents received");
                        // Kept (watch holds the last value) while the link is down.
                        let _ = intents.send(set);
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

    /// Time from a leader starting to serve until the next attempt, for an
    /// agent whose attempts failed transiently since t = 0 and each took
    /// `cost` (refused at once, or a hung connect up to the timeout).
    fn reattach_gap(
        outage: Duration,
        cost: Duration,
        jitter: &mut impl FnMut() -> f64,
    ) -> Duration {
        let mut t = Duration::ZERO;
        let mut failures = 0;
        while t < outage {
            failures += 1;
            t += cost + retry_delay(RetryClass::Transient, failures, jitter());
        }
        t - outage
    }

    #[test]
    fn after_any_outage_a_transient_failure_is_retried_within_the_bound() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut worst = Duration::ZERO;
        // Every 50 ms up to 3 minutes (the schedule is periodic long before
        // that), then an hour and a day.
        let outages = (0..=180_000u64)
            .step_by(50)
            .chain([3_600_000, 86_400_000])
            .map(Duration::from_millis);
        for outage in outages {
            for cost in [Duration::ZERO, Duration::from_millis(3), CONNECT_TIMEOUT] {
                for fixed in [0.0, 0.5, 0.999_999] {
                    worst = worst.max(reattach_gap(outage, cost, &mut || fixed));
                }
                worst = worst.max(reattach_gap(outage, cost, &mut random));
            }
        }
        assert!(
            worst <= REATTACH_BOUND,
            "an agent reattached {worst:?} after the leader served"
        );
        assert!(REATTACH_BOUND < Duration::from_secs(5));
    }

    #[test]
    fn refusals_back_off_to_thirty_seconds_and_waiting_to_five() {
        let max = |class, n| retry_delay(class, n, 0.999_999);
        let min = |class, n| retry_delay(class, n, 0.0);
        assert_eq!(min(RetryClass::Rejected, 1), Duration::from_millis(500));
        assert!(max(RetryClass::Rejected, 5) >= Duration::from_secs(15));
        assert!(min(RetryClass::Rejected, 20) >= Duration::from_secs(15));
        assert!(max(RetryClass::Rejected, 1000) <= Duration::from_secs(30));
        assert!(max(RetryClass::Waiting, 1000) <= Duration::from_secs(5));
        assert!(min(RetryClass::Transient, 1) >= Duration::from_millis(125));
        assert!(max(RetryClass::Transient, u32::MAX) <= Duration::from_secs(2));
    }

    #[test]
    fn a_followers_refusal_is_transient_and_auth_errors_are_not() {
        let reason = |s: tonic::Status| LinkError::Rpc(s).reason();
        let follower =
            tonic::Status::unavailable("this coordinator replica is not the leader; reconnect");
        assert_eq!(reason(follower), FailureReason::Unavailable);
        assert_eq!(FailureReason::Unavailable.retry(), RetryClass::Transient);
        assert_eq!(FailureReason::Connect.retry(), RetryClass::Transient);
        assert_eq!(
            reason(tonic::Status::unauthenticated("token rejected")).retry(),
            RetryClass::Rejected
        );
        assert_eq!(
            reason(tonic::Status::permission_denied("foreign node")).retry(),
            RetryClass::Rejected
        );
        assert_eq!(
            reason(tonic::Status::failed_precondition("resend a snapshot")),
            FailureReason::Closed
        );
        let missing = LinkError::CaMissing("/ca.crt".into(), "No such file".into());
        assert_eq!(missing.reason().as_str(), "ca_missing");
        assert_eq!(missing.reason().retry(), RetryClass::Waiting);
    }

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
