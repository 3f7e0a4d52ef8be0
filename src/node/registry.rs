//! OCI distribution client for pulls: manifest resolution, blob streaming with
//! Range resume, the token handshake, containerd's hosts.toml mirrors and
//! kubelet-style credential candidates. Errors say whether a retry can help.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::config::reference::ImageRef;
use crate::node::auth::{Credential, CredentialSource};
use crate::node::hosts::{resolve_hosts, RegistryEndpoint};
use crate::node::manifest::{self, ACCEPT as MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: access denied for {repository} (HTTP {status}); check the pull secret or credential provider")]
    Unauthorized {
        registry: String,
        repository: String,
        status: u16,
    },
    #[error("{what} not found at {registry}")]
    NotFound { registry: String, what: String },
    #[error("digest mismatch for {what}: expected {expected}, registry sent {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("unknown registry host {host}: {message}")]
    UnknownHost { host: String, message: String },
    #[error("{url}: HTTP {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{what}: {message}")]
    BadReply { what: String, message: String },
    #[error("registry configuration for {host}: {message}")]
    Config { host: String, message: String },
}

impl RegistryError {
    /// Worth retrying with backoff: overload, server faults, cut connections.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http { status, .. } => *status == 429 || *status >= 500,
            RegistryError::Transport { .. } => true,
            _ => false,
        }
    }

    /// The server's own Retry-After, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Short reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::UnknownHost { .. } => "unknown_host",
            RegistryError::Http { .. } => "http",
            RegistryError::Transport { .. } => "transport",
            RegistryError::BadReply { .. } => "bad_reply",
            RegistryError::Config { .. } => "config",
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A fetched, verified manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
}

/// The registry boundary the pull engine uses.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Fetches the manifest `reference` (tag or digest) of `image`.
    async fn manifest(&self, image: &ImageRef, reference: &str) -> Result<FetchedManifest>;
    /// The digest a tag points to, by HEAD (no body moves); None when the
    /// registry does not say.
    async fn head_digest(&self, image: &ImageRef, reference: &str) -> Result<Option<String>>;
    /// Streams blob `digest` starting at byte `offset`.
    async fn blob(
        &self,
        image: &ImageRef,
        digest: &str,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>>;
    /// The credential that worked for `image` (what CRI PullImage gets).
    fn credential(&self, image: &ImageRef) -> Credential;
}

#[derive(Clone)]
struct Token {
    header: String,
    expires: Instant,
}

struct RepoAuth {
    /// The credential source's generation the candidates were looked up in.
    generation: u64,
    candidates: Vec<Credential>,
    current: usize,
    token: Option<Token>,
}

/// The real client.
pub struct HttpRegistry {
    hosts_dir: Option<PathBuf>,
    keyring: Arc<dyn CredentialSource>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    auth: tokio::sync::Mutex<HashMap<String, RepoAuth>>,
    chosen: Mutex<HashMap<String, Credential>>,
    user_agent: String,
}

enum Attempt {
    Done(reqwest::Response),
    Retry,
}

impl HttpRegistry {
    pub fn new(hosts_dir: Option<PathBuf>, keyring: Arc<dyn CredentialSource>) -> Self {
        Self {
            hosts_dir,
            keyring,
            clients: Mutex::new(HashMap::new()),
            auth: tokio::sync::Mutex::new(HashMap::new()),
            chosen: Mutex::new(HashMap::new()),
            user_agent: format!("prewarm/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn endpoints(&self, image: &ImageRef, resolve: bool) -> Result<Vec<RegistryEndpoint>> {
        let all = resolve_hosts(self.hosts_dir.as_deref(), &image.registry).map_err(|e| {
            RegistryError::Config {
                host: image.registry.clone(),
                message: e.to_string(),
            }
        })?;
        let eps: Vec<_> = all
            .into_iter()
            .filter(|e| {
                if resolve {
                    e.capabilities.resolve
                } else {
                    e.capabilities.pull
                }
            })
            .collect();
        if eps.is_empty() {
            return Err(RegistryError::Config {
                host: image.registry.clone(),
                message: "no host has the needed capability".into(),
            });
        }
        Ok(eps)
    }

    fn client_for(&self, ep: &RegistryEndpoint) -> Result<reqwest::Client> {
        let key = format!("{}|{:?}|{}", ep.url, ep.ca_files, ep.skip_verify);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(self.user_agent.clone())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .danger_accept_invalid_certs(ep.skip_verify);
        for ca in &ep.ca_files {
            let pem = std::fs::read(ca).map_err(|e| RegistryError::Config {
                host: ep.url.to_string(),
                message: format!("ca {}: {e}", ca.display()),
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| RegistryError::Config {
                host: ep.url.to_string(),
                message: format!("ca {}: {e}", ca.display()),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| RegistryError::Config {
            host: ep.url.to_string(),
            message: e.to_string(),
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn url(ep: &RegistryEndpoint, image: &ImageRef, tail: &str) -> String {
        let base = ep.url.as_str().trim_end_matches('/');
        let v2 = if ep.override_path { "" } else { "/v2" };
        let mut url = format!("{base}{v2}/{}/{tail}", image.repository);
        if ep.is_mirror {
            url.push_str(&format!("?ns={}", image.registry));
        }
        url
    }

    /// Sends a request to the first endpoint that answers, authenticating
    /// with the repository's credential candidates as the kubelet would.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        image: &ImageRef,
        resolve: bool,
        method: Method,
        tail: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<reqwest::Response> {
        let eps = self.endpoints(image, resolve)?;
        let mut last_err = None;
        for ep in &eps {
            match self.send_to(ep, image, &method, tail, &headers, what).await {
                Ok(resp) => return Ok(resp),
                // A mirror that fails is skipped, as containerd does.
                Err(e) if ep.is_mirror && !matches!(e, RegistryError::DigestMismatch { .. }) => {
                    tracing::debug!(mirror = %ep.url, error = %e, "mirror failed, trying next host");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Config {
            host: image.registry.clone(),
            message: "no endpoints".into(),
        }))
    }

    /// A manifest request (GET or HEAD) on the resolve-capable hosts,
    /// accepting every manifest type we can pull.
    async fn send_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        method: Method,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, MANIFEST_ACCEPT.parse().expect("static header"));
        self.send(
            image,
            true,
            method,
            &format!("manifests/{reference}"),
            headers,
            what,
        )
        .await
    }

    async fn send_to(
        &self,
        ep: &RegistryEndpoint,
        image: &ImageRef,
        method: &Method,
        tail: &str,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<reqwest::Response> {
        let client = self.client_for(ep)?;
        let url = Self::url(ep, image, tail);
        let auth_key = format!("{}|{}", ep.url, image.repository);
        // Each candidate gets one plain try and one after a challenge.
        for _ in 0..16 {
            match self
                .attempt(&client, ep, image, method, &url, headers, &auth_key, what)
                .await?
            {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::Retry => continue,
            }
        }
        Err(RegistryError::Unauthorized {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            status: 401,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        client: &reqwest::Client,
        ep: &RegistryEndpoint,
        image: &ImageRef,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        auth_key: &str,
        what: &str,
    ) -> Result<Attempt> {
        let (auth_header, candidate) = {
            let mut auth = self.auth.lock().await;
            // Rotated credentials are looked up again (and their token too).
            let generation = self.keyring.generation();
            if auth
                .get(auth_key)
                .is_none_or(|a| a.generation != generation)
            {
                let full = image.to_string();
                let candidates = self
                    .keyring
                    .lookup(&full, &image.registry, &image.repository)
                    .await
                    .map_err(|e| RegistryError::Config {
                        host: image.registry.clone(),
                        message: e.to_string(),
                    })?;
                auth.insert(
                    auth_key.to_string(),
                    RepoAuth {
                        generation,
                        candidates,
                        current: 0,
                        token: None,
                    },
                );
            }
            let entry = auth.get(auth_key).expect("inserted above");
            let token = entry
                .token
                .as_ref()
                .filter(|t| t.expires > Instant::now())
                .map(|t| t.header.clone());
            let candidate = entry
                .candidates
                .get(entry.current)
                .cloned()
                .unwrap_or(Credential::Anonymous);
            (token, candidate)
        };
        let mut req = client.request(method.clone(), url).headers(headers.clone());
        for (k, v) in &ep.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(h) = &auth_header {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(image, url, e))?;
        let status = resp.status();
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            if status.is_success() || status == StatusCode::PARTIAL_CONTENT {
                self.chosen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(image.name(), candidate);
                return Ok(Attempt::Done(resp));
            }
            return Err(status_error(image, url, what, &resp));
        }
        // 401/403: answer the challenge with the current candidate, or move
        // on to the next one when it was already tried.
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge);
        let mut auth = self.auth.lock().await;
        let entry = auth.get_mut(auth_key).expect("inserted above");
        let tried_this_candidate = auth_header.is_some()
            || matches!(candidate, Credential::Anonymous) && challenge.is_none();
        if tried_this_candidate || status == StatusCode::FORBIDDEN {
            entry.token = None;
            entry.current += 1;
            if entry.current >= entry.candidates.len().max(1) {
                return Err(RegistryError::Unauthorized {
                    registry: image.registry.clone(),
                    repository: image.repository.clone(),
                    status: status.as_u16(),
                });
            }
            return Ok(Attempt::Retry);
        }
        let challenge = challenge.unwrap_or_default();
        let header = match challenge.scheme.as_str() {
            "basic" => match &candidate {
                Credential::Basic { username, password } => Some(basic(username, password)),
                _ => None,
            },
            "bearer" => {
                match fetch_token(client, &challenge, &candidate, &image.repository).await {
                    Ok(t) => Some(t),
                    Err(TokenError::Denied) => None,
                    Err(TokenError::Other(message)) => {
                        return Err(RegistryError::Transport {
                            url: challenge.realm.clone(),
                            message,
                        })
                    }
                }
            }
            _ => None,
        };
        match header {
            Some(h) => {
                entry.token = Some(Token {
                    header: h.0,
                    expires: Instant::now() + h.1,
                });
            }
            None => {
                entry.current += 1;
                if entry.current >= entry.candidates.len().max(1) {
                    return Err(RegistryError::Unauthorized {
                        registry: image.registry.clone(),
                        repository: image.repository.clone(),
                        status: status.as_u16(),
                    });
                }
            }
        }
        Ok(Attempt::Retry)
    }
}

fn basic(user: &str, pass: &str) -> (String, Duration) {
    use base64::Engine;
    let raw = format!("{user}:{pass}");
    (
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
        Duration::from_secs(3600 * 24),
    )
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (RFC 7235 auth-params).
fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut c = Challenge {
        scheme: scheme.to_ascii_lowercase(),
        ..Default::default()
    };
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        match key.as_str() {
            "realm" => c.realm = value.to_string(),
            "service" => c.service = Some(value.to_string()),
            "scope" => c.scope = Some(value.to_string()),
            _ => {}
        }
        rest = remaining.trim_start_matches(',').trim();
    }
    c
}

enum TokenError {
    Denied,
    Other(String),
}

async fn fetch_token(
    client: &reqwest::Client,
    challenge: &Challenge,
    credential: &Credential,
    repository: &str,
) -> std::result::Result<(String, Duration), TokenError> {
    #[derive(serde::Deserialize)]
    struct TokenReply {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    if challenge.realm.is_empty() {
        return Err(TokenError::Other("bearer challenge without realm".into()));
    }
    let scope = challenge
        .scope
        .clone()
        .unwrap_or_else(|| format!("repository:{repository}:pull"));
    let mut params = vec![("scope", scope)];
    if let Some(s) = &challenge.service {
        params.push(("service", s.clone()));
    }
    let req = match credential {
        Credential::IdentityToken(refresh) => {
            params.push(("grant_type", "refresh_token".into()));
            params.push(("refresh_token", refresh.clone()));
            params.push(("client_id", "prewarm".into()));
            client.post(&challenge.realm).form(&params)
        }
        Credential::Basic { username, password } => client
            .get(&challenge.realm)
            .query(&params)
            .basic_auth(username, Some(password)),
        Credential::Anonymous => client.get(&challenge.realm).query(&params),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| TokenError::Other(e.to_string()))?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(TokenError::Denied);
    }
    if !status.is_success() {
        return Err(TokenError::Other(format!("token endpoint HTTP {status}")));
    }
    let reply: TokenReply = resp
        .json()
        .await
        .map_err(|e| TokenError::Other(format!("token reply: {e}")))?;
    let token = reply
        .token
        .or(reply.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Other("token reply without token".into()))?;
    // Renew a little early; 60 s is the spec's default lifetime.
    let life = Duration::from_secs(reply.expires_in.unwrap_or(60).saturating_sub(10).max(5));
    Ok((format!("Bearer {token}"), life))
}

fn transport_error(image: &ImageRef, url: &str, e: reqwest::Error) -> RegistryError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return RegistryError::UnknownHost {
            host: image.registry.clone(),
            message,
        };
    }
    RegistryError::Transport {
        url: url.to_string(),
        message,
    }
}

fn status_error(
    image: &ImageRef,
    url: &str,
    what: &str,
    resp: &reqwest::Response,
) -> RegistryError {
    let status = resp.status().as_u16();
    if status == 404 {
        return RegistryError::NotFound {
            registry: image.registry.clone(),
            what: what.to_string(),
        };
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    RegistryError::Http {
        url: url.to_string(),
        status,
        retry_after,
    }
}

/// Retry-After as delta-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate_parse(v)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = v.split_whitespace().collect();
        if parts.len() != 6 {
            return None;
        }
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == parts[2])?
            + 1;
        let text = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
        humantime::parse_rfc3339(&text).ok()
    })
}

pub fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[async_trait]
impl Registry for HttpRegistry {
    async fn manifest(&self, image: &ImageRef, reference: &str) -> Result<FetchedManifest> {
        let what = format!("manifest {}:{}", image.name(), reference);
        let resp = self
            .send_manifest(image, reference, Method::GET, &what)
            .await?;
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if resp.content_length().unwrap_or(0) as usize > MAX_MANIFEST_BYTES {
            return Err(RegistryError::BadReply {
                what,
                message: format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let url = resp.url().to_string();
        let body = read_limited(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|message| RegistryError::Transport { url, message })?;
        let actual = sha256_hex(&body);
        let expected = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        let media_type = manifest::media_type_of(content_type.as_deref(), &body);
        Ok(FetchedManifest {
            digest: actual,
            media_type,
            body,
        })
    }

    async fn head_digest(&self, image: &ImageRef, reference: &str) -> Result<Option<String>> {
        let what = format!("manifest {}:{}", image.name(), reference);
        let resp = self
            .send_manifest(image, reference, Method::HEAD, &what)
            .await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:") && d.len() == 71)
            .map(str::to_string))
    }

    async fn blob(
        &self,
        image: &ImageRef,
        digest: &str,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let what = format!("blob {digest} of {}", image.name());
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                format!("bytes={offset}-").parse().expect("numeric header"),
            );
        }
        let resp = self
            .send(
                image,
                false,
                Method::GET,
                &format!("blobs/{digest}"),
                headers,
                &what,
            )
            .await?;
        if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            // The server ignored Range: skip what we already have.
            let url = resp.url().to_string();
            let mut skip = offset;
            let stream = resp
                .bytes_stream()
                .map_err(move |e| RegistryError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })
                .try_filter_map(move |mut chunk| {
                    let out = if skip >= chunk.len() as u64 {
                        skip -= chunk.len() as u64;
                        None
                    } else {
                        let rest = chunk.split_off(skip as usize);
                        skip = 0;
                        Some(rest)
                    };
                    futures::future::ready(Ok(out))
                });
            return Ok(stream.boxed());
        }
        let url = resp.url().to_string();
        Ok(resp
            .bytes_stream()
            .map_err(move |e| RegistryError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })
            .boxed())
    }

    fn credential(&self, image: &ImageRef) -> Credential {
        self.chosen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&image.name())
            .cloned()
            .unwrap_or(Credential::Anonymous)
    }
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> std::result::Result<Bytes, String> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > limit {
            return Err(format!("reply larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
