//! Workload pull secrets (README, "Workload pull secrets"): the rollout
//! and gate intents carry the credentials their pods' kubelet would use.
//!
//! Sources publish their intents here, each with where its pods' pull
//! secrets come from ([`WorkloadSecrets`]); this reads the ServiceAccounts
//! and Secrets named (`get` only, granted per namespace by ClusterRole
//! [`ROLE`]), keeps what it read in memory for [`PullSecretOptions::ttl`],
//! attaches the entries each intent's images need
//! ([`crate::plan::pull_secrets::attach`]: only to intents that name their
//! nodes) and publishes to the link. An intent whose secrets have not been
//! read yet is held back until they are (or their read failed), so a node
//! does not start a pull without them; all others go out at once.
//!
//! Nothing read here is logged: log lines name the namespace and Secret,
//! never its content. A namespace without the RoleBinding is reported once
//! (until it grants it), and its workloads pull with the nodes' credentials.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::Api;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::LinkState;
use super::rollouts::PublishRollouts;
use crate::plan::pull_secrets::{self, SecretEntry, WorkloadSecrets};
use crate::wire::v1::Intent;

/// The ClusterRole a namespace binds (RoleBinding) to let the coordinator
/// read its workloads' pull secrets (daemonset/coordinator-rbac.yaml).
pub const ROLE: &str = "prewarm-pull-secrets";

#[derive(Debug, Clone)]
pub struct PullSecretOptions {
    /// What was read is used this long, then read again (a rotated Secret
    /// reaches the nodes within about this).
    pub ttl: Duration,
    /// Each read gives up after this long (the intent then goes without).
    pub timeout: Duration,
}

impl Default for PullSecretOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

type Key = (String, String);

/// A read and when it was made; a failed read holds nothing.
struct Read<T> {
    at: Instant,
    value: T,
}

#[derive(Default)]
struct Cache {
    /// ServiceAccount → its `imagePullSecrets` names.
    accounts: HashMap<Key, Read<Vec<String>>>,
    secrets: HashMap<Key, Read<Vec<SecretEntry>>>,
    /// Problems already logged (namespaces refused, secrets missing or
    /// malformed), so each is said once until it changes.
    reported: BTreeSet<String>,
}

impl Cache {
    /// The entries for `w`, or None when something it needs was not read.
    fn entries(&self, w: &WorkloadSecrets) -> Option<Vec<SecretEntry>> {
        let ns = &w.namespace;
        let from_account = match &w.service_account {
            Some(sa) if w.secrets.is_empty() => {
                Some(self.accounts.get(&(ns.clone(), sa.clone()))?.value.clone())
            }
            _ => None,
        };
        let mut out = Vec::new();
        for name in w.names(&from_account.unwrap_or_default()) {
            out.extend(self.secrets.get(&(ns.clone(), name))?.value.iter().cloned());
        }
        Some(out)
    }

    /// Reads needed for `w` that are missing or older than `ttl`: the
    /// ServiceAccount first (its secrets are known only once it is read).
    fn stale(&self, w: &WorkloadSecrets, ttl: Duration, now: Instant) -> Vec<Need> {
        let old = |at: Instant| now.saturating_duration_since(at) >= ttl;
        let ns = &w.namespace;
        let mut needs = Vec::new();
        let mut account_secrets = Vec::new();
        if let (Some(sa), true) = (&w.service_account, w.secrets.is_empty()) {
            let key = (ns.clone(), sa.clone());
            match self.accounts.get(&key) {
                Some(r) => {
                    if old(r.at) {
                        needs.push(Need::Account(key));
                    }
                    account_secrets = r.value.clone();
                }
                None => return vec![Need::Account(key)],
            }
        }
        for name in w.names(&account_secrets) {
            let key = (ns.clone(), name);
            if self.secrets.get(&key).is_none_or(|r| old(r.at)) {
                needs.push(Need::Secret(key));
            }
        }
        needs
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Account(Key),
    Secret(Key),
}

/// Attaches workload pull secrets to intents before the link gets them.
pub struct PullSecrets {
    client: kube::Client,
    state: Arc<LinkState>,
    opts: PullSecretOptions,
    /// Each source's intents as published, with their secret sources.
    raw: Mutex<BTreeMap<String, Vec<(Intent, WorkloadSecrets)>>>,
    cache: Mutex<Cache>,
    wake: Notify,
}

impl fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PullSecrets")
    }
}

impl PullSecrets {
    pub fn new(client: kube::Client, state: Arc<LinkState>, opts: PullSecretOptions) -> Arc<Self> {
        Arc::new(Self {
            client,
            state,
            opts,
            raw: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(Cache::default()),
            wake: Notify::new(),
        })
    }

    /// Replaces `source`'s intents. Those whose secrets are known go to
    /// the link now, with their credentials; the rest once read.
    pub fn publish(&self, source: &str, intents: Vec<(Intent, WorkloadSecrets)>) {
        self.raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.to_string(), intents);
        self.publish_known(Some(source));
        self.wake.notify_one();
    }

    /// Publishes every source (or only `only`) with what is known.
    fn publish_known(&self, only: Option<&str>) {
        let raw = self.raw.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (source, intents) in raw {
            if only.is_some_and(|o| o != source) {
                continue;
            }
            let mut out = Vec::new();
            for (mut intent, w) in intents {
                if w.is_empty() || intent.nodes.is_empty() {
                    intent.credentials.clear();
                    out.push(intent);
                    continue;
                }
                if let Some(entries) = cache.entries(&w) {
                    pull_secrets::attach(&mut intent, &entries);
                    out.push(intent);
                }
            }
            self.state.publish(&source, out);
        }
    }

    /// Reads what the published intents need, republishing after each
    /// round, and refreshes it every `ttl`, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval((self.opts.ttl / 2).max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            // A ServiceAccount read reveals secrets to read: go again.
            for _ in 0..2 {
                let needs = self.needs();
                if needs.is_empty() {
                    break;
                }
                for need in needs {
                    self.read(need).await;
                }
                self.publish_known(None);
            }
        }
    }

    fn needs(&self) -> BTreeSet<Need> {
        let raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        raw.values()
            .flatten()
            .filter(|(i, w)| !w.is_empty() && !i.nodes.is_empty())
            .flat_map(|(_, w)| cache.stale(w, self.opts.ttl, now))
            .collect()
    }

    async fn read(&self, need: Need) {
        match need {
            Need::Account((ns, name)) => {
                let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
                let got = tokio::time::timeout(self.opts.timeout, api.get(&name)).await;
                let value = match self.outcome(&ns, &format!("ServiceAccount {ns}/{name}"), got) {
                    Some(sa) => sa
                        .image_pull_secrets
                        .into_iter()
                        .flatten()
                        .map(|r| r.name)
                        .collect(),
                    None => Vec::new(),
                };
                self.lock_cache().accounts.insert(
                    (ns, name),
                    Read {
                        at: Instant::now(),
                        value,
                    },
                );
            }
            Need::Secret((ns, name)) => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
                let got = tokio::time::timeout(self.opts.timeout, api.get(&name)).await;
                let value = match self.outcome(&ns, &format!("Secret {ns}/{name}"), got) {
                    Some(s) => self.entries_of(&ns, &name, s),
                    None => Vec::new(),
                };
                self.lock_cache().secrets.insert(
                    (ns, name),
                    Read {
                        at: Instant::now(),
                        value,
                    },
                );
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries of a Secret read; a malformed one is reported once and
    /// brings none (the kubelet would fail the pod's pull on it).
    fn entries_of(&self, ns: &str, name: &str, s: Secret) -> Vec<SecretEntry> {
        let data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let problem_key = format!("secret {ns}/{name}");
        match pull_secrets::parse_secret(ns, name, s.type_.as_deref(), &data) {
            Ok(entries) => {
                self.lock_cache()
                    .reported
                    .retain(|r| !r.starts_with(&problem_key));
                entries
            }
            Err(e) => {
                self.report_once(format!("{problem_key}: {e}"), || {
                    tracing::warn!(error = %e, "pull secret not used; pulls for its workloads use the nodes' credentials")
                });
                Vec::new()
            }
        }
    }

    /// The object a read returned; failures are reported (once) and read
    /// again after the ttl.
    fn outcome<T>(
        &self,
        ns: &str,
        what: &str,
        got: Result<Result<T, kube::Error>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let refused = format!("namespace {ns} refused");
        match got {
            Ok(Ok(v)) => {
                self.lock_cache().reported.remove(&refused);
                Some(v)
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
                self.report_once(refused, || {
                    tracing::warn!(namespace = %ns, "no RoleBinding in namespace {ns} grants ClusterRole {ROLE} to the coordinator's ServiceAccount: its workloads' pull secrets are not used, their images are warmed with the nodes' credentials only");
                });
                None
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                self.report_once(format!("{what} missing"), || {
                    tracing::warn!(object = %what, "not found: the kubelet skips a missing pull secret too; warming without it");
                });
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(object = %what, error = %e, "reading a pull secret failed; retried later");
                None
            }
            Err(_) => {
                tracing::warn!(object = %what, "reading a pull secret timed out; retried later");
                None
            }
        }
    }

    fn report_once(&self, key: String, log: impl FnOnce()) {
        if self.lock_cache().reported.insert(key) {
            log();
        }
    }
}

/// Where a source publishes: through [`PullSecrets`] when it is on, else
/// straight to the link without credentials.
#[derive(Clone)]
pub struct Publisher {
    pub state: Arc<LinkState>,
    pub secrets: Option<Arc<PullSecrets>>,
}

impl Publisher {
    pub fn publish(&self, source: &str, intents: Vec<(Intent, WorkloadSecrets)>) {
        match &self.secrets {
            Some(s) => s.publish(source, intents),
            None => self
                .state
                .publish(source, intents.into_iter().map(|(i, _)| i).collect()),
        }
    }
}

/// The rollout loop's publisher: its intents (source `rollouts`) through
/// [`Publisher`], and its readiness, as [`super::publish_rollouts`].
pub struct RolloutPublisher(pub Publisher);

impl PublishRollouts for RolloutPublisher {
    fn publish(&self, intents: Vec<(Intent, WorkloadSecrets)>) {
        self.0.state.readiness.set(super::ready::WORKLOADS, true);
        self.0.publish("rollouts", intents);
    }
}

#[cfg(test)]
#[path = "pull_secrets_tests.rs"]
mod tests;
