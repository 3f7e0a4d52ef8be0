//! The warm gate's effector: watches opted-in gated pods, asks
//! [`crate::plan::gate::decide`] what to do with each, and applies the
//! answer: a JSON Patch that narrows the pod to warm nodes and removes the
//! gate, urgent intents for pods still waiting, and Events on timeouts and
//! malformed annotations. Only the leader acts (agents attach only to it, so
//! its view is the whole cluster's).
//!
//! Only pods labelled `prewarm.dev/gate=true` and not yet bound to a node
//! (`spec.nodeName=`) are watched, never every pod of the cluster. A pod's
//! own changes are decided at once; view changes re-decide every waiting pod
//! at most every [`GateOptions::reevaluate`], and pods held for a warming
//! node are re-decided every [`GateOptions::tick`] as well, so a pull that
//! stalls (and so stops changing the view) still ends in a release.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events;
use super::link::LinkState;
use super::pull_secrets::{Publisher, PullSecrets};
use super::rollouts::keep_deadlines_of;
use super::WallClock;
use crate::plan::gate::{self, Decision, GateConfig, GatedPod, TimeoutPolicy};
use crate::plan::pull_secrets::WorkloadSecrets;
use crate::wire::v1::Intent;

/// Intent source name in [`LinkState::publish`].
pub const SOURCE: &str = "gate";
/// A failed release is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct GateOptions {
    pub cfg: GateConfig,
    /// Patches in flight at once.
    pub concurrency: usize,
    /// How often timeouts are checked.
    pub tick: Duration,
    /// View changes re-decide waiting pods at most this often.
    pub reevaluate: Duration,
    /// The wall clock pods' ages and timeouts are measured on.
    pub clock: WallClock,
    /// Attaches the held pods' pull secrets to their urgent intents; None:
    /// intents go without (and straight to the link).
    pub pull_secrets: Option<Arc<PullSecrets>>,
}

impl Default for GateOptions {
    fn default() -> Self {
        Self {
            cfg: GateConfig::default(),
            concurrency: 32,
            tick: Duration::from_secs(1),
            reevaluate: Duration::from_millis(200),
            clock: WallClock::default(),
            pull_secrets: None,
        }
    }
}

type Key = (String, String);

/// Outcome labels of `prewarm_coordinator_gate_released_pods_total`.
pub const OUTCOME_WARM: &str = "warm";
/// Released cold: unparsable images, or a fail-open timeout.
pub const OUTCOME_UNWARMED: &str = "unwarmed";
/// Released cold at once: a cold start was predicted sooner than waiting.
pub const OUTCOME_COLD_FASTER: &str = "cold_faster";
/// Event reason of a [`OUTCOME_COLD_FASTER`] release (type Normal).
pub const COLD_FASTER_REASON: &str = "WarmGateColdFaster";

/// An Event to record after a release.
struct Note {
    reason: &'static str,
    message: String,
    warning: bool,
}

/// A release to send: pod, patch, Event to record after it, and the
/// outcome label it is counted under.
struct Release {
    key: Key,
    patch: serde_json::Value,
    note: Option<Note>,
    outcome: &'static str,
}

struct Tracked {
    pod: GatedPod,
    seen: Instant,
    /// A patch is in flight or has succeeded: do not patch again.
    releasing: bool,
    held_noted: bool,
    warned: BTreeSet<String>,
    /// Images and candidates while waiting.
    waiting: Option<(Vec<String>, Vec<String>)>,
    /// Waiting because a node is predicted warm sooner than a cold start:
    /// decided again on every tick.
    on_estimate: bool,
    /// After a failed patch: decide again once this has passed.
    retry_at: Option<Instant>,
}

enum Msg {
    Watch(Box<Event<Pod>>),
    Released {
        key: Key,
        result: Result<(), String>,
    },
}

fn involved(p: &GatedPod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: Some(p.uid.clone()),
        ..ObjectReference::default()
    }
}

/// Runs the gate until cancelled.
pub async fn run(
    client: kube::Client,
    state: Arc<LinkState>,
    opts: GateOptions,
    mut leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let cfg = watcher::Config::default()
        .labels(&format!("{}=true", gate::GATE_LABEL))
        .fields("spec.nodeName=");
    let stream = watcher::watcher(Api::<Pod>::all(client.clone()), cfg).default_backoff();
    let wtx = tx.clone();
    let wcancel = cancel.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = wcancel.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => if wtx.send(Msg::Watch(Box::new(ev))).await.is_err() { return },
                    Some(Err(e)) => tracing::warn!(error = %e, "gated pod watch error; retrying"),
                    None => return,
                },
            }
        }
    });

    let mut g = Gate {
        client,
        state: state.clone(),
        opts: opts.clone(),
        pods: BTreeMap::new(),
        relist: None,
        permits: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        tx,
        published: Vec::new(),
        publisher: Publisher {
            state: state.clone(),
            secrets: opts.pull_secrets.clone(),
        },
    };
    let mut view_changes = state.view_changes.subscribe();
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full_due: Option<tokio::time::Instant> = None;
    loop {
        let mut dirty: BTreeSet<Key> = BTreeSet::new();
        let mut full = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            m = rx.recv() => {
                let Some(m) = m else { break };
                g.on_msg(m, &mut dirty);
                // Drain what is queued so a burst is decided in one pass.
                while let Ok(m) = rx.try_recv() {
                    g.on_msg(m, &mut dirty);
                }
            }
            Ok(()) = view_changes.changed() => {
                full_due.get_or_insert_with(|| tokio::time::Instant::now() + opts.reevaluate);
                continue;
            }
            _ = sleep_until(full_due), if full_due.is_some() => {
                full_due = None;
                full = true;
            }
            _ = tick.tick() => {
                let now = opts.clock.now();
                dirty.extend(g.due(now));
            }
            Ok(()) = leader.changed() => {
                full = *leader.borrow_and_update();
                if !full {
                    g.publisher.publish(SOURCE, Vec::new());
                    // Withdrawn: publish again on regaining leadership.
                    g.published.clear();
                }
            }
        }
        if !*leader.borrow() {
            continue;
        }
        if full {
            dirty.extend(g.pods.keys().cloned());
        }
        if !dirty.is_empty() {
            g.pass(&dirty);
        }
    }
    g.publisher.publish(SOURCE, Vec::new());
}

struct Gate {
    client: kube::Client,
    state: Arc<LinkState>,
    opts: GateOptions,
    pods: BTreeMap<Key, Tracked>,
    relist: Option<BTreeSet<Key>>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Msg>,
    published: Vec<(Intent, WorkloadSecrets)>,
    publisher: Publisher,
}

impl Gate {
    fn on_msg(&mut self, m: Msg, dirty: &mut BTreeSet<Key>) {
        let m = match m {
            Msg::Watch(ev) => Ok(*ev),
            Msg::Released { key, result } => Err((key, result)),
        };
        match m {
            Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => {
                let key = (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                if let Some(r) = &mut self.relist {
                    r.insert(key.clone());
                }
                match GatedPod::from_pod(&p) {
                    Ok(Some(pod)) => {
                        // Same name, new pod (deleted and recreated while a
                        // relist hid the delete): start afresh.
                        if self.pods.get(&key).is_some_and(|t| t.pod.uid != pod.uid) {
                            self.pods.remove(&key);
                        }
                        let t = self.pods.entry(key.clone()).or_insert_with(|| Tracked {
                            pod: pod.clone(),
                            seen: Instant::now(),
                            releasing: false,
                            held_noted: false,
                            warned: BTreeSet::new(),
                            waiting: None,
                            on_estimate: false,
                            retry_at: None,
                        });
                        t.pod = pod;
                        dirty.insert(key);
                    }
                    Ok(None) => {
                        self.pods.remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %key.0, pod = %key.1, error = %e, "gated pod ignored");
                        self.pods.remove(&key);
                    }
                }
            }
            Ok(Event::Delete(p)) => {
                self.pods.remove(&(
                    p.metadata.namespace.unwrap_or_default(),
                    p.metadata.name.unwrap_or_default(),
                ));
            }
            Ok(Event::Init) => self.relist = Some(BTreeSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = self.relist.take() {
                    self.pods.retain(|k, _| seen.contains(k));
                }
            }
            Err((key, result)) => {
                if let Err(e) = result {
                    tracing::warn!(namespace = %key.0, pod = %key.1, error = %e, "gate release failed; will retry");
                    if let Some(t) = self.pods.get_mut(&key) {
                        t.releasing = false;
                        t.retry_at = Some(Instant::now() + RETRY);
                    }
                }
            }
        }
        self.state
            .metrics
            .gate_held
            .set(self.pods.values().filter(|t| !t.releasing).count() as i64);
    }

    /// Pods not being released whose timeout or retry time has passed, or
    /// that wait on an estimate.
    fn due(&self, now: chrono::DateTime<Utc>) -> Vec<Key> {
        let instant = Instant::now();
        self.pods
            .iter()
            .filter(|(_, t)| !t.releasing)
            .filter(|(_, t)| {
                let (timeout, _, _) = gate::effective(&t.pod, &self.opts.cfg);
                let expired =
                    !t.held_noted && (now - t.pod.created).to_std().unwrap_or_default() >= timeout;
                expired || t.on_estimate || t.retry_at.is_some_and(|r| r <= instant)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn pass(&mut self, keys: &BTreeSet<Key>) {
        let now = self.opts.clock.now();
        let state = self.state.clone();
        let view = state.view();
        let mut patches: Vec<Release> = Vec::new();
        let mut notes: Vec<(ObjectReference, &'static str, String)> = Vec::new();
        for key in keys {
            let Some(t) = self.pods.get_mut(key) else {
                continue;
            };
            if t.releasing {
                continue;
            }
            t.retry_at = None;
            let verdict = gate::decide(&t.pod, &view, &self.opts.cfg, now);
            for w in verdict.warnings {
                if t.warned.insert(w.clone()) {
                    notes.push((involved(&t.pod), "InvalidGateAnnotation", w));
                }
            }
            t.waiting = None;
            t.on_estimate = false;
            match verdict.decision {
                Decision::Release { patch, .. } => {
                    t.releasing = true;
                    patches.push(Release {
                        key: key.clone(),
                        patch,
                        note: None,
                        outcome: OUTCOME_WARM,
                    });
                }
                Decision::ReleaseCold { patch, reason, .. } => {
                    // No urgent intent: an agent pulling on the node the
                    // pod lands on would compete with its kubelet.
                    t.releasing = true;
                    patches.push(Release {
                        key: key.clone(),
                        patch,
                        note: Some(Note {
                            reason: COLD_FASTER_REASON,
                            message: reason,
                            warning: false,
                        }),
                        outcome: OUTCOME_COLD_FASTER,
                    });
                }
                Decision::ReleaseUnwarmed {
                    patch,
                    reason,
                    timed_out,
                } => {
                    t.releasing = true;
                    if timed_out {
                        self.state
                            .metrics
                            .gate_timeouts
                            .with_label_values(&[TimeoutPolicy::FailOpen.as_str()])
                            .inc();
                    }
                    patches.push(Release {
                        key: key.clone(),
                        patch,
                        note: Some(Note {
                            reason: "WarmGateReleasedCold",
                            message: reason,
                            warning: true,
                        }),
                        outcome: OUTCOME_UNWARMED,
                    });
                }
                Decision::Hold {
                    reason,
                    candidates,
                    images,
                } => {
                    // Held pods keep their images warming, so they are
                    // released as soon as a node is warm.
                    t.waiting = Some((images, candidates));
                    if !t.held_noted {
                        t.held_noted = true;
                        self.state
                            .metrics
                            .gate_timeouts
                            .with_label_values(&[TimeoutPolicy::FailClosed.as_str()])
                            .inc();
                        notes.push((involved(&t.pod), "WarmGateHolding", reason));
                    }
                }
                Decision::Wait {
                    candidates,
                    images,
                    estimate,
                    ..
                } => {
                    t.on_estimate = estimate.is_some();
                    t.waiting = Some((images, candidates));
                }
            }
        }
        drop(view);
        for r in patches {
            self.release(r);
        }
        for (obj, reason, message) in notes {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = events::record(&client, &obj, true, reason, &message).await {
                    tracing::warn!(error = %e, reason, "gate Event not recorded");
                }
            });
        }
        self.publish(now);
    }

    fn publish(&mut self, now: chrono::DateTime<Utc>) {
        let waiting: Vec<(&GatedPod, Vec<String>, Vec<String>)> = self
            .pods
            .values()
            .filter_map(|t| {
                t.waiting
                    .as_ref()
                    .map(|(i, c)| (&t.pod, i.clone(), c.clone()))
            })
            .collect();
        let mut intents = gate::urgent_intents_with_secrets(&waiting, &self.opts.cfg, now);
        keep_deadlines_of(&self.published, &mut intents, now, self.opts.cfg.intent_ttl);
        if intents != self.published {
            self.published = intents.clone();
            self.publisher.publish(SOURCE, intents);
        }
    }

    fn release(&self, r: Release) {
        let Release {
            key,
            patch,
            note,
            outcome,
        } = r;
        let Some(t) = self.pods.get(&key) else {
            return;
        };
        let (client, permits, tx) = (self.client.clone(), self.permits.clone(), self.tx.clone());
        let metrics = self.state.metrics.clone();
        let (obj, seen) = (involved(&t.pod), t.seen);
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = apply(&client, &key, patch).await;
            if result.is_ok() {
                metrics
                    .gate_release_seconds
                    .observe(seen.elapsed().as_secs_f64());
                metrics.gate_released.with_label_values(&[outcome]).inc();
                if let Some(n) = note {
                    let recorded =
                        events::record(&client, &obj, n.warning, n.reason, &n.message).await;
                    if let Err(e) = recorded {
                        tracing::warn!(error = %e, reason = n.reason, "gate Event not recorded");
                    }
                }
            }
            let _ = tx.send(Msg::Released { key, result }).await;
        });
    }
}

/// Sends one release patch. A pod that is gone needs nothing more. Any
/// other failure (including the `test` op failing because the gate is
/// already gone) is retried; the watch drops released pods meanwhile.
async fn apply(client: &kube::Client, key: &Key, patch: serde_json::Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| format!("bad patch: {e}"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &key.0);
    match pods
        .patch(&key.1, &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(namespace = %key.0, pod = %key.1, "pod gone before its release");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_restart_tests.rs"]
mod restart_tests;
