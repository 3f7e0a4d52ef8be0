//! The coordinator's cluster view: a pure index of what every agent last
//! reported, updated by snapshots and deltas, queried for warmth per image
//! and node pool. No I/O; `now` is passed in. Image and pool names are
//! shared across records ([`Interner`]): the view grows by a few dozen
//! bytes per reported image, not by copies of its name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::reference::ImageRef;
use crate::plan::eligibility::NodeFacts;
use crate::plan::forget;
use crate::plan::intern::Interner;
use crate::wire::v1::{
    image_state::Phase, Delta, ImageState, Intent, Snapshot, Taint, WindowState,
};

/// Node label that names an AKS node pool.
pub const POOL_LABEL: &str = "kubernetes.azure.com/agentpool";

/// What the view keeps of one reported image: its wire state without the
/// name (the map key, shared with every other record).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub phase: i32,
    pub pinned: bool,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub error: Box<str>,
    /// While pulling: when its reported progress last changed (or the pull
    /// was first reported), by the coordinator's clock. A pull whose bytes
    /// stop moving is told from a running one by this.
    progress_at: Option<DateTime<Utc>>,
}

impl ImageRecord {
    fn new(s: ImageState, progress_at: Option<DateTime<Utc>>) -> Self {
        Self {
            phase: s.phase,
            pinned: s.pinned,
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
            error: s.error.into_boxed_str(),
            progress_at,
        }
    }

    /// The wire form, named `name`.
    pub fn state(&self, name: &str) -> ImageState {
        ImageState {
            name: name.to_string(),
            phase: self.phase,
            pinned: self.pinned,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            error: self.error.to_string(),
        }
    }
}

/// A node's images by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageMap(BTreeMap<Arc<str>, ImageRecord>);

impl ImageMap {
    pub fn get(&self, name: &str) -> Option<&ImageRecord> {
        self.0.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &ImageRecord> {
        self.0.values()
    }

    /// (name, record), by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ImageRecord)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The wire state of `name`, if reported.
    pub fn state(&self, name: &str) -> Option<ImageState> {
        self.get(name).map(|r| r.state(name))
    }
}

impl std::ops::Index<&str> for ImageMap {
    type Output = ImageRecord;

    fn index(&self, name: &str) -> &ImageRecord {
        self.get(name).expect("image not reported by this node")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// The pool label's value, shared with the other nodes of the pool.
    pool: Arc<str>,
    pub taints: Vec<Taint>,
    pub images: ImageMap,
    pub windows: BTreeMap<String, WindowState>,
    pub free_disk_bytes: u64,
    pub pin_supported: bool,
    pub seq: u64,
    pub last_report: DateTime<Utc>,
    pub connected: bool,
    /// Learned pull throughput (bytes/s) the agent reports; None until it
    /// has measured a pull (or for agents that predate the field).
    pub throughput_bytes_per_second: Option<f64>,
}

impl NodeRecord {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn is_warm(&self, image: &str) -> bool {
        self.images
            .get(image)
            .is_some_and(|i| i.phase == Phase::Warm as i32)
    }

    /// When `image`'s pull last made progress; None unless it is pulling.
    pub fn progress_at(&self, image: &str) -> Option<DateTime<Utc>> {
        self.images.get(image).and_then(|i| i.progress_at)
    }
}

fn pool_of(labels: &BTreeMap<String, String>) -> &str {
    labels.get(POOL_LABEL).map(String::as_str).unwrap_or("")
}

/// A usable throughput: finite and positive, else unknown.
fn sane_throughput(t: Option<f64>) -> Option<f64> {
    t.filter(|t| t.is_finite() && *t > 0.0)
}

/// Progress time of `new` given what was known before: kept while its
/// bytes stand still, `now` when they moved or the pull is new; None when
/// it is not pulling.
fn progress_time(
    old: Option<&ImageRecord>,
    new: &ImageState,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if new.phase != Phase::Pulling as i32 {
        return None;
    }
    let kept = old.filter(|o| {
        o.phase == Phase::Pulling as i32
            && o.bytes_done == new.bytes_done
            && o.bytes_total == new.bytes_total
    });
    kept.and_then(|o| o.progress_at).or(Some(now))
}

/// NodeFacts from an agent's report (labels and taints it sent).
pub fn reported_facts(rec: &NodeRecord) -> NodeFacts {
    NodeFacts {
        name: rec.node.clone(),
        labels: rec.labels.clone(),
        taints: rec
            .taints
            .iter()
            .map(|t| k8s_openapi::api::core::v1::Taint {
                key: t.key.clone(),
                value: Some(t.value.clone()).filter(|v| !v.is_empty()),
                effect: t.effect.clone(),
                time_added: None,
            })
            .collect(),
        unschedulable: false,
        ready: true,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("delta from {0} before any snapshot")]
    NoSnapshot(String),
    #[error("delta from {node} out of order: seq {got} after {last}")]
    OutOfOrder { node: String, got: u64, last: u64 },
}

#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    nodes: BTreeMap<String, NodeRecord>,
    /// (image, pool) → counts over connected nodes, kept current on every
    /// update so queries cost O(rows), not O(nodes × images).
    agg: BTreeMap<(Arc<str>, Arc<str>), Agg>,
    /// The one copy of every image and pool name the records use.
    names: Interner,
    /// Nodes as the API server describes them (labels, taints, cordon,
    /// Ready), when the coordinator watches Nodes: the truth for where pods
    /// can land. Agents' reports say what is warm.
    api_nodes: BTreeMap<String, NodeFacts>,
    /// Facts from each agent's report, kept current on every update so
    /// placement queries borrow them instead of rebuilding them per pod.
    reported: BTreeMap<String, NodeFacts>,
    /// Whether Nodes have been listed from the API server at least once:
    /// only then does a node missing from `api_nodes` count as deleted.
    api_listed: bool,
}

/// Per (image, pool) counts.
type PoolAggs = BTreeMap<(Arc<str>, Arc<str>), Agg>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Agg {
    nodes: usize,
    warm: usize,
    pulling: usize,
    /// Wide enough that no sum of reported u64 byte counts overflows.
    pending: u128,
}

impl Agg {
    fn add(&mut self, s: &ImageRecord, sign: i64) {
        let step = |v: &mut usize| *v = (*v as i64 + sign).max(0) as usize;
        step(&mut self.nodes);
        if s.phase == Phase::Warm as i32 {
            step(&mut self.warm);
        } else {
            if s.phase == Phase::Pulling as i32 {
                step(&mut self.pulling);
            }
            let p = u128::from(s.bytes_total.saturating_sub(s.bytes_done));
            self.pending = if sign > 0 {
                self.pending + p
            } else {
                self.pending.saturating_sub(p)
            };
        }
    }
}

/// Warmth of one image in one pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImagePoolRow {
    pub image: String,
    pub pool: String,
    pub warm_nodes: usize,
    pub nodes: usize,
    pub pulling_nodes: usize,
    pub bytes_pending: u64,
}

/// Adds (or, with `sign` -1, removes) one node's image to the counts.
fn account(
    agg: &mut BTreeMap<(Arc<str>, Arc<str>), Agg>,
    pool: &Arc<str>,
    name: &Arc<str>,
    image: &ImageRecord,
    sign: i64,
) {
    let key = (name.clone(), pool.clone());
    let a = agg.entry(key).or_default();
    a.add(image, sign);
    if a.nodes == 0 {
        agg.remove(&(name.clone(), pool.clone()));
    }
}

impl ClusterView {
    /// Adds (or removes) a connected node's images to the counts; a
    /// disconnected node's last state is not counted.
    fn account_node(&mut self, node: &str, sign: i64) {
        let Some(rec) = self.nodes.get(node).filter(|r| r.connected) else {
            return;
        };
        for (name, i) in &rec.images.0 {
            account(&mut self.agg, &rec.pool, name, i, sign);
        }
    }

    /// Replaces everything known about the snapshot's node. A pull that
    /// stood still before a reconnect keeps its progress time.
    pub fn apply_snapshot(&mut self, snap: Snapshot, now: DateTime<Utc>) {
        let old = self.nodes.get(&snap.node);
        let names = &mut self.names;
        let images = snap
            .images
            .into_iter()
            .map(|i| {
                let at = progress_time(old.and_then(|o| o.images.get(&i.name)), &i, now);
                (names.intern(&i.name), ImageRecord::new(i, at))
            })
            .collect();
        let labels: BTreeMap<String, String> = snap.labels.into_iter().collect();
        let record = NodeRecord {
            node: snap.node.clone(),
            pool: self.names.intern(pool_of(&labels)),
            labels,
            taints: snap.taints,
            images: ImageMap(images),
            windows: snap
                .windows
                .into_iter()
                .map(|w| (w.name.clone(), w))
                .collect(),
            free_disk_bytes: snap.free_disk_bytes,
            pin_supported: snap.pin_supported,
            seq: snap.seq,
            last_report: now,
            connected: true,
            throughput_bytes_per_second: sane_throughput(snap.throughput_bytes_per_second),
        };
        self.account_node(&snap.node, -1);
        self.reported
            .insert(snap.node.clone(), reported_facts(&record));
        self.nodes.insert(snap.node.clone(), record);
        self.account_node(&snap.node, 1);
    }

    /// Applies changes; a delta that does not follow the last message is
    /// refused (the agent then resends a snapshot).
    pub fn apply_delta(
        &mut self,
        node: &str,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> Result<(), ViewError> {
        let rec = self
            .nodes
            .get(node)
            .ok_or_else(|| ViewError::NoSnapshot(node.to_string()))?;
        if delta.seq <= rec.seq {
            return Err(ViewError::OutOfOrder {
                node: node.to_string(),
                got: delta.seq,
                last: rec.seq,
            });
        }
        let labels_change = delta.labels_changed;
        // The pool may change, or the node was not counted: re-account all;
        // else each changed image moves its own counts.
        let recount = labels_change || !rec.connected;
        if recount {
            self.account_node(node, -1);
        }
        let rec = self.nodes.get_mut(node).expect("checked above");
        let agg = (!recount).then_some(&mut self.agg);
        apply_changes(
            rec,
            &mut self.names,
            agg,
            delta.upserted,
            delta.removed,
            now,
        );
        rec.seq = delta.seq;
        rec.last_report = now;
        rec.connected = true;
        if let Some(t) = sane_throughput(delta.throughput_bytes_per_second) {
            rec.throughput_bytes_per_second = Some(t);
        }
        for w in delta.windows {
            rec.windows.insert(w.name.clone(), w);
        }
        if let Some(free) = delta.free_disk_bytes {
            rec.free_disk_bytes = free;
        }
        if labels_change {
            rec.labels = delta.labels.into_iter().collect();
            rec.pool = self.names.intern(pool_of(&rec.labels));
            let facts = reported_facts(rec);
            self.reported.insert(node.to_string(), facts);
        }
        if recount {
            self.account_node(node, 1);
        }
        Ok(())
    }

    /// The stream ended: the node's last state is kept, marked stale, and
    /// leaves the image counts.
    pub fn disconnect(&mut self, node: &str) {
        self.account_node(node, -1);
        if let Some(r) = self.nodes.get_mut(node) {
            r.connected = false;
        }
    }

    pub fn node(&self, node: &str) -> Option<&NodeRecord> {
        self.nodes.get(node)
    }

    /// Replaces the API server's facts about every node.
    pub fn set_api_nodes(&mut self, nodes: impl IntoIterator<Item = NodeFacts>) {
        self.api_nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        self.api_listed = true;
    }

    pub fn set_api_node(&mut self, node: NodeFacts) {
        self.api_nodes.insert(node.name.clone(), node);
    }

    pub fn remove_api_node(&mut self, node: &str) {
        self.api_nodes.remove(node);
    }

    /// Where a pod can land, for a reporting node: the API server's facts
    /// when Nodes are watched (a node the API does not know is `None`),
    /// else what its agent reports. Either way it is ready only while its
    /// agent is connected. Borrowed for connected nodes (the hot path).
    pub fn facts(&self, rec: &NodeRecord) -> Option<Cow<'_, NodeFacts>> {
        let f = if self.api_nodes.is_empty() {
            self.reported.get(&rec.node)?
        } else {
            self.api_nodes.get(&rec.node)?
        };
        if rec.connected {
            Some(Cow::Borrowed(f))
        } else {
            let mut f = f.clone();
            f.ready = false;
            Some(Cow::Owned(f))
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// What [`forget::to_forget`] needs to know of a record.
    fn seen<'a>(&'a self, rec: &'a NodeRecord) -> forget::Seen<'a> {
        forget::Seen {
            node: &rec.node,
            connected: rec.connected,
            last_report: rec.last_report,
            in_api: self
                .api_listed
                .then(|| self.api_nodes.contains_key(&rec.node)),
        }
    }

    /// Drops the records [`forget::to_forget`] picks (all of them, or only
    /// `node`'s) and returns them. Disconnected records are not in the
    /// image counts, so those stay exact.
    pub fn forget(
        &mut self,
        ret: &forget::Retention,
        now: DateTime<Utc>,
        node: Option<&str>,
    ) -> Vec<(String, forget::Why)> {
        let gone = match node {
            Some(n) => forget::to_forget(ret, self.nodes.get(n).map(|r| self.seen(r)), now),
            None => forget::to_forget(ret, self.nodes.values().map(|r| self.seen(r)), now),
        };
        for (n, _) in &gone {
            self.account_node(n, -1);
            self.nodes.remove(n);
            self.reported.remove(n);
        }
        gone
    }

    /// How many distinct image and pool names the records share.
    pub fn distinct_names(&self) -> usize {
        self.names.len()
    }

    pub fn connected(&self) -> usize {
        self.nodes.values().filter(|n| n.connected).count()
    }

    /// Image × pool table over the connected nodes that want each image:
    /// those reporting it (agents report every image they keep warm or
    /// pinned), plus those an unexpired intent in `intents` targets that
    /// have not reported it yet (counted as not warm).
    pub fn image_pools(&self, intents: &[Intent], now: DateTime<Utc>) -> Vec<ImagePoolRow> {
        let mut rows: BTreeMap<(String, String), ImagePoolRow> = self
            .agg
            .iter()
            .map(|((image, pool), a)| {
                let (image, pool) = (image.to_string(), pool.to_string());
                let row = ImagePoolRow {
                    image: image.clone(),
                    pool: pool.clone(),
                    warm_nodes: a.warm,
                    nodes: a.nodes,
                    pulling_nodes: a.pulling,
                    bytes_pending: u64::try_from(a.pending).unwrap_or(u64::MAX),
                };
                ((image, pool), row)
            })
            .collect();
        for (image, node) in self.targeted_unreported(intents, now) {
            let Some(rec) = self.nodes.get(node) else {
                continue;
            };
            let pool = rec.pool().to_string();
            rows.entry((image.clone(), pool.clone()))
                .or_insert_with(|| ImagePoolRow {
                    image,
                    pool,
                    warm_nodes: 0,
                    nodes: 0,
                    pulling_nodes: 0,
                    bytes_pending: 0,
                })
                .nodes += 1;
        }
        rows.into_values().collect()
    }

    /// (CRI image name, node) for every connected node an unexpired intent
    /// targets (by name, or by selector when it names none) whose agent
    /// does not report that image; each pair once.
    fn targeted_unreported<'a>(
        &'a self,
        intents: &[Intent],
        now: DateTime<Utc>,
    ) -> std::collections::BTreeSet<(String, &'a str)> {
        let mut out = std::collections::BTreeSet::new();
        let live = intents
            .iter()
            .filter(|i| i.deadline_unix == 0 || i.deadline_unix > now.timestamp());
        for i in live {
            let images: Vec<String> = i
                .images
                .iter()
                .filter_map(|r| r.parse::<ImageRef>().ok())
                .map(|r| r.cri_name())
                .collect();
            // Named nodes are looked up (an intent may name thousands).
            let candidates: Box<dyn Iterator<Item = &NodeRecord>> = if i.nodes.is_empty() {
                Box::new(self.nodes.values())
            } else {
                Box::new(i.nodes.iter().filter_map(|n| self.nodes.get(n)))
            };
            let targets = candidates.filter(|n| {
                n.connected
                    && i.node_selector
                        .iter()
                        .all(|(k, v)| n.labels.get(k) == Some(v))
            });
            for rec in targets {
                for image in images.iter().filter(|im| !rec.images.contains_key(im)) {
                    out.insert((image.clone(), rec.node.as_str()));
                }
            }
        }
        out
    }

    /// Seconds since each connected node last reported, for the lag metric.
    pub fn report_lag(&self, now: DateTime<Utc>) -> Vec<f64> {
        self.nodes
            .values()
            .filter(|n| n.connected)
            .map(|n| (now - n.last_report).num_milliseconds().max(0) as f64 / 1000.0)
            .collect()
    }
}

/// Applies a delta's image changes to `rec`, moving the counts in `agg`
/// when given (the node stays counted under its pool).
fn apply_changes(
    rec: &mut NodeRecord,
    names: &mut Interner,
    mut agg: Option<&mut PoolAggs>,
    upserted: Vec<ImageState>,
    removed: Vec<String>,
    now: DateTime<Utc>,
) {
    for i in upserted {
        let name = names.intern(&i.name);
        let at = progress_time(rec.images.get(&name), &i, now);
        let new = ImageRecord::new(i, at);
        if let Some(agg) = agg.as_deref_mut() {
            account(agg, &rec.pool, &name, &new, 1);
        }
        let old = rec.images.0.insert(name.clone(), new);
        if let (Some(agg), Some(old)) = (agg.as_deref_mut(), old) {
            account(agg, &rec.pool, &name, &old, -1);
        }
    }
    for name in removed {
        let Some((name, old)) = rec.images.0.remove_entry(name.as_str()) else {
            continue;
        };
        if let Some(agg) = agg.as_deref_mut() {
            account(agg, &rec.pool, &name, &old, -1);
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
