//! The coordinator's end of the agent link: authenticates each stream, binds
//! it to the caller's node, folds reports into the cluster view and pushes
//! the node's intents. Bad messages end the stream with a clear status;
//! nothing a client sends can crash or grow the coordinator unboundedly.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::Utc;
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{AuthError, Authenticator};
use super::metrics::CoordinatorMetrics;
use crate::plan::forget::Retention;
use crate::plan::view::{ClusterView, ViewError};
use crate::wire::limits;
use crate::wire::v1::link_server::Link;
use crate::wire::v1::{
    agent_message, coordinator_message, AgentMessage, CoordinatorMessage, Delta, Intent, IntentSet,
    PullSchedule, Snapshot, WindowSpec,
};

/// Coordinator windows by node name (from KEDA ScaledObjects).
pub type NodeWindows = std::collections::BTreeMap<String, Vec<WindowSpec>>;
/// Registry-budget schedules by node name ([`super::budget`]).
pub type NodeSchedules = std::collections::BTreeMap<String, Vec<PullSchedule>>;

/// Shared by every stream.
pub struct LinkState {
    pub view: RwLock<ClusterView>,
    pub auth: Arc<dyn Authenticator>,
    pub metrics: Arc<CoordinatorMetrics>,
    /// The full intent set; each stream sends its node's share on change.
    pub intents: watch::Sender<Arc<Vec<Intent>>>,
    /// Each node's coordinator windows; sent with its intents on change.
    pub windows: watch::Sender<Arc<NodeWindows>>,
    /// Each node's registry-budget schedules; sent with its intents on change.
    pub schedules: watch::Sender<Arc<NodeSchedules>>,
    /// Ends every stream on shutdown so agents move to another replica.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Bumped after every change to the view, for controllers that wait
    /// for warmth.
    pub view_changes: watch::Sender<u64>,
    /// Whether this replica takes agents (only the leader does when the
    /// coordinator runs with leader election; always, otherwise).
    pub serving: watch::Sender<bool>,
    /// Deploy groups as last reconciled, by `namespace/name`.
    pub deploys: RwLock<std::collections::BTreeMap<String, super::http::DeployGroupRow>>,
    /// Intents by the source that published them (rollouts, gate, deploys);
    /// `intents` is their union.
    sources: std::sync::Mutex<std::collections::BTreeMap<String, Vec<Intent>>>,
    /// The stream that owns each connected node's record: a reconnecting
    /// agent's new stream replaces the old one, whose end or late messages
    /// then no longer touch the record.
    streams: std::sync::Mutex<HashMap<String, Owner>>,
    next_stream: AtomicU64,
    /// How long disconnected node records are kept.
    pub retention: Retention,
    /// What `/readyz` answers.
    pub readiness: super::ready::Readiness,
    /// Whether intents may carry workload credentials to agents: not over
    /// a plain-text link (`--insecure`).
    credentials_allowed: std::sync::atomic::AtomicBool,
}

/// The stream a node's record belongs to.
struct Owner {
    id: u64,
    /// Cancelled when a newer stream for the node replaces this one.
    replaced: CancellationToken,
}

impl LinkState {
    pub fn new(
        auth: Arc<dyn Authenticator>,
        metrics: Arc<CoordinatorMetrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        Self::with_retention(auth, metrics, shutdown, Retention::default())
    }

    pub fn with_retention(
        auth: Arc<dyn Authenticator>,
        metrics: Arc<CoordinatorMetrics>,
        shutdown: tokio_util::sync::CancellationToken,
        retention: Retention,
    ) -> Arc<Self> {
        let (intents, _) = watch::channel(Arc::new(Vec::new()));
        let (windows, _) = watch::channel(Arc::new(NodeWindows::new()));
        let (schedules, _) = watch::channel(Arc::new(NodeSchedules::new()));
        let (view_changes, _) = watch::channel(0);
        let (serving, _) = watch::channel(true);
        Arc::new(Self {
            view: RwLock::new(ClusterView::default()),
            auth,
            metrics,
            intents,
            windows,
            schedules,
            shutdown,
            view_changes,
            serving,
            deploys: Default::default(),
            sources: Default::default(),
            streams: Default::default(),
            next_stream: AtomicU64::new(1),
            retention,
            readiness: Default::default(),
            credentials_allowed: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Forgets the node records [`crate::plan::forget`] picks (all, or only
    /// `node`'s): they leave the view, and so the metrics and the intents
    /// derived from it. Returns how many went.
    pub fn forget_stale(&self, node: Option<&str>) -> usize {
        let gone = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            view.forget(&self.retention, Utc::now(), node)
        };
        if gone.is_empty() {
            return 0;
        }
        self.view_changes.send_modify(|v| *v = v.wrapping_add(1));
        for (n, why) in &gone {
            self.metrics
                .forgotten_nodes
                .with_label_values(&[why.as_str()])
                .inc();
            tracing::info!(node = %n, reason = why.as_str(), "node forgotten");
        }
        gone.len()
    }

    /// Makes a new stream the owner of `node`'s record and applies its
    /// snapshot; the stream it replaces (if any) is told to end. Returns
    /// the stream's id and the token cancelled when it is replaced in turn.
    fn claim(&self, node: &str, snap: Snapshot) -> (u64, CancellationToken) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let owner = Owner {
            id,
            replaced: replaced.clone(),
        };
        if let Some(old) = streams.insert(node.to_string(), owner) {
            old.replaced.cancel();
        }
        self.update_view(|v| v.apply_snapshot(snap, Utc::now()));
        self.metrics.connected.set(streams.len() as i64);
        (id, replaced)
    }

    /// Applies `f` to the view if stream `id` still owns `node`'s record.
    fn as_owner<R>(&self, node: &str, id: u64, f: impl FnOnce(&mut ClusterView) -> R) -> Option<R> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let owns = streams.get(node).is_some_and(|o| o.id == id);
        owns.then(|| self.update_view(f))
    }

    /// Stream `id` ended: the node is marked disconnected unless a newer
    /// stream owns it.
    fn release(&self, node: &str, id: u64) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.get(node).is_some_and(|o| o.id == id) {
            streams.remove(node);
            self.update_view(|v| v.disconnect(node));
            // A node already deleted from the API goes at once.
            self.forget_stale(Some(node));
        }
        self.metrics.connected.set(streams.len() as i64);
    }

    /// Replaces the intents of one `source` and republishes the union
    /// (sorted by id) when it changed.
    pub fn publish(&self, source: &str, intents: Vec<Intent>) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.get(source) == Some(&intents) {
            return;
        }
        sources.insert(source.to_string(), intents);
        let mut all: Vec<Intent> = sources.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        self.intents.send_replace(Arc::new(all));
    }

    /// From now on no intent reaches an agent with credentials (the link
    /// is plain text).
    pub fn forbid_credentials(&self) {
        self.credentials_allowed.store(false, Ordering::Relaxed);
    }

    /// `node`'s share of `all`, credentials removed where not allowed.
    pub(crate) fn share(&self, all: &[Intent], windows: &NodeWindows, node: &str) -> IntentSet {
        let mut set = intents_for(all, windows, node);
        set.schedules = self
            .schedules
            .borrow()
            .get(node)
            .cloned()
            .unwrap_or_default();
        if !self.credentials_allowed.load(Ordering::Relaxed) {
            set.intents.iter_mut().for_each(|i| i.credentials.clear());
        }
        set
    }

    /// Applies `f` to the view and tells watchers of `view_changes`.
    pub fn update_view<R>(&self, f: impl FnOnce(&mut ClusterView) -> R) -> R {
        let out = f(&mut self.view.write().unwrap_or_else(|p| p.into_inner()));
        self.view_changes.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, ClusterView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
impl LinkState {
    /// For tests of the controllers: no authentication, and `nodes` already
    /// reported (connected), as if their agents had attached.
    pub(crate) fn with_nodes(
        nodes: Vec<Snapshot>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        let state = Self::new(
            Arc::new(super::auth::StaticAuth(Default::default())),
            Arc::new(CoordinatorMetrics::new()),
            shutdown,
        );
        for s in nodes {
            state.update_view(|v| v.apply_snapshot(s, Utc::now()));
        }
        state
    }
}

/// HTTP/2 receive window per agent stream. hyper's default is 1 MiB per
/// stream and per connection: when the coordinator falls behind, every
/// agent could park that much in its memory. Agents send a few hundred
/// bytes per update, so 64 KiB still carries thousands of updates per
/// round trip; a larger snapshot is paced by flow control, not refused.
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// HTTP/2 receive window per connection (an agent has one stream; tests
/// and benchmarks multiplex many on one connection).
pub const CONNECTION_WINDOW: u32 = 256 * 1024;

/// The link's gRPC server: HTTP/2 keepalives and bounded receive windows
/// (fixed, not adaptive, so they cannot grow back).
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_adaptive_window(Some(false))
}

#[derive(Clone)]
pub struct LinkService {
    state: Arc<LinkState>,
}

impl LinkService {
    pub fn new(state: Arc<LinkState>) -> Self {
        Self { state }
    }

    /// The tonic service with message size limits on both directions.
    pub fn into_server(self) -> crate::wire::v1::link_server::LinkServer<Self> {
        crate::wire::v1::link_server::LinkServer::new(self)
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES)
    }
}

fn bearer<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Checks a snapshot's shape before it touches the view; an error names
/// the field (and the entry) that is wrong.
pub fn validate_snapshot(s: &Snapshot) -> Result<(), String> {
    if s.node.is_empty() || s.node.len() > 253 {
        return Err(format!(
            "snapshot.node: must be a node name of 1 to 253 bytes, got {}",
            s.node.len()
        ));
    }
    count("snapshot.images", s.images.len(), limits::MAX_IMAGES)?;
    count("snapshot.windows", s.windows.len(), limits::MAX_WINDOWS)?;
    missing("snapshot.windows", &s.windows)?;
    count("snapshot.labels", s.labels.len(), limits::MAX_LABELS)?;
    count("snapshot.taints", s.taints.len(), limits::MAX_LABELS)?;
    images("snapshot.images", &s.images)?;
    let windows = s.windows.iter().map(|w| w.name.as_str());
    names("snapshot.windows", windows)?;
    labels("snapshot.labels", &s.labels)?;
    for (i, t) in s.taints.iter().enumerate() {
        if [&t.key, &t.value, &t.effect]
            .iter()
            .any(|f| f.len() > limits::MAX_NAME_LEN)
        {
            return Err(format!(
                "snapshot.taints[{i}]: a field longer than {} bytes",
                limits::MAX_NAME_LEN
            ));
        }
    }
    validate_throughput("snapshot", s.throughput_bytes_per_second)
}

/// Checks a delta's shape before it touches the view; an error names the
/// field (and the entry) that is wrong.
pub fn validate_delta(d: &Delta) -> Result<(), String> {
    count("delta.upserted", d.upserted.len(), limits::MAX_IMAGES)?;
    count("delta.removed", d.removed.len(), limits::MAX_IMAGES)?;
    count("delta.windows", d.windows.len(), limits::MAX_WINDOWS)?;
    missing("delta.windows", &d.windows)?;
    count("delta.labels", d.labels.len(), limits::MAX_LABELS)?;
    images("delta.upserted", &d.upserted)?;
    names("delta.removed", d.removed.iter().map(String::as_str))?;
    names("delta.windows", d.windows.iter().map(|w| w.name.as_str()))?;
    labels("delta.labels", &d.labels)?;
    validate_throughput("delta", d.throughput_bytes_per_second)
}

/// Each window's `missing` names at most [`limits::MAX_REGISTRIES`] hosts.
fn missing(field: &str, windows: &[crate::wire::v1::WindowState]) -> Result<(), String> {
    for w in windows {
        count(
            &format!("{field}[{}].missing", w.name),
            w.missing.len(),
            limits::MAX_REGISTRIES,
        )?;
        names(
            &format!("{field}[{}].missing", w.name),
            w.missing.keys().map(String::as_str),
        )?;
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{field}: {n} entries, more than {max}"));
    }
    Ok(())
}

/// Names must be 1 to `MAX_NAME_LEN` bytes without control characters.
fn names<'a>(field: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    for (i, n) in names.enumerate() {
        if n.is_empty() || n.len() > limits::MAX_NAME_LEN {
            return Err(format!(
                "{field}[{i}].name: must be 1 to {} bytes, got {}",
                limits::MAX_NAME_LEN,
                n.len()
            ));
        }
        if n.chars().any(char::is_control) {
            return Err(format!("{field}[{i}].name: contains a control character"));
        }
    }
    Ok(())
}

/// Image states: good names, each once, and errors of bounded size.
fn images(field: &str, images: &[crate::wire::v1::ImageState]) -> Result<(), String> {
    names(field, images.iter().map(|i| i.name.as_str()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, im) in images.iter().enumerate() {
        if !seen.insert(im.name.as_str()) {
            return Err(format!("{field}[{i}].name: {:?} is listed twice", im.name));
        }
        if im.error.len() > 4 * limits::MAX_NAME_LEN {
            return Err(format!(
                "{field}[{i}].error: longer than {} bytes",
                4 * limits::MAX_NAME_LEN
            ));
        }
    }
    Ok(())
}

fn labels(field: &str, labels: &HashMap<String, String>) -> Result<(), String> {
    let too_long = |s: &String| s.is_empty() || s.len() > limits::MAX_NAME_LEN;
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, v)| too_long(k) || v.len() > limits::MAX_NAME_LEN)
    {
        return Err(format!(
            "{field}: a key or value is empty or longer than {} bytes (key of {} bytes)",
            limits::MAX_NAME_LEN,
            k.len()
        ));
    }
    Ok(())
}

/// A reported throughput must be a positive number of bytes per second.
fn validate_throughput(msg: &str, t: Option<f64>) -> Result<(), String> {
    match t {
        Some(t) if !(t.is_finite() && t > 0.0) => Err(format!(
            "{msg}.throughput_bytes_per_second must be a positive number, got {t}"
        )),
        _ => Ok(()),
    }
}

/// The intents meant for `node` (those naming it, or naming no node at
/// all) and its coordinator windows. Credentials travel only on intents
/// that name their nodes: one without nodes reaches every node its
/// selector matches.
pub fn intents_for(all: &[Intent], windows: &NodeWindows, node: &str) -> IntentSet {
    IntentSet {
        intents: all
            .iter()
            .filter(|i| i.nodes.is_empty() || i.nodes.iter().any(|n| n == node))
            .map(|i| {
                let mut i = i.clone();
                if i.nodes.is_empty() {
                    i.credentials.clear();
                }
                i
            })
            .collect(),
        windows: windows.get(node).cloned().unwrap_or_default(),
        schedules: Vec::new(),
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Link for LinkService {
    type AttachStream = Outbound;

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let st = self.state.clone();
        if !*st.serving.borrow() {
            st.metrics.rejected.with_label_values(&["not_leader"]).inc();
            return Err(Status::unavailable(
                "this coordinator replica is not the leader; reconnect",
            ));
        }
        let node = match st.auth.node_of(&bearer(&req)).await {
            Ok(n) => n,
            Err(e) => {
                let (reason, status) = match &e {
                    AuthError::RateLimited => {
                        ("rate_limited", Status::resource_exhausted(e.to_string()))
                    }
                    AuthError::Unavailable(_) => {
                        ("auth_unavailable", Status::unavailable(e.to_string()))
                    }
                    _ => ("auth", Status::unauthenticated(e.to_string())),
                };
                st.metrics.rejected.with_label_values(&[reason]).inc();
                tracing::warn!(error = %e, "agent stream refused");
                return Err(status);
            }
        };
        let mut inbound = req.into_inner();
        // The first message must be this node's snapshot.
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream ended before the snapshot"))?;
        let snap = match first.body {
            Some(agent_message::Body::Snapshot(s)) => s,
            _ => {
                st.metrics.rejected.with_label_values(&["protocol"]).inc();
                return Err(Status::invalid_argument(
                    "the first message must be a snapshot",
                ));
            }
        };
        check_snapshot(&st, &node, &snap)?;
        let stream = st.claim(&node, snap);
        tracing::info!(node = %node, stream = stream.0, "agent connected");

        let outbound = async_stream_of(st.clone(), node.clone(), stream, inbound);
        Ok(Response::new(outbound))
    }
}

/// A snapshot must be for the stream's node and well-formed.
fn check_snapshot(st: &LinkState, node: &str, snap: &Snapshot) -> Result<(), Status> {
    if snap.node != node {
        st.metrics
            .rejected
            .with_label_values(&["foreign_node"])
            .inc();
        tracing::warn!(bound = %node, claimed = %snap.node, "report for a foreign node rejected");
        return Err(Status::permission_denied(format!(
            "this stream is bound to node {node}; a report for {} is not accepted",
            snap.node
        )));
    }
    if let Err(e) = validate_snapshot(snap) {
        st.metrics.rejected.with_label_values(&["invalid"]).inc();
        return Err(Status::invalid_argument(e));
    }
    Ok(())
}

/// A stream that was replaced by a newer one for its node.
fn replaced(node: &str) -> Status {
    Status::aborted(format!("a newer stream for node {node} replaced this one"))
}

/// Drives one stream: applies the agent's messages, sends intent updates,
/// and marks the node disconnected when either side ends.
fn async_stream_of(
    st: Arc<LinkState>,
    node: String,
    (id, replaced_by): (u64, CancellationToken),
    mut inbound: Streaming<AgentMessage>,
) -> Outbound {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<CoordinatorMessage, Status>>(4);
    let mut intents = st.intents.subscribe();
    let mut windows = st.windows.subscribe();
    let mut schedules = st.schedules.subscribe();
    tokio::spawn(async move {
        let mut serving = st.serving.subscribe();
        let msg = |set| CoordinatorMessage {
            body: Some(coordinator_message::Body::Intents(set)),
        };
        // The node's set, and whether it differs from the last one sent.
        let mut sent: Option<IntentSet> = None;
        let mut next = |intents: &mut watch::Receiver<Arc<Vec<Intent>>>,
                        windows: &mut watch::Receiver<Arc<NodeWindows>>| {
            let all = intents.borrow_and_update().clone();
            let w = windows.borrow_and_update().clone();
            let set = st.share(&all, &w, &node);
            let changed = sent.as_ref() != Some(&set);
            sent = Some(set.clone());
            changed.then_some(set)
        };
        let initial = next(&mut intents, &mut windows).unwrap_or_default();
        if tx.send(Ok(msg(initial))).await.is_err() {
            st.release(&node, id);
            return;
        }
        let end = loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => if let Err(status) = handle(&st, &node, id, m) { break Some(status) },
                    Ok(None) => break None,
                    Err(status) => {
                        tracing::debug!(node = %node, %status, "agent stream error");
                        break None;
                    }
                },
                changed = intents.changed() => {
                    if changed.is_err() { break None; }
                    if let Some(set) = next(&mut intents, &mut windows) {
                        if tx.send(Ok(msg(set))).await.is_err() { break None; }
                    }
                }
                changed = windows.changed() => {
                    if changed.is_err() { break None; }
                    // Another node's windows changing sends this one nothing.
                    if let Some(set) = next(&mut intents, &mut windows) {
                        if tx.send(Ok(msg(set))).await.is_err() { break None; }
                    }
                }
                changed = schedules.changed() => {
                    if changed.is_err() { break None; }
                    // Read in `share`; sent only if this node's changed.
                    schedules.borrow_and_update();
                    if let Some(set) = next(&mut intents, &mut windows) {
                        if tx.send(Ok(msg(set))).await.is_err() { break None; }
                    }
                }
                _ = tx.closed() => break None,
                _ = st.shutdown.cancelled() => break Some(Status::unavailable("coordinator shutting down; reconnect")),
                _ = replaced_by.cancelled() => break Some(replaced(&node)),
                Ok(()) = serving.changed() => if !*serving.borrow_and_update() {
                    break Some(Status::unavailable("this coordinator replica is no longer the leader; reconnect"));
                },
            }
        };
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        st.release(&node, id);
        tracing::info!(node = %node, stream = id, "agent disconnected");
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn handle(st: &LinkState, node: &str, id: u64, m: AgentMessage) -> Result<(), Status> {
    match m.body {
        Some(agent_message::Body::Snapshot(s)) => {
            check_snapshot(st, node, &s)?;
            st.as_owner(node, id, |v| v.apply_snapshot(s, Utc::now()))
                .ok_or_else(|| replaced(node))
        }
        Some(agent_message::Body::Delta(d)) => {
            if let Err(e) = validate_delta(&d) {
                st.metrics.rejected.with_label_values(&["invalid"]).inc();
                return Err(Status::invalid_argument(e));
            }
            st.metrics
                .updates
                .inc_by((d.upserted.len() + d.removed.len()) as u64);
            match st.as_owner(node, id, |v| v.apply_delta(node, d, Utc::now())) {
                None => Err(replaced(node)),
                Some(Ok(())) => Ok(()),
                Some(Err(e @ ViewError::OutOfOrder { .. }))
                | Some(Err(e @ ViewError::NoSnapshot(_))) => {
                    st.metrics
                        .rejected
                        .with_label_values(&["out_of_order"])
                        .inc();
                    Err(Status::failed_precondition(format!(
                        "{e}; resend a snapshot"
                    )))
                }
            }
        }
        None => {
            st.metrics.rejected.with_label_values(&["protocol"]).inc();
            Err(Status::invalid_argument("empty message"))
        }
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "link_props.rs"]
mod props;
