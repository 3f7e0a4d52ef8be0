//! Rollout pre-warm: turns watched cluster objects into [`Intent`]s.
//!
//! [`intents_from`] is pure: given the workloads, pods and nodes the
//! coordinator holds and the time, it returns one intent per opted-in
//! workload with a pending rollout ([`crate::plan::rollout`]) naming the
//! nodes its new pod template can land on ([`crate::plan::eligibility`]),
//! plus one per group of pending or gated pods not already covered. [`run`]
//! keeps the objects in memory with watches and republishes on change.
//!
//! What is watched (never every pod of the cluster):
//! - all Nodes (labels, taints, conditions; images and the rest are dropped);
//! - Namespaces labelled `<opt-in label>=true` (they opt in like
//!   [`RolloutConfig::namespaces`]);
//! - cluster-wide, Deployments, StatefulSets, DaemonSets and Pods labelled
//!   `<opt-in label>=true`;
//! - in every opted-in namespace, all Deployments, ReplicaSets,
//!   StatefulSets, DaemonSets and Pods;
//! - in a namespace that is not opted in but holds a labelled Deployment,
//!   its ReplicaSets (needed to tell a rollout from a completed one).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, NodeSpec, NodeStatus, Pod, PodStatus};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plan::eligibility::{eligible_nodes, NodeFacts};
use crate::plan::pull_secrets::WorkloadSecrets;
pub use crate::plan::rollout::images_hash;
use crate::plan::rollout::{self, PendingRollout, RolloutReason, ROLLOUT_LABEL};
use crate::wire::v1::Intent;

/// What takes part in rollout warming and how its intents look.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Label by which workloads, pods and namespaces opt in (`"true"`) or
    /// out (`"false"`).
    pub opt_in_label: String,
    /// Namespaces whose workloads take part unless they opt out.
    pub namespaces: Vec<String>,
    /// An intent's deadline is this long after the rollout was last seen
    /// pending (refreshed once less than half of it is left).
    pub intent_ttl: Duration,
    /// Priority of every rollout intent.
    pub priority: i64,
    /// Changes are folded into one recomputation at most this often.
    pub debounce: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            opt_in_label: ROLLOUT_LABEL.to_string(),
            namespaces: Vec::new(),
            intent_ttl: Duration::from_secs(3600),
            priority: 0,
            debounce: Duration::from_secs(1),
        }
    }
}

/// The objects intents are computed from, as watched.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub deployments: Vec<Deployment>,
    pub replica_sets: Vec<ReplicaSet>,
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// Namespaces opted in by their label, on top of
    /// [`RolloutConfig::namespaces`].
    pub namespaces_opted_in: BTreeSet<String>,
}

/// Intents for every pending rollout and pending pod group that can land on
/// at least one node, sorted by id. Workload intents are named
/// `<Kind>/<namespace>/<name>@<hash>`; pods are grouped by controller and
/// images into `<ControllerKind>/<namespace>/<controller>/pods@<hash>`, or
/// `Pod/<namespace>/<pod>@<hash>` for a pod without a controller, and left
/// out when a workload intent already covers their images and nodes.
pub fn intents_from(
    cluster: &ClusterObjects,
    cfg: &RolloutConfig,
    now: DateTime<Utc>,
) -> Vec<Intent> {
    intents_with_secrets_from(cluster, cfg, now)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// [`intents_from`], each with where its pods' pull secrets come from: a
/// workload's new template (its own `imagePullSecrets`, else its
/// ServiceAccount's), or the pending pods' own.
pub fn intents_with_secrets_from(
    cluster: &ClusterObjects,
    cfg: &RolloutConfig,
    now: DateTime<Utc>,
) -> Vec<(Intent, WorkloadSecrets)> {
    let label = cfg.opt_in_label.as_str();
    let ns_in = |ns: Option<&str>| {
        ns.is_some_and(|ns| {
            cfg.namespaces.iter().any(|n| n == ns) || cluster.namespaces_opted_in.contains(ns)
        })
    };
    let wants = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        rollout::opted_in(meta, ns_in(meta.namespace.as_deref()), label)
    };
    let mut nodes: Vec<NodeFacts> = cluster
        .nodes
        .iter()
        .filter_map(NodeFacts::from_node)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);
    let deadline_unix = now
        .timestamp()
        .saturating_add(cfg.intent_ttl.as_secs().min(i64::MAX as u64) as i64);
    let intent =
        |id: String, images: Vec<String>, reason: RolloutReason, nodes: Vec<String>| Intent {
            id,
            images,
            reason: reason.as_str().to_string(),
            priority: cfg.priority,
            deadline_unix,
            node_selector: Default::default(),
            nodes,
            credentials: Vec::new(),
        };

    // ReplicaSets by namespace: a Deployment only looks at its own.
    let mut replica_sets: BTreeMap<&str, Vec<ReplicaSet>> = BTreeMap::new();
    for rs in &cluster.replica_sets {
        if let Some(ns) = rs.metadata.namespace.as_deref() {
            replica_sets.entry(ns).or_default().push(rs.clone());
        }
    }
    let mut pending: Vec<PendingRollout> = Vec::new();
    for d in cluster.deployments.iter().filter(|d| wants(&d.metadata)) {
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let owned = replica_sets.get(ns).map(Vec::as_slice).unwrap_or_default();
        pending.extend(rollout::pending_deployment(d, owned));
    }
    pending.extend(
        cluster
            .stateful_sets
            .iter()
            .filter(|s| wants(&s.metadata))
            .filter_map(rollout::pending_statefulset),
    );
    pending.extend(
        cluster
            .daemon_sets
            .iter()
            .filter(|d| wants(&d.metadata))
            .filter_map(rollout::pending_daemonset),
    );

    let mut out: BTreeMap<String, (Intent, WorkloadSecrets)> = BTreeMap::new();
    for p in pending {
        let names: Vec<String> = eligible_nodes(&p.template, &nodes)
            .into_iter()
            .map(|n| n.name.clone())
            .collect();
        if names.is_empty() {
            // An intent without nodes would reach every node.
            continue;
        }
        let id = format!("{}@{}", p.workload, images_hash(&p.images));
        let secrets = WorkloadSecrets::of_template(&p.workload.namespace, &p.template);
        let i = intent(id.clone(), p.images, p.reason, names);
        out.insert(id, (i, secrets));
    }

    // Pending and gated pods, grouped by controller and images.
    let pods: Vec<Pod> = cluster
        .pods
        .iter()
        .filter(|p| wants(&p.metadata))
        .cloned()
        .collect();
    type Group = (Vec<String>, BTreeSet<String>, WorkloadSecrets);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for p in rollout::pending_pods(&pods) {
        let hash = images_hash(&p.images);
        let id = match &p.pod.controller {
            Some(c) => format!("{}/{}/{}/pods@{hash}", c.kind, p.pod.namespace, c.name),
            None => format!("Pod/{}/{}@{hash}", p.pod.namespace, p.pod.name),
        };
        // Admitted pods: their secrets include their ServiceAccount's.
        let secrets = WorkloadSecrets::of_pod(&p.pod.namespace, &p.spec);
        let entry = groups
            .entry(id)
            .or_insert_with(|| (p.images.clone(), BTreeSet::new(), secrets.clone()));
        entry.1.extend(
            eligible_nodes(&p.spec, &nodes)
                .into_iter()
                .map(|n| n.name.clone()),
        );
        entry.2.merge(&secrets);
    }
    let workloads: Vec<Intent> = out.values().map(|(i, _)| i.clone()).collect();
    for (id, (images, names, secrets)) in groups {
        if names.is_empty() {
            continue;
        }
        let covered = workloads.iter().any(|w| {
            images.iter().all(|i| w.images.contains(i)) && names.iter().all(|n| w.nodes.contains(n))
        });
        if covered {
            continue;
        }
        let names = names.into_iter().collect();
        let i = intent(id.clone(), images, RolloutReason::PodsPendingOrGated, names);
        out.insert(id, (i, secrets));
    }
    out.into_values().collect()
}

/// Where [`run`] publishes its intents, with their pull-secret sources. A
/// plain `Fn(Vec<Intent>)` drops the sources (no credentials attached).
pub trait PublishRollouts: Send + 'static {
    fn publish(&self, intents: Vec<(Intent, WorkloadSecrets)>);
}

impl<F: Fn(Vec<Intent>) + Send + 'static> PublishRollouts for F {
    fn publish(&self, intents: Vec<(Intent, WorkloadSecrets)>) {
        self(intents.into_iter().map(|(i, _)| i).collect())
    }
}

/// Keeps the deadline an intent was published with while more than half of
/// `ttl` is left, so recomputing does not change intents that did not
/// change (and agents are not sent the same set again).
pub fn keep_deadlines(previous: &[Intent], next: &mut [Intent], now: DateTime<Utc>, ttl: Duration) {
    let half = (ttl.as_secs() / 2).min(i64::MAX as u64) as i64;
    for i in next.iter_mut() {
        if let Some(p) = previous.iter().find(|p| p.id == i.id) {
            if p.deadline_unix.saturating_sub(now.timestamp()) > half {
                i.deadline_unix = p.deadline_unix;
            }
        }
    }
}

/// [`keep_deadlines`] for intents paired with their pull-secret sources.
pub fn keep_deadlines_of<T>(
    previous: &[(Intent, T)],
    next: &mut [(Intent, T)],
    now: DateTime<Utc>,
    ttl: Duration,
) {
    let prev: Vec<Intent> = previous.iter().map(|(i, _)| i.clone()).collect();
    let mut cur: Vec<Intent> = next.iter().map(|(i, _)| i.clone()).collect();
    keep_deadlines(&prev, &mut cur, now, ttl);
    for ((i, _), c) in next.iter_mut().zip(cur) {
        i.deadline_unix = c.deadline_unix;
    }
}

// ---- Watching ----

/// Key of an object in a store: namespace ("" for cluster objects), name.
type Key = (String, String);

fn key_of<K: Resource>(o: &K) -> Key {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Objects of one kind, by the watch they came from: a namespace's watch
/// and the cluster-wide labelled watch may both hold an object.
struct KindStore<K> {
    sources: BTreeMap<String, Source<K>>,
}

struct Source<K> {
    objects: BTreeMap<Key, K>,
    /// Objects of a relist in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<Key, K>>,
    synced: bool,
}

impl<K> Default for KindStore<K> {
    fn default() -> Self {
        Self {
            sources: BTreeMap::new(),
        }
    }
}

impl<K: Resource + Clone> KindStore<K> {
    /// Applies a watch event; true when the store's contents changed.
    fn apply(&mut self, source: &str, ev: Event<K>) -> bool {
        let s = self
            .sources
            .entry(source.to_string())
            .or_insert_with(|| Source {
                objects: BTreeMap::new(),
                relist: None,
                synced: false,
            });
        match ev {
            Event::Apply(o) => {
                s.objects.insert(key_of(&o), o);
                true
            }
            Event::Delete(o) => s.objects.remove(&key_of(&o)).is_some(),
            Event::Init => {
                s.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                s.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&o), o);
                false
            }
            Event::InitDone => {
                s.objects = s.relist.take().unwrap_or_default();
                s.synced = true;
                true
            }
        }
    }

    fn drop_source(&mut self, source: &str) -> bool {
        self.sources
            .remove(source)
            .is_some_and(|s| !s.objects.is_empty())
    }

    fn synced(&self, source: &str) -> bool {
        self.sources.get(source).is_some_and(|s| s.synced)
    }

    /// Every object once, in key order.
    fn objects(&self) -> Vec<K> {
        let mut all: BTreeMap<&Key, &K> = BTreeMap::new();
        for s in self.sources.values() {
            all.extend(s.objects.iter());
        }
        all.into_values().cloned().collect()
    }
}

/// One watch event, tagged with its source.
enum Update {
    Deployment(String, Event<Deployment>),
    ReplicaSet(String, Event<ReplicaSet>),
    StatefulSet(String, Event<StatefulSet>),
    DaemonSet(String, Event<DaemonSet>),
    Pod(String, Event<Pod>),
    Node(String, Event<Node>),
    Namespace(String, Event<Namespace>),
}

#[derive(Default)]
struct Stores {
    deployments: KindStore<Deployment>,
    replica_sets: KindStore<ReplicaSet>,
    stateful_sets: KindStore<StatefulSet>,
    daemon_sets: KindStore<DaemonSet>,
    pods: KindStore<Pod>,
    nodes: KindStore<Node>,
    namespaces: KindStore<Namespace>,
}

const LABELLED: &str = "labelled";
const CLUSTER: &str = "cluster";

impl Stores {
    fn apply(&mut self, u: Update, active: &BTreeSet<String>) -> bool {
        let live = |s: &String| s == LABELLED || s == CLUSTER || active.contains(s);
        match u {
            Update::Deployment(s, e) if live(&s) => self.deployments.apply(&s, e),
            Update::ReplicaSet(s, e) if live(&s) => self.replica_sets.apply(&s, e),
            Update::StatefulSet(s, e) if live(&s) => self.stateful_sets.apply(&s, e),
            Update::DaemonSet(s, e) if live(&s) => self.daemon_sets.apply(&s, e),
            Update::Pod(s, e) if live(&s) => self.pods.apply(&s, e),
            Update::Node(s, e) => self.nodes.apply(&s, e),
            Update::Namespace(s, e) => self.namespaces.apply(&s, e),
            // From a namespace watch that was stopped meanwhile.
            _ => false,
        }
    }

    /// Whether the first lists of the cluster-wide watches (Nodes,
    /// opted-in namespaces, labelled workloads and pods) are complete.
    fn cluster_synced(&self) -> bool {
        self.nodes.synced(CLUSTER)
            && self.namespaces.synced(CLUSTER)
            && self.deployments.synced(LABELLED)
            && self.stateful_sets.synced(LABELLED)
            && self.daemon_sets.synced(LABELLED)
            && self.pods.synced(LABELLED)
    }

    fn drop_source(&mut self, source: &str) -> bool {
        // Every store, no short-circuit.
        [
            self.deployments.drop_source(source),
            self.replica_sets.drop_source(source),
            self.stateful_sets.drop_source(source),
            self.daemon_sets.drop_source(source),
            self.pods.drop_source(source),
        ]
        .contains(&true)
    }

    fn snapshot(&self, label: &str) -> ClusterObjects {
        let namespaces_opted_in = self
            .namespaces
            .objects()
            .into_iter()
            .filter(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(label))
                    .is_some_and(|v| v == "true")
            })
            .filter_map(|n| n.metadata.name)
            .collect();
        ClusterObjects {
            deployments: self.deployments.objects(),
            replica_sets: self.replica_sets.objects(),
            stateful_sets: self.stateful_sets.objects(),
            daemon_sets: self.daemon_sets.objects(),
            pods: self.pods.objects(),
            nodes: self.nodes.objects(),
            namespaces_opted_in,
        }
    }
}

/// What a namespace's watches cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NsScope {
    /// Only ReplicaSets: a labelled Deployment lives there.
    ReplicaSets,
    /// Everything: the namespace is opted in.
    Full,
}

/// The namespace watches wanted for `cluster`: opted-in namespaces in full,
/// namespaces of labelled Deployments for their ReplicaSets.
fn wanted_namespaces(cluster: &ClusterObjects, cfg: &RolloutConfig) -> BTreeMap<String, NsScope> {
    let mut out = BTreeMap::new();
    for d in &cluster.deployments {
        if let Some(ns) = d.metadata.namespace.as_ref() {
            out.insert(ns.clone(), NsScope::ReplicaSets);
        }
    }
    for ns in cfg.namespaces.iter().chain(&cluster.namespaces_opted_in) {
        out.insert(ns.clone(), NsScope::Full);
    }
    out
}

/// Drops what the planner never reads, to keep the stores small.
fn slim_node(mut n: Node) -> Node {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.spec = n.spec.map(|s| NodeSpec {
        taints: s.taints,
        unschedulable: s.unschedulable,
        ..NodeSpec::default()
    });
    n.status = n.status.map(|s| NodeStatus {
        conditions: s.conditions,
        ..NodeStatus::default()
    });
    n
}

fn slim_pod(mut p: Pod) -> Pod {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.status = p.status.map(|s| PodStatus {
        phase: s.phase,
        ..PodStatus::default()
    });
    p
}

fn slim<K: Resource>(mut o: K) -> K {
    o.meta_mut().managed_fields = None;
    o
}

/// Runs one watch until cancelled, forwarding its events.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    source: String,
    wrap: fn(String, Event<K>) -> Update,
    slim: fn(K) -> K,
    tx: mpsc::Sender<Update>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => ev,
            };
            match ev {
                Some(Ok(ev)) => {
                    let ev = match ev {
                        Event::Apply(o) => Event::Apply(slim(o)),
                        Event::InitApply(o) => Event::InitApply(slim(o)),
                        other => other,
                    };
                    if tx.send(wrap(source.clone(), ev)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), %source, error = %e, "watch failed; retrying");
                }
                None => return,
            }
        }
    })
}

struct Watches {
    client: kube::Client,
    label: String,
    tx: mpsc::Sender<Update>,
    cancel: CancellationToken,
    /// Namespace → (scope, source name, tasks).
    namespaces: BTreeMap<String, (NsScope, String, Vec<tokio::task::JoinHandle<()>>)>,
    generation: u64,
}

impl Watches {
    fn selected(&self) -> watcher::Config {
        watcher::Config::default().labels(&format!("{}=true", self.label))
    }

    fn start_cluster(&self) {
        let c = &self.client;
        let (tx, cancel) = (self.tx.clone(), self.cancel.clone());
        spawn_watch(
            Api::<Node>::all(c.clone()),
            watcher::Config::default(),
            CLUSTER.into(),
            Update::Node,
            slim_node,
            tx.clone(),
            cancel.clone(),
        );
        spawn_watch(
            Api::<Namespace>::all(c.clone()),
            self.selected(),
            CLUSTER.into(),
            Update::Namespace,
            slim,
            tx.clone(),
            cancel.clone(),
        );
        spawn_watch(
            Api::<Deployment>::all(c.clone()),
            self.selected(),
            LABELLED.into(),
            Update::Deployment,
            slim,
            tx.clone(),
            cancel.clone(),
        );
        spawn_watch(
            Api::<StatefulSet>::all(c.clone()),
            self.selected(),
            LABELLED.into(),
            Update::StatefulSet,
            slim,
            tx.clone(),
            cancel.clone(),
        );
        spawn_watch(
            Api::<DaemonSet>::all(c.clone()),
            self.selected(),
            LABELLED.into(),
            Update::DaemonSet,
            slim,
            tx.clone(),
            cancel.clone(),
        );
        spawn_watch(
            Api::<Pod>::all(c.clone()),
            self.selected(),
            LABELLED.into(),
            Update::Pod,
            slim_pod,
            tx,
            cancel,
        );
    }

    fn active(&self) -> BTreeSet<String> {
        self.namespaces
            .values()
            .map(|(_, s, _)| s.clone())
            .collect()
    }

    /// Starts and stops namespace watches to match `wanted`; returns the
    /// sources stopped.
    fn reconcile(&mut self, wanted: &BTreeMap<String, NsScope>) -> Vec<String> {
        let mut stopped = Vec::new();
        let stale: Vec<String> = self
            .namespaces
            .iter()
            .filter(|(ns, (scope, _, _))| wanted.get(*ns) != Some(scope))
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in stale {
            if let Some((_, source, tasks)) = self.namespaces.remove(&ns) {
                tasks.iter().for_each(|t| t.abort());
                stopped.push(source);
            }
        }
        for (ns, scope) in wanted {
            if self.namespaces.contains_key(ns) {
                continue;
            }
            self.generation += 1;
            let source = format!("ns/{ns}#{}", self.generation);
            let c = &self.client;
            let (tx, cancel, all) = (
                self.tx.clone(),
                self.cancel.clone(),
                watcher::Config::default(),
            );
            let mut tasks = vec![spawn_watch(
                Api::<ReplicaSet>::namespaced(c.clone(), ns),
                all.clone(),
                source.clone(),
                Update::ReplicaSet,
                slim,
                tx.clone(),
                cancel.clone(),
            )];
            if *scope == NsScope::Full {
                tasks.push(spawn_watch(
                    Api::<Deployment>::namespaced(c.clone(), ns),
                    all.clone(),
                    source.clone(),
                    Update::Deployment,
                    slim,
                    tx.clone(),
                    cancel.clone(),
                ));
                tasks.push(spawn_watch(
                    Api::<StatefulSet>::namespaced(c.clone(), ns),
                    all.clone(),
                    source.clone(),
                    Update::StatefulSet,
                    slim,
                    tx.clone(),
                    cancel.clone(),
                ));
                tasks.push(spawn_watch(
                    Api::<DaemonSet>::namespaced(c.clone(), ns),
                    all.clone(),
                    source.clone(),
                    Update::DaemonSet,
                    slim,
                    tx.clone(),
                    cancel.clone(),
                ));
                tasks.push(spawn_watch(
                    Api::<Pod>::namespaced(c.clone(), ns),
                    all,
                    source.clone(),
                    Update::Pod,
                    slim_pod,
                    tx.clone(),
                    cancel.clone(),
                ));
            }
            tracing::debug!(namespace = %ns, ?scope, "watching namespace");
            self.namespaces.insert(ns.clone(), (*scope, source, tasks));
        }
        stopped
    }

    fn stop(&mut self) {
        for (_, _, tasks) in self.namespaces.values() {
            tasks.iter().for_each(|t| t.abort());
        }
        self.namespaces.clear();
    }
}

/// Watches the cluster and publishes the rollout intents whenever they
/// change (at most once per [`RolloutConfig::debounce`]), until cancelled.
/// Nothing is published before the first lists of the cluster-wide
/// watches (Nodes, opted-in namespaces, labelled workloads) are complete.
pub async fn run(
    client: kube::Client,
    cfg: RolloutConfig,
    publish: impl PublishRollouts,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    // Child token: stopping this loop stops every watch it started.
    let watch_cancel = cancel.child_token();
    let mut watches = Watches {
        client,
        label: cfg.opt_in_label.clone(),
        tx,
        cancel: watch_cancel.clone(),
        namespaces: BTreeMap::new(),
        generation: 0,
    };
    watches.start_cluster();
    watches.reconcile(&wanted_namespaces(&ClusterObjects::default(), &cfg));
    let mut stores = Stores::default();
    let mut active = watches.active();
    let mut published: Option<Vec<(Intent, WorkloadSecrets)>> = None;
    let mut due: Option<tokio::time::Instant> = None;
    // Refresh deadlines before they run out even when nothing changes.
    let refresh = (cfg.intent_ttl / 4).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            u = rx.recv() => {
                let Some(u) = u else { break };
                if stores.apply(u, &active) && due.is_none() {
                    due = Some(tokio::time::Instant::now() + cfg.debounce);
                }
            }
            _ = tick.tick() => {
                due.get_or_insert_with(tokio::time::Instant::now);
            }
            _ = sleep_until(due), if due.is_some() => {
                due = None;
                let mut cluster = stores.snapshot(&cfg.opt_in_label);
                let mut dropped = false;
                for source in watches.reconcile(&wanted_namespaces(&cluster, &cfg)) {
                    dropped |= stores.drop_source(&source);
                }
                active = watches.active();
                if !stores.cluster_synced() {
                    continue;
                }
                if dropped {
                    cluster = stores.snapshot(&cfg.opt_in_label);
                }
                let now = Utc::now();
                let mut intents = intents_with_secrets_from(&cluster, &cfg, now);
                if let Some(prev) = &published {
                    keep_deadlines_of(prev, &mut intents, now, cfg.intent_ttl);
                }
                if published.as_ref() != Some(&intents) {
                    tracing::info!(intents = intents.len(), "rollout intents changed");
                    published = Some(intents.clone());
                    publish.publish(intents);
                }
            }
        }
    }
    watch_cancel.cancel();
    watches.stop();
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "rollouts_tests.rs"]
mod tests;
