//! KEDA cron windows: watches ScaledObjects (`keda.sh/v1alpha1`, read-only)
//! that opt in like rollouts (the opt-in label on the ScaledObject, or its
//! namespace listed or labelled), reads each one's target Deployment or
//! StatefulSet, and publishes every node's windows
//! ([`crate::plan::keda::windows_by_node`]) in [`LinkState::windows`]; each
//! agent's stream sends its node's share.
//!
//! Targets are read with a get when their ScaledObject changes and every
//! [`KedaConfig::resync`] (a new image in a target's template reaches the
//! agents within that); the windows are recomputed when nodes change in
//! the view. Without the KEDA CRD (404 on the list) this loop logs once and
//! looks again every [`KedaConfig::missing_crd_retry`]; nothing else stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PodSpec};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio_util::sync::CancellationToken;

use super::link::{LinkState, NodeWindows};
use crate::plan::keda::{self, KedaDefaults, Resolved, ScaledObject, TargetKind};
use crate::plan::rollout::{self, ROLLOUT_LABEL};

/// What takes part and how windows look.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaConfig {
    /// The rollouts' opt-in label (`"true"` opts in, `"false"` out).
    pub opt_in_label: String,
    /// Namespaces whose ScaledObjects take part unless they opt out.
    pub namespaces: Vec<String>,
    pub defaults: KedaDefaults,
    /// How often targets and labelled namespaces are read again.
    pub resync: Duration,
    /// How often a missing KEDA CRD is looked for again.
    pub missing_crd_retry: Duration,
    /// Changes are folded into one recomputation at most this often.
    pub debounce: Duration,
}

impl Default for KedaConfig {
    fn default() -> Self {
        Self {
            opt_in_label: ROLLOUT_LABEL.to_string(),
            namespaces: Vec::new(),
            defaults: KedaDefaults::default(),
            resync: Duration::from_secs(60),
            missing_crd_retry: Duration::from_secs(300),
            debounce: Duration::from_secs(1),
        }
    }
}

fn resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    ApiResource::from_gvk_with_plural(&gvk, "scaledobjects")
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs until cancelled.
pub async fn run(
    client: kube::Client,
    state: Arc<LinkState>,
    cfg: KedaConfig,
    cancel: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let mut said_missing = false;
    loop {
        // Probe with a list: a watch on a missing CRD retries too eagerly.
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {
                tracing::info!("watching KEDA ScaledObjects for cron windows");
                said_missing = false;
                watch(&client, &api, &state, &cfg, &cancel).await;
                publish(&state, NodeWindows::new());
                if cancel.is_cancelled() {
                    return;
                }
            }
            Err(e) if is_not_found(&e) => {
                if !said_missing {
                    tracing::info!(retry_in = ?cfg.missing_crd_retry, "KEDA's ScaledObject CRD is not installed: no KEDA windows; looking again later");
                    said_missing = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?cfg.missing_crd_retry, "cannot list KEDA ScaledObjects; no KEDA windows for now")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.missing_crd_retry) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn publish(state: &LinkState, windows: NodeWindows) {
    state.windows.send_if_modified(|cur| {
        let changed = **cur != windows;
        if changed {
            tracing::info!(
                nodes = windows.len(),
                windows = windows.values().map(Vec::len).sum::<usize>(),
                "KEDA windows changed"
            );
            *cur = Arc::new(windows);
        }
        changed
    });
}

/// Watches until cancelled or the CRD goes away (the watch answers 404).
async fn watch(
    client: &kube::Client,
    api: &Api<DynamicObject>,
    state: &LinkState,
    cfg: &KedaConfig,
    cancel: &CancellationToken,
) {
    let mut events = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut objects: BTreeMap<(String, String), ScaledObject> = BTreeMap::new();
    let mut relist: Option<BTreeMap<(String, String), ScaledObject>> = None;
    let mut synced = false;
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut views = state.view_changes.subscribe();
    let mut tick = tokio::time::interval(cfg.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the next recomputation must do: read targets again, or only place.
    let mut due: Option<(tokio::time::Instant, bool)> = None;
    let schedule = |due: &mut Option<(tokio::time::Instant, bool)>, read: bool| {
        let at = tokio::time::Instant::now() + cfg.debounce;
        *due = Some(match *due {
            Some((t, r)) => (t, r || read),
            None => (at, read),
        });
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.next() => match ev {
                None => return,
                Some(Err(watcher::Error::InitialListFailed(e))) if is_not_found(&e) => {
                    tracing::info!("KEDA's ScaledObject CRD went away: KEDA windows dropped");
                    return;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "ScaledObject watch failed; retrying"),
                Some(Ok(ev)) => {
                    let changed = apply(&mut objects, &mut relist, &mut synced, ev);
                    if changed && synced {
                        schedule(&mut due, true);
                    }
                }
            },
            _ = tick.tick() => if synced { schedule(&mut due, true) },
            Ok(()) = views.changed() => if synced { schedule(&mut due, false) },
            _ = sleep_until(due.map(|d| d.0)), if due.is_some() => {
                let read = due.take().is_some_and(|d| d.1);
                if read {
                    resolved = resolve(client, &objects, cfg).await;
                }
                let nodes = node_facts(state);
                let (windows, skipped) = keda::windows_by_node(&resolved, &nodes, &cfg.defaults);
                let now: BTreeSet<String> = skipped.iter().map(|s| s.to_string()).collect();
                for s in now.difference(&reported) {
                    tracing::warn!(reason = %s, "KEDA cron trigger gives no window");
                }
                reported = now;
                publish(state, windows);
            }
        }
    }
}

/// Applies a watch event; true when the set of objects changed.
fn apply(
    objects: &mut BTreeMap<(String, String), ScaledObject>,
    relist: &mut Option<BTreeMap<(String, String), ScaledObject>>,
    synced: &mut bool,
    ev: Event<DynamicObject>,
) -> bool {
    let typed = |o: DynamicObject| -> Option<((String, String), ScaledObject)> {
        let key = (o.metadata.namespace.clone()?, o.metadata.name.clone()?);
        let value = serde_json::to_value(&o).ok()?;
        match serde_json::from_value::<ScaledObject>(value) {
            Ok(so) => Some((key, so)),
            Err(e) => {
                tracing::warn!(scaled_object = %format!("{}/{}", key.0, key.1), error = %e, "ScaledObject not readable; ignored");
                None
            }
        }
    };
    match ev {
        Event::Apply(o) => match typed(o) {
            Some((k, so)) => objects.insert(k, so.clone()) != Some(so),
            None => false,
        },
        Event::Delete(o) => {
            let key = (
                o.metadata.namespace.unwrap_or_default(),
                o.metadata.name.unwrap_or_default(),
            );
            objects.remove(&key).is_some()
        }
        Event::Init => {
            *relist = Some(BTreeMap::new());
            false
        }
        Event::InitApply(o) => {
            if let Some((k, so)) = typed(o) {
                relist.get_or_insert_with(BTreeMap::new).insert(k, so);
            }
            false
        }
        Event::InitDone => {
            *objects = relist.take().unwrap_or_default();
            *synced = true;
            true
        }
    }
}

/// Namespaces labelled `<opt-in label>=true`; empty when they cannot be read.
async fn labelled_namespaces(client: &kube::Client, label: &str) -> BTreeSet<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{label}=true"));
    match api.list(&lp).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list opted-in namespaces for KEDA windows");
            BTreeSet::new()
        }
    }
}

/// The opted-in ScaledObjects with their targets' pod templates.
async fn resolve(
    client: &kube::Client,
    objects: &BTreeMap<(String, String), ScaledObject>,
    cfg: &KedaConfig,
) -> Vec<Resolved> {
    let labelled = labelled_namespaces(client, &cfg.opt_in_label).await;
    let ns_in = |ns: &str| cfg.namespaces.iter().any(|n| n == ns) || labelled.contains(ns);
    let mut out = Vec::new();
    for ((ns, _), so) in objects {
        if !rollout::opted_in(&so.metadata, ns_in(ns), &cfg.opt_in_label) {
            continue;
        }
        if !so.spec.triggers.iter().any(|t| t.kind == "cron") {
            continue;
        }
        let template = match keda::target_of(so) {
            Ok(t) => template_of(client, t.kind, &t.namespace, &t.name).await,
            Err(skip) => Err(skip.reason),
        };
        out.push(Resolved {
            scaled_object: so.clone(),
            template,
        });
    }
    out
}

/// The pod template of a Deployment or StatefulSet, read with a get.
async fn template_of(
    client: &kube::Client,
    kind: TargetKind,
    ns: &str,
    name: &str,
) -> Result<PodSpec, String> {
    let read = match kind {
        TargetKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|d| d.map(|d| d.spec.and_then(|s| s.template.spec))),
        TargetKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|s| s.map(|s| s.spec.and_then(|s| s.template.spec))),
    };
    let what = format!("spec.scaleTargetRef: {} {ns}/{name}", kind.as_str());
    match read {
        Ok(Some(Some(spec))) => Ok(spec),
        Ok(Some(None)) => Err(format!("{what} has no pod template")),
        Ok(None) => Err(format!("{what} not found")),
        Err(e) => Err(format!("{what} cannot be read: {e}")),
    }
}

/// Facts of every connected node in the view.
fn node_facts(state: &LinkState) -> Vec<crate::plan::eligibility::NodeFacts> {
    let view = state.view();
    view.nodes()
        .filter(|r| r.connected)
        .filter_map(|r| view.facts(r).map(|f| f.into_owned()))
        .collect()
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "keda_tests.rs"]
mod tests;
