//! Docker credential files as the kubelet reads them: `config.json`
//! (`{"auths": {...}}`, also `kubernetes.io/dockerconfigjson` Secrets and
//! `/var/lib/kubelet/config.json`) and legacy `.dockercfg` (entries at the root,
//! `kubernetes.io/dockercfg` Secrets), and the kubelet keyring's matching of
//! registry keys against image repositories (`credentialprovider.URLsMatch`),
//! shared with the credential-provider plugins (`node::auth`) and with the
//! coordinator's workload pull secrets (`plan::pull_secrets`).

use std::cmp::Reverse;
use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

/// One candidate credential for a registry request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` at all (anonymous token fetch).
    Anonymous,
    /// Basic credentials (also used for the registry's token endpoint).
    Basic { username: String, password: String },
    /// Refresh token for the OAuth2 `grant_type=refresh_token` exchange.
    IdentityToken(String),
}

impl Credential {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credential::Anonymous)
    }
}

// Secrets never reach logs: only the username is shown.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// One usable credential and the registry key it applies to.
#[derive(Debug, Clone)]
pub struct DockerConfigEntry {
    /// Key as written in the file.
    pub key: String,
    pub pattern: RegistryPattern,
    pub credential: Credential,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    // serde_json syntax errors carry a position, never the document's text.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("top level must be a JSON object")]
    NotObject,
    #[error("\"auths\" must be an object")]
    AuthsNotObject,
    #[error("entry {key:?}: must be an object")]
    EntryNotObject { key: String },
    #[error("entry {key:?}: field {field:?} must be a string")]
    FieldNotString { key: String, field: &'static str },
    #[error("entry {key:?}: \"auth\" is not valid base64")]
    AuthBase64 { key: String },
    #[error("entry {key:?}: \"auth\" must be base64 of \"username:password\" (UTF-8)")]
    AuthFormat { key: String },
    #[error("entry {key:?}: invalid registry key: {reason}")]
    InvalidKey { key: String, reason: String },
}

// Go's StdEncoding plus tolerance for missing padding (hand-made Secrets).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses either file format. Entries without any credential (e.g. a
/// `credsStore` stub) are skipped; entries come back sorted by key.
pub fn parse(bytes: &[u8]) -> Result<Vec<DockerConfigEntry>, DockerConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let root: Value = serde_json::from_slice(bytes)?;
    let root = root.as_object().ok_or(DockerConfigError::NotObject)?;
    let entries = match root.get("auths") {
        Some(auths) => auths.as_object().ok_or(DockerConfigError::AuthsNotObject)?,
        // Legacy .dockercfg: every root value is an entry object.
        None if root.values().all(Value::is_object) => root,
        // config.json holding only credsStore/credHelpers/etc.
        None => return Ok(Vec::new()),
    };
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let value = &entries[key];
        let obj = value
            .as_object()
            .ok_or_else(|| DockerConfigError::EntryNotObject { key: key.clone() })?;
        let Some(credential) = entry_credential(key, obj)? else {
            tracing::debug!(key, "docker config entry has no credentials, skipped");
            continue;
        };
        let pattern = RegistryPattern::from_docker_key(key).map_err(|reason| {
            DockerConfigError::InvalidKey {
                key: key.clone(),
                reason,
            }
        })?;
        out.push(DockerConfigEntry {
            key: key.clone(),
            pattern,
            credential,
        });
    }
    Ok(out)
}

/// Credential of one entry: `identitytoken` wins, else `auth` (which
/// overrides `username`/`password`, as in the kubelet), else username/password.
fn entry_credential(
    key: &str,
    obj: &Map<String, Value>,
) -> Result<Option<Credential>, DockerConfigError> {
    let field = |name: &'static str| -> Result<&str, DockerConfigError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(DockerConfigError::FieldNotString {
                key: key.to_string(),
                field: name,
            }),
        }
    };
    let (mut username, mut password) = (
        field("username")?.to_string(),
        field("password")?.to_string(),
    );
    let auth = field("auth")?;
    if !auth.is_empty() {
        (username, password) = decode_auth(key, auth)?;
    }
    let token = field("identitytoken")?;
    Ok(if !token.is_empty() {
        Some(Credential::IdentityToken(token.to_string()))
    } else if !username.is_empty() || !password.is_empty() {
        Some(Credential::Basic { username, password })
    } else {
        None
    })
}

/// `base64("user:pass")`, split at the first colon.
fn decode_auth(key: &str, auth: &str) -> Result<(String, String), DockerConfigError> {
    let compact: String = auth.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let raw = LENIENT_B64
        .decode(compact)
        .map_err(|_| DockerConfigError::AuthBase64 {
            key: key.to_string(),
        })?;
    let text = String::from_utf8(raw).map_err(|_| DockerConfigError::AuthFormat {
        key: key.to_string(),
    })?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| DockerConfigError::AuthFormat {
            key: key.to_string(),
        })?;
    Ok((user.to_string(), pass.to_string()))
}

/// Image repository being matched: registry host (lowercase, split from its
/// port, docker.io aliases folded) and repository path segments.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: Option<String>,
    path: Vec<String>,
    /// `host[:port]` as given: the kubelet's "registry" cache key.
    registry: String,
    /// `host[:port]/repository`: what the kubelet passes to plugins.
    repo: String,
}

impl Target {
    pub fn new(host: &str, repository: &str) -> Self {
        let (h, port) = split_host_port(host);
        Target {
            host: fold_docker_alias(h, port.as_deref()),
            port,
            path: segments(repository),
            registry: host.to_string(),
            repo: format!("{host}/{repository}"),
        }
    }
    pub fn registry(&self) -> &str {
        &self.registry
    }
    pub fn repo(&self) -> &str {
        &self.repo
    }
}

/// Schemeless `host[:port][/path]` pattern with glob host labels, used for
/// docker-config keys, plugin `matchImages` and plugin response keys
/// (kubelet `credentialprovider.URLsMatch`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryPattern {
    text: String,
    labels: Vec<String>,
    port: Option<String>,
    path: Vec<String>,
}

impl fmt::Debug for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryPattern({:?})", self.text)
    }
}

impl RegistryPattern {
    /// Docker-config key: optional `http(s)://`, `/v1/` or `/v2/` path prefix
    /// dropped (`https://index.docker.io/v1/` is plain Docker Hub).
    pub fn from_docker_key(key: &str) -> Result<Self, String> {
        let trimmed = key.trim();
        let lower = trimmed.to_ascii_lowercase();
        let rest = if lower.starts_with("https://") {
            &trimmed[8..]
        } else if lower.starts_with("http://") {
            &trimmed[7..]
        } else {
            trimmed
        };
        // url.Parse semantics: `?` / `#` start a query / fragment.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = match path.get(..3) {
            Some("v1/") | Some("v2/") => &path[3..],
            _ => path,
        };
        let authority = authority.rsplit('@').next().unwrap_or_default();
        Self::build(authority, path)
    }

    /// `matchImages` entry: like a key, but a scheme is an error.
    pub fn from_match_image(s: &str) -> Result<Self, String> {
        if s.contains("://") {
            return Err("must not contain a URL scheme".to_string());
        }
        // As the kubelet's url.Parse: `?` / `#` start a query / fragment.
        let s = s.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = s.split_once('/').unwrap_or((s, ""));
        Self::build(authority, path)
    }

    fn build(authority: &str, path: &str) -> Result<Self, String> {
        if authority.is_empty() {
            return Err("registry host is empty".to_string());
        }
        let (host, port) = split_host_port(authority);
        if host.is_empty() {
            return Err("registry host is empty".to_string());
        }
        if let Some(p) = &port {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid port {p:?}"));
            }
        }
        let host = fold_docker_alias(host, port.as_deref());
        let labels: Vec<String> = host.split('.').map(str::to_string).collect();
        if let Some(bad) = labels.iter().find(|l| !glob_valid(l)) {
            return Err(format!("invalid glob in host label {bad:?}"));
        }
        let path = segments(path);
        let mut text = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        if let Some(p) = &port {
            text = format!("{text}:{p}");
        }
        for seg in &path {
            text.push('/');
            text.push_str(seg);
        }
        Ok(RegistryPattern {
            text,
            labels,
            port,
            path,
        })
    }

    /// Normalized `host[:port][/path]`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Same port (both absent or equal), same number of host labels, each
    /// label glob-matching, and the pattern path a segment prefix of the repo.
    pub fn matches(&self, t: &Target) -> bool {
        if self.port != t.port || self.path.len() > t.path.len() {
            return false;
        }
        let host_labels: Vec<&str> = t.host.split('.').collect();
        host_labels.len() == self.labels.len()
            && self
                .labels
                .iter()
                .zip(&host_labels)
                .all(|(p, h)| glob_match(p.as_bytes(), h.as_bytes()))
            && self.path.iter().zip(&t.path).all(|(p, s)| p == s)
    }

    /// Sort key: deeper path first, then fewer wildcard labels.
    fn specificity(&self) -> (Reverse<usize>, usize) {
        let globs = self
            .labels
            .iter()
            .filter(|l| l.contains(['*', '?', '[']))
            .count();
        (Reverse(self.path.len()), globs)
    }
}

/// Most specific first; a stable sort keeps file order among equals.
pub(crate) fn sort_most_specific<T>(items: &mut [(RegistryPattern, T)]) {
    items.sort_by_key(|(p, _)| p.specificity());
}

/// `host[:port]` (IPv6 in brackets) into lowercase host and optional port.
fn split_host_port(s: &str) -> (String, Option<String>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').map(str::to_string);
            return (h.to_ascii_lowercase(), port);
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_ascii_lowercase(), Some(p.to_string())),
        _ => (s.to_ascii_lowercase(), None),
    }
}

/// Docker Hub's hostnames all mean `docker.io`.
fn fold_docker_alias(host: String, port: Option<&str>) -> String {
    match (host.as_str(), port) {
        ("index.docker.io" | "registry-1.docker.io", None) => "docker.io".to_string(),
        _ => host,
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks Go `filepath.Match` syntax: `[` classes must close, `\` must escape.
fn glob_valid(p: &str) -> bool {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 >= b.len() => return false,
            b'\\' => i += 2,
            b'[' => match class_end(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Index just past the `]` closing the class opening at `start`.
fn class_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if p.get(i) == Some(&b'^') {
        i += 1;
    }
    let mut first = true;
    while i < p.len() {
        match p[i] {
            b']' if !first => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
        first = false;
    }
    None
}

/// Does the class `p[start..end]` accept `c`?
fn class_match(p: &[u8], start: usize, end: usize, c: u8) -> bool {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let close = end - 1;
    while i < close {
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < close {
            i += 1;
            lo = p[i];
        }
        i += 1;
        let mut hi = lo;
        if i + 1 < close && p[i] == b'-' {
            hi = p[i + 1];
            if hi == b'\\' && i + 2 < close {
                hi = p[i + 2];
                i += 1;
            }
            i += 2;
        }
        if lo <= c && c <= hi {
            hit = true;
        }
    }
    hit != negate
}

/// Glob match of one host label: `*`, `?`, `[...]`, `\x` (ASCII bytes).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => class_end(p, pi).filter(|&end| class_match(p, pi, end, s[si])),
            Some(b'\\') if p.get(pi + 1) == Some(&s[si]) => Some(pi + 2),
            Some(&c) if c != b'\\' && c == s[si] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                si += 1;
            }
            (None, Some((sp, ss))) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> RegistryPattern {
        RegistryPattern::from_docker_key(k).expect("valid key")
    }
    fn m(k: &str, host: &str, repo: &str) -> bool {
        key(k).matches(&Target::new(host, repo))
    }

    #[test]
    fn key_normalization() {
        assert_eq!(key("https://index.docker.io/v1/").as_str(), "docker.io");
        assert_eq!(key("http://quay.io/v2/coreos").as_str(), "quay.io/coreos");
        assert_eq!(
            key("Registry.Example.com:5000/a/b/").as_str(),
            "registry.example.com:5000/a/b"
        );
        assert_eq!(key("registry-1.docker.io").as_str(), "docker.io");
        assert_eq!(key("[::1]:5000").as_str(), "[::1]:5000");
        assert!(RegistryPattern::from_docker_key("https:///x").is_err());
        assert!(RegistryPattern::from_docker_key("host:abc").is_err());
        assert!(RegistryPattern::from_docker_key("ho[st").is_err());
    }

    #[test]
    fn docker_hub_aliases() {
        for k in [
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io",
            "index.docker.io",
        ] {
            assert!(m(k, "docker.io", "library/nginx"), "{k}");
        }
        assert!(!m("docker.io", "quay.io", "library/nginx"));
    }

    #[test]
    fn host_globs_per_label() {
        assert!(m("*.azurecr.io", "x.azurecr.io", "app"));
        assert!(!m("*.azurecr.io", "a.b.azurecr.io", "app"));
        assert!(!m("*.azurecr.io", "azurecr.io", "app"));
        assert!(m("*.*.azurecr.io", "a.b.azurecr.io", "app"));
        assert!(glob_match(b"my?cr", b"my1cr") && !glob_match(b"my?cr", b"mycr"));
        assert!(glob_match(b"a\\*", b"a*") && !glob_match(b"a\\*", b"ab"));
        // Like the kubelet's url.Parse, `?` in a key starts a query.
        assert_eq!(key("my?cr.azurecr.io").as_str(), "my");
        assert!(m("reg[0-9].example.com", "reg7.example.com", "app"));
        assert!(!m("reg[^0-9].example.com", "reg7.example.com", "app"));
        assert!(m("*", "localhost", "app"));
        assert!(m("prod-*.example.com", "PROD-eu.example.com", "app"));
    }

    #[test]
    fn port_must_match() {
        assert!(m("127.0.0.1:5000", "127.0.0.1:5000", "app"));
        assert!(!m("127.0.0.1:5000", "127.0.0.1:5001", "app"));
        assert!(!m("127.0.0.1", "127.0.0.1:5000", "app"));
        assert!(!m("127.0.0.1:5000", "127.0.0.1", "app"));
        assert!(m("[::1]:5000", "[::1]:5000", "app"));
    }

    #[test]
    fn path_prefix_on_segments() {
        assert!(m("quay.io/coreos", "quay.io", "coreos/etcd"));
        assert!(m("quay.io/coreos/etcd", "quay.io", "coreos/etcd"));
        assert!(!m("quay.io/core", "quay.io", "coreos/etcd"));
        assert!(!m("quay.io/coreos/etcd/x", "quay.io", "coreos/etcd"));
    }

    #[test]
    fn most_specific_first() {
        let mut v: Vec<(RegistryPattern, u8)> = vec![
            (key("*.azurecr.io"), 1),
            (key("x.azurecr.io"), 2),
            (key("x.azurecr.io/team"), 3),
            (key("x.azurecr.io"), 4),
        ];
        sort_most_specific(&mut v);
        let order: Vec<u8> = v.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, vec![3, 2, 4, 1]);
    }

    #[test]
    fn match_image_rejects_scheme() {
        assert!(RegistryPattern::from_match_image("https://x.azurecr.io").is_err());
        assert!(RegistryPattern::from_match_image("").is_err());
        assert_eq!(
            RegistryPattern::from_match_image("*.azurecr.io").map(|p| p.text),
            Ok("*.azurecr.io".to_string())
        );
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn config_json_auth_field() {
        // "user:pa:ss" -> the password keeps its colon.
        let e = parse(br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="}}}"#)
            .expect("parse");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "https://index.docker.io/v1/");
        assert_eq!(e[0].pattern.as_str(), "docker.io");
        assert_eq!(e[0].credential, basic("user", "pa:ss"));
        assert!(e[0]
            .pattern
            .matches(&Target::new("docker.io", "library/nginx")));
    }

    #[test]
    fn auth_without_padding_or_with_newline() {
        let e = parse(br#"{"auths":{"r.io":{"auth":"dXNlcjpwYXNz\n"}, "s.io":{"auth":"dTpw"}}}"#)
            .expect("parse");
        assert_eq!(e[0].credential, basic("user", "pass"));
        assert_eq!(e[1].credential, basic("u", "p"));
        let e = parse(br#"{"auths":{"r.io":{"auth":"dXNlcjpwYXNzMQ"}}}"#).expect("unpadded");
        assert_eq!(e[0].credential, basic("user", "pass1"));
    }

    #[test]
    fn legacy_dockercfg_root_map() {
        let e =
            parse(br#"{"quay.io":{"username":"u","password":"p","email":"e@x"}}"#).expect("parse");
        assert_eq!(e[0].credential, basic("u", "p"));
        assert_eq!(e[0].pattern.as_str(), "quay.io");
    }

    #[test]
    fn auth_overrides_username_password() {
        let e = parse(br#"{"auths":{"r.io":{"auth":"YTpi","username":"x","password":"y"}}}"#)
            .expect("parse");
        assert_eq!(e[0].credential, basic("a", "b"));
    }

    #[test]
    fn identity_token_wins() {
        let json =
            br#"{"auths":{"x.azurecr.io":{"auth":"MDAwMDAwMDAtMDAwMDo=","identitytoken":"rt"}}}"#;
        let e = parse(json).expect("parse");
        assert_eq!(e[0].credential, Credential::IdentityToken("rt".into()));
    }

    #[test]
    fn bad_auth_names_the_key() {
        let err = parse(br#"{"auths":{"r.io":{"auth":"!!!"}}}"#).expect_err("bad base64");
        assert!(
            matches!(&err, DockerConfigError::AuthBase64 { key } if key == "r.io"),
            "{err}"
        );
        assert!(err.to_string().contains("r.io"));
        // "nocolon"
        let err = parse(br#"{"auths":{"r.io":{"auth":"bm9jb2xvbg=="}}}"#).expect_err("no colon");
        assert!(
            matches!(&err, DockerConfigError::AuthFormat { key } if key == "r.io"),
            "{err}"
        );
    }

    #[test]
    fn structural_errors() {
        assert!(matches!(parse(b"[]"), Err(DockerConfigError::NotObject)));
        assert!(matches!(
            parse(br#"{"auths":[]}"#),
            Err(DockerConfigError::AuthsNotObject)
        ));
        assert!(matches!(
            parse(br#"{"auths":{"r.io":"x"}}"#),
            Err(DockerConfigError::EntryNotObject { .. })
        ));
        assert!(matches!(
            parse(br#"{"auths":{"r.io":{"username":1}}}"#),
            Err(DockerConfigError::FieldNotString {
                field: "username",
                ..
            })
        ));
        assert!(matches!(
            parse(b"{\"auths\":"),
            Err(DockerConfigError::Json(_))
        ));
        assert!(matches!(
            parse(br#"{"auths":{"https://":{"username":"u"}}}"#),
            Err(DockerConfigError::InvalidKey { .. })
        ));
    }

    #[test]
    fn stubs_and_empty_files_yield_nothing() {
        assert!(parse(b"  \n").expect("empty").is_empty());
        assert!(parse(br#"{"credsStore":"desktop"}"#)
            .expect("stub")
            .is_empty());
        assert!(parse(br#"{"auths":{"r.io":{}},"credsStore":"desktop"}"#)
            .expect("stub")
            .is_empty());
    }

    #[test]
    fn keys_with_scheme_port_and_path() {
        let e = parse(
            br#"{"auths":{"http://127.0.0.1:5000/v2/":{"username":"a","password":"1"},
                "registry.example.com/team/":{"username":"b","password":"2"}}}"#,
        )
        .expect("parse");
        assert_eq!(e[0].pattern.as_str(), "127.0.0.1:5000");
        assert!(e[0].pattern.matches(&Target::new("127.0.0.1:5000", "app")));
        assert!(!e[0].pattern.matches(&Target::new("127.0.0.1", "app")));
        assert_eq!(e[1].pattern.as_str(), "registry.example.com/team");
        assert!(e[1]
            .pattern
            .matches(&Target::new("registry.example.com", "team/app")));
        assert!(!e[1]
            .pattern
            .matches(&Target::new("registry.example.com", "other/app")));
    }
}
