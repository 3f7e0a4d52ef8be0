//! A cache and a rate limit in front of an [`Authenticator`], so agents
//! reconnecting (a coordinator restart, a network blip) do not cost one
//! TokenReview each every time, and a storm of attaches cannot flood the
//! API server.
//!
//! - Entries are keyed by the SHA-256 of the token: the raw token is never
//!   kept or logged.
//! - A valid token is remembered for at most [`CacheConfig::positive_ttl`]
//!   (1 min), and never past its own `exp` claim when it is a JWT (read
//!   only to bound the entry; the signature is the API server's to check).
//! - A refused token is remembered for [`CacheConfig::negative_ttl`]
//!   (shorter); an API server error is never cached.
//! - Reviews beyond the token bucket's rate are not made: the attach is
//!   refused with [`AuthError::RateLimited`], which the link answers with
//!   `ResourceExhausted`, and the agent backs off.
//!
//! Time is tokio's, so tests run on paused time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::auth::{AuthError, Authenticator};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    /// Most tokens remembered at once.
    pub max_entries: usize,
    /// Reviews per second, sustained.
    pub reviews_per_second: f64,
    /// Reviews allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_entries: 20_000,
            reviews_per_second: 50.0,
            burst: 100,
        }
    }
}

/// A token bucket on tokio's clock.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, cfg: &CacheConfig, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cfg.reviews_per_second).min(cfg.burst as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Entry {
    result: Result<String, AuthError>,
    until: Instant,
}

struct State {
    entries: HashMap<[u8; 32], Entry>,
    bucket: Bucket,
}

/// `inner` behind a cache and a rate limit.
pub struct CachedAuth<A> {
    inner: A,
    cfg: CacheConfig,
    state: Mutex<State>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `exp` claim of a JWT, unverified; `None` for anything else.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// Whether a result may be remembered, and for how long.
fn ttl(cfg: &CacheConfig, token: &str, r: &Result<String, AuthError>) -> Option<Duration> {
    match r {
        Ok(_) => {
            let left = match jwt_expiry(token) {
                Some(exp) => {
                    let secs = exp.saturating_sub(chrono::Utc::now().timestamp());
                    Duration::from_secs(secs.max(0) as u64)
                }
                None => cfg.positive_ttl,
            };
            Some(left.min(cfg.positive_ttl)).filter(|d| !d.is_zero())
        }
        Err(AuthError::Rejected(_) | AuthError::WrongIdentity(_) | AuthError::Unbound) => {
            Some(cfg.negative_ttl)
        }
        // Nothing to remember: no token, or the API server did not answer.
        Err(AuthError::Missing | AuthError::Unavailable(_) | AuthError::RateLimited) => None,
    }
}

impl<A: Authenticator> CachedAuth<A> {
    pub fn new(inner: A, cfg: CacheConfig) -> Self {
        let bucket = Bucket {
            tokens: cfg.burst as f64,
            at: Instant::now(),
        };
        Self {
            inner,
            cfg,
            state: Mutex::new(State {
                entries: HashMap::new(),
                bucket,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens remembered now (expired ones may still count until evicted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, k: [u8; 32], result: Result<String, AuthError>, ttl: Duration) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.entries.len() >= self.cfg.max_entries && !st.entries.contains_key(&k) {
            st.entries.retain(|_, e| e.until > now);
            if st.entries.len() >= self.cfg.max_entries {
                // Still full of live entries: drop the one ending first.
                let first = st
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| *k);
                if let Some(first) = first {
                    st.entries.remove(&first);
                }
            }
        }
        if self.cfg.max_entries > 0 {
            st.entries.insert(
                k,
                Entry {
                    result,
                    until: now + ttl,
                },
            );
        }
    }
}

#[async_trait]
impl<A: Authenticator> Authenticator for CachedAuth<A> {
    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let k = key(token);
        {
            let now = Instant::now();
            let mut st = self.lock();
            match st.entries.get(&k) {
                Some(e) if e.until > now => return e.result.clone(),
                Some(_) => {
                    st.entries.remove(&k);
                }
                None => {}
            }
            let cfg = self.cfg;
            if !st.bucket.take(&cfg, now) {
                return Err(AuthError::RateLimited);
            }
        }
        let result = self.inner.node_of(token).await;
        if let Some(ttl) = ttl(&self.cfg, token, &result) {
            self.remember(k, result.clone(), ttl);
        }
        result
    }
}
