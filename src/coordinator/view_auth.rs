//! Who may read the cluster view on the HTTPS listener, as kube-rbac-proxy
//! decides it: the caller's bearer token is checked with a TokenReview
//! (the API server's own audience, so a plain `kubectl create token` or a
//! pod's ServiceAccount token works, and the agents' link tokens do not),
//! then the user it names is checked with a SubjectAccessReview for
//! `get` on the request's non-resource path (`/v1/nodes`, ...). The shipped
//! ClusterRole `prewarm-view` grants exactly that.
//!
//! [`CachedViewAuth`] keeps both answers briefly, keyed by hashes (the raw
//! token is never kept or logged), and caps the reviews per second so
//! requests with made-up tokens cannot flood the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::auth::{review_token, Review};
use super::auth_cache::{jwt_expiry, CacheConfig};

/// The ClusterRole that grants the view (README, "Nothing exposed").
pub const VIEW_ROLE: &str = "prewarm-view";

/// The user a token belongs to, as TokenReview said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ViewAuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token not accepted: {0}")]
    Rejected(String),
    #[error("user {user:?} may not get {path}")]
    Forbidden { user: String, path: String },
    #[error("cannot check the token right now: {0}")]
    Unavailable(String),
    #[error("too many token checks right now; retry later")]
    RateLimited,
}

/// Authentication and authorization of view requests.
#[async_trait]
pub trait ViewAuth: Send + Sync {
    /// The user `token` belongs to.
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError>;
    /// Ok when `caller` may `get` the non-resource `path`, else
    /// [`ViewAuthError::Forbidden`].
    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError>;
}

impl std::fmt::Debug for dyn ViewAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewAuth")
    }
}

/// Checks a request: its `Authorization` header, then its path.
pub async fn check(
    auth: &dyn ViewAuth,
    authorization: Option<&str>,
    path: &str,
) -> Result<Caller, ViewAuthError> {
    // The scheme is case-insensitive, as the API server's bearer parser has it.
    let token = authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ViewAuthError::Missing)?;
    let caller = auth.authenticate(token).await?;
    auth.authorize(&caller, path).await?;
    Ok(caller)
}

/// TokenReview and SubjectAccessReview against the API server.
pub struct KubeViewAuth {
    client: kube::Client,
}

impl KubeViewAuth {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ViewAuth for KubeViewAuth {
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError> {
        // None: the API server's own audiences, not the agents' link one.
        let user = match review_token(&self.client, token, None).await {
            Ok(Review::Authenticated(user)) => user,
            Ok(Review::Rejected(why)) => return Err(ViewAuthError::Rejected(why)),
            Err(e) => return Err(ViewAuthError::Unavailable(e.to_string())),
        };
        Ok(Caller {
            user: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }

    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                uid: Some(caller.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()).filter(|e| !e.is_empty()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let out = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ViewAuthError::Unavailable(e.to_string()))?;
        match out.status {
            Some(s) if s.allowed => Ok(()),
            _ => Err(ViewAuthError::Forbidden {
                user: caller.user.clone(),
                path: path.to_string(),
            }),
        }
    }
}

/// Fixed tokens and grants, for tests: `tokens` maps a token to its
/// caller; `grants` lists (user, path) pairs allowed.
#[derive(Debug, Default)]
pub struct StaticViewAuth {
    pub tokens: HashMap<String, Caller>,
    pub grants: Vec<(String, String)>,
}

#[async_trait]
impl ViewAuth for StaticViewAuth {
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError> {
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(|| ViewAuthError::Rejected("unknown token".into()))
    }

    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError> {
        let ok = self
            .grants
            .iter()
            .any(|(u, p)| *u == caller.user && p == path);
        ok.then_some(()).ok_or_else(|| ViewAuthError::Forbidden {
            user: caller.user.clone(),
            path: path.to_string(),
        })
    }
}

/// Answers remembered until a deadline, at most `max` of them.
struct Memo<V> {
    entries: HashMap<[u8; 32], (V, Instant)>,
    max: usize,
}

impl<V: Clone> Memo<V> {
    fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max,
        }
    }

    fn get(&mut self, k: &[u8; 32], now: Instant) -> Option<V> {
        match self.entries.get(k) {
            Some((v, until)) if *until > now => Some(v.clone()),
            Some(_) => {
                self.entries.remove(k);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, k: [u8; 32], v: V, until: Instant, now: Instant) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&k) {
            self.entries.retain(|_, (_, u)| *u > now);
            if self.entries.len() >= self.max {
                // Still full of live answers: drop the one ending first.
                let first = self.entries.iter().min_by_key(|(_, e)| e.1).map(|e| *e.0);
                first.map(|f| self.entries.remove(&f));
            }
        }
        if self.max > 0 {
            self.entries.insert(k, (v, until));
        }
    }
}

struct CacheState {
    tokens: Memo<Result<Caller, ViewAuthError>>,
    access: Memo<Result<(), ViewAuthError>>,
    /// Review budget: tokens, and when last refilled.
    budget: (f64, Instant),
}

/// `inner` behind a short cache and a review rate limit (`cfg`: positive
/// and negative TTLs, most entries per cache, reviews per second, burst).
pub struct CachedViewAuth<A> {
    inner: A,
    cfg: CacheConfig,
    state: Mutex<CacheState>,
}

/// The view's defaults: answers kept 30 s (denials and refusals 10 s), 20
/// reviews a second with bursts of 40.
pub fn view_cache_config() -> CacheConfig {
    CacheConfig {
        positive_ttl: Duration::from_secs(30),
        negative_ttl: Duration::from_secs(10),
        max_entries: 4096,
        reviews_per_second: 20.0,
        burst: 40,
    }
}

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// The access cache's key: everything the SubjectAccessReview is about.
fn access_key(c: &Caller, path: &str) -> [u8; 32] {
    let mut parts = vec![c.user.as_str(), c.uid.as_str(), path];
    parts.extend(c.groups.iter().map(String::as_str));
    for (k, vs) in &c.extra {
        parts.push(k);
        parts.extend(vs.iter().map(String::as_str));
    }
    hash(&parts)
}

impl<A: ViewAuth> CachedViewAuth<A> {
    pub fn new(inner: A, cfg: CacheConfig) -> Self {
        Self {
            inner,
            cfg,
            state: Mutex::new(CacheState {
                tokens: Memo::new(cfg.max_entries),
                access: Memo::new(cfg.max_entries),
                budget: (cfg.burst as f64, Instant::now()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one review from the budget.
    fn spend(st: &mut CacheState, cfg: &CacheConfig, now: Instant) -> Result<(), ViewAuthError> {
        let (tokens, at) = st.budget;
        let refill = now.saturating_duration_since(at).as_secs_f64() * cfg.reviews_per_second;
        let tokens = (tokens + refill).min(cfg.burst as f64);
        if tokens < 1.0 {
            st.budget = (tokens, now);
            return Err(ViewAuthError::RateLimited);
        }
        st.budget = (tokens - 1.0, now);
        Ok(())
    }

    /// How long an answer is kept; None for errors of the moment.
    fn ttl<T>(&self, r: &Result<T, ViewAuthError>, token: Option<&str>) -> Option<Duration> {
        match r {
            Ok(_) => {
                let left = token.and_then(jwt_expiry).map(|exp| {
                    let secs = exp.saturating_sub(chrono::Utc::now().timestamp());
                    Duration::from_secs(secs.max(0) as u64)
                });
                let ttl = left.unwrap_or(self.cfg.positive_ttl);
                Some(ttl.min(self.cfg.positive_ttl)).filter(|d| !d.is_zero())
            }
            Err(ViewAuthError::Rejected(_) | ViewAuthError::Forbidden { .. }) => {
                Some(self.cfg.negative_ttl)
            }
            Err(_) => None,
        }
    }
}

#[async_trait]
impl<A: ViewAuth> ViewAuth for CachedViewAuth<A> {
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError> {
        let k = hash(&[token]);
        {
            let now = Instant::now();
            let mut st = self.lock();
            if let Some(r) = st.tokens.get(&k, now) {
                return r;
            }
            Self::spend(&mut st, &self.cfg, now)?;
        }
        let r = self.inner.authenticate(token).await;
        if let Some(ttl) = self.ttl(&r, Some(token)) {
            let now = Instant::now();
            self.lock().tokens.put(k, r.clone(), now + ttl, now);
        }
        r
    }

    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError> {
        let k = access_key(caller, path);
        {
            let now = Instant::now();
            let mut st = self.lock();
            if let Some(r) = st.access.get(&k, now) {
                return r;
            }
            Self::spend(&mut st, &self.cfg, now)?;
        }
        let r = self.inner.authorize(caller, path).await;
        if let Some(ttl) = self.ttl(&r, None) {
            let now = Instant::now();
            self.lock().access.put(k, r.clone(), now + ttl, now);
        }
        r
    }
}

#[cfg(test)]
#[path = "view_auth_tests.rs"]
mod tests;
