//! Registry credentials resolved the way the kubelet resolves them before it
//! calls the CRI `PullImage`.
//!
//! The kubelet (`kuberuntime_image.go`, `PullImage`) builds a keyring from the
//! pod's pull secrets, the node's docker config (`/var/lib/kubelet/config.json`)
//! and the external credential-provider plugins, and looks up the repository
//! (`host/path/repo`, no tag or digest).  Every matching credential is tried in
//! order until one pull succeeds; only when nothing matches does it pull
//! without credentials.  [`Keyring::lookup`] returns that same ordered list,
//! with [`Credential::Anonymous`] standing in for "no credentials".
//!
//! Layout: this file holds the keyring and the `CredentialProviderConfig`
//! parsing/validation; `dockerconfig` the docker files and key matching;
//! `provider` the plugin exec protocol and its response cache.

pub mod provider;
pub mod reload;
pub mod workload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

// The docker config formats and the keyring's matching are pure: they live
// in `config` so the coordinator's planning can use them too.
use self::dockerconfig::{sort_most_specific, DockerConfigError};
pub use self::dockerconfig::{RegistryPattern, Target};
use self::provider::{ProviderError, ProviderSet};
pub use self::reload::{CredentialSource, ReloadingKeyring};
pub use crate::config::dockerconfig;
pub use crate::config::dockerconfig::Credential;

/// Where the kubelet's credential-provider plugins are configured.
#[derive(Debug, Clone)]
pub struct ProviderSetup {
    /// `--image-credential-provider-config` file (YAML or JSON).
    pub config: PathBuf,
    /// `--image-credential-provider-bin-dir`; the plugin is `<bin_dir>/<name>`.
    pub bin_dir: PathBuf,
}

/// Inputs for [`Keyring::new`].
#[derive(Debug, Clone, Default)]
pub struct KeyringConfig {
    /// Docker `config.json` / `.dockercfg` files (pull secrets first, then the
    /// node's). Missing files are skipped; unreadable or invalid ones fail.
    pub docker_configs: Vec<PathBuf>,
    pub provider: Option<ProviderSetup>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading docker config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker config {path}: {source}")]
    DockerConfig {
        path: PathBuf,
        source: DockerConfigError,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("invalid image {image:?}: {reason}")]
    InvalidImage { image: String, reason: &'static str },
}

/// Result of [`Keyring::lookup_detailed`]: the candidates plus provider
/// failures, which the kubelet only logs but which explain a later 401.
#[derive(Debug, Clone)]
pub struct LookupOutcome {
    pub credentials: Vec<Credential>,
    pub provider_errors: Vec<String>,
}

/// Credentials from docker configs and credential-provider plugins.
#[derive(Debug)]
pub struct Keyring {
    /// Docker-config entries, most specific first.
    docker: Vec<(RegistryPattern, Credential)>,
    providers: Option<ProviderSet>,
    anonymous_fallback: bool,
}

impl Keyring {
    /// Reads every docker config and the provider config (validating it and
    /// checking that each plugin binary exists, as the kubelet does at start).
    pub fn new(config: KeyringConfig) -> Result<Self, AuthError> {
        let mut docker = Vec::new();
        for path in &config.docker_configs {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::debug!(path = %path.display(), "docker config not present, skipped");
                    continue;
                }
                Err(source) => {
                    return Err(AuthError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            };
            let entries =
                dockerconfig::parse(&bytes).map_err(|source| AuthError::DockerConfig {
                    path: path.clone(),
                    source,
                })?;
            docker.extend(entries.into_iter().map(|e| (e.pattern, e.credential)));
        }
        sort_most_specific(&mut docker);
        let providers = match &config.provider {
            Some(setup) => Some(ProviderSet::load(setup)?),
            None => None,
        };
        Ok(Keyring {
            docker,
            providers,
            anonymous_fallback: false,
        })
    }

    /// Overrides the plugin exec timeout (kubelet: 1 minute).
    pub fn with_provider_timeout(mut self, timeout: Duration) -> Self {
        if let Some(p) = self.providers.as_mut() {
            p.set_exec_timeout(timeout);
        }
        self
    }

    /// Also append `Anonymous` after matched credentials. Off by default:
    /// the kubelet fails the pull instead, so prewarm would otherwise succeed
    /// where the kubelet does not.
    pub fn with_anonymous_fallback(mut self, enabled: bool) -> Self {
        self.anonymous_fallback = enabled;
        self
    }

    /// Ordered credentials to try for `image` (`host[:port]/repo[:tag|@digest]`),
    /// whose registry is `host` and repository path `repository`.
    ///
    /// Order as in the kubelet: docker-config matches (most specific first),
    /// then credential-provider matches; `Anonymous` only when nothing matched
    /// (the kubelet never falls back to anonymous once it has credentials).
    /// Plugins get `host/repository` (the kubelet's `repoToPull`, no tag or
    /// digest); `image` itself only labels errors and logs.
    pub async fn lookup(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Vec<Credential>, AuthError> {
        Ok(self
            .lookup_detailed(image, host, repository, Instant::now())
            .await?
            .credentials)
    }

    /// [`Keyring::lookup`] with an explicit clock for the provider cache.
    pub async fn lookup_detailed(
        &self,
        image: &str,
        host: &str,
        repository: &str,
        now: Instant,
    ) -> Result<LookupOutcome, AuthError> {
        self.lookup_with_workload(image, host, repository, Vec::new(), now)
            .await
    }

    /// [`Keyring::lookup_detailed`] with a pod's own pull-secret credentials
    /// (already matched to the repository) tried first. The kubelet's
    /// `MakeDockerKeyring` (pkg/credentialprovider/secrets/secrets.go) puts
    /// the pod's secrets before the node's keyring the same way, and then
    /// `Anonymous` only when no credential matched at all.
    pub async fn lookup_with_workload(
        &self,
        image: &str,
        host: &str,
        repository: &str,
        workload: Vec<Credential>,
        now: Instant,
    ) -> Result<LookupOutcome, AuthError> {
        let invalid = |reason| AuthError::InvalidImage {
            image: image.to_string(),
            reason,
        };
        if host.is_empty() || host.contains('/') {
            return Err(invalid("registry host is empty or contains '/'"));
        }
        if repository.is_empty() || repository.starts_with('/') {
            return Err(invalid("repository path is empty or starts with '/'"));
        }
        let target = Target::new(host, repository);
        let mut credentials = workload;
        credentials.extend(
            self.docker
                .iter()
                .filter(|(p, _)| p.matches(&target))
                .map(|(_, c)| c.clone()),
        );
        let mut provider_errors = Vec::new();
        if let Some(set) = &self.providers {
            let (creds, errors) = set.credentials(&target, now).await;
            credentials.extend(creds);
            for e in errors {
                // The kubelet logs plugin failures and carries on without them.
                tracing::warn!(image, error = %e, "credential provider failed");
                provider_errors.push(e.to_string());
            }
        }
        if credentials.is_empty() || self.anonymous_fallback {
            credentials.push(Credential::Anonymous);
        }
        Ok(LookupOutcome {
            credentials,
            provider_errors,
        })
    }
}

// ---- CredentialProviderConfig (the kubelet's plugin configuration) ----

const CONFIG_KIND: &str = "CredentialProviderConfig";
const CONFIG_API_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// A validation problem at a config path such as `providers[0].matchImages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One validated `providers[]` entry.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub name: String,
    pub match_images: Vec<RegistryPattern>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `tokenAttributes.requireServiceAccount`: the kubelet never runs such a
    /// plugin without a pod service account, and neither do we.
    pub requires_service_account: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    providers: Option<Vec<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<RawEnv>,
    token_attributes: Option<RawTokenAttributes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTokenAttributes {
    #[serde(default)]
    service_account_token_audience: String,
    require_service_account: Option<bool>,
}

/// Reads and validates a `CredentialProviderConfig` file.
pub fn load_config(path: &Path) -> Result<Vec<ProviderSpec>, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProviderError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text, path)
}

/// Parses YAML or JSON config text; `path` only labels errors.
pub fn parse_config(text: &str, path: &Path) -> Result<Vec<ProviderSpec>, ProviderError> {
    let parse_err = |message: String| ProviderError::ParseConfig {
        path: path.to_path_buf(),
        message,
    };
    let raw: RawConfig = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| parse_err(e.to_string()))?
    };
    validate(raw).map_err(|errors| ProviderError::InvalidConfig {
        path: path.to_path_buf(),
        errors,
    })
}

/// The kubelet's `validateCredentialProviderConfig`, collecting every problem.
fn validate(raw: RawConfig) -> Result<Vec<ProviderSpec>, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });
    match raw.api_version.as_deref() {
        None | Some("") => err("apiVersion".into(), "required".into()),
        Some(v) if !CONFIG_API_VERSIONS.contains(&v) => err(
            "apiVersion".into(),
            format!("unsupported value {v:?} (want one of {CONFIG_API_VERSIONS:?})"),
        ),
        Some(_) => {}
    }
    if raw.kind.as_deref() != Some(CONFIG_KIND) {
        err("kind".into(), format!("must be {CONFIG_KIND:?}"));
    }
    let providers = raw.providers.unwrap_or_default();
    if providers.is_empty() {
        err("providers".into(), "must not be empty".into());
    }
    let mut specs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, p) in providers.into_iter().enumerate() {
        let at = |f: &str| format!("providers[{i}].{f}");
        if p.name.is_empty() {
            err(at("name"), "required".into());
        } else if p.name.contains('/') || p.name.contains(' ') || p.name == "." || p.name == ".." {
            err(
                at("name"),
                format!(
                    "{:?} must not contain '/' or spaces, nor be '.' or '..'",
                    p.name
                ),
            );
        } else if !seen.insert(p.name.clone()) {
            err(at("name"), format!("duplicate provider name {:?}", p.name));
        }
        if p.match_images.is_empty() {
            err(at("matchImages"), "must not be empty".into());
        }
        let mut match_images = Vec::new();
        for (j, m) in p.match_images.iter().enumerate() {
            match RegistryPattern::from_match_image(m) {
                Ok(pat) => match_images.push(pat),
                Err(why) => err(
                    format!("{}[{j}]", at("matchImages")),
                    format!("{m:?}: {why}"),
                ),
            }
        }
        let default_cache_duration = match p.default_cache_duration.as_deref() {
            None => {
                err(at("defaultCacheDuration"), "required".into());
                Duration::ZERO
            }
            Some(s) => match parse_go_duration(s) {
                Some((false, d)) => d,
                Some((true, _)) => {
                    err(
                        at("defaultCacheDuration"),
                        format!("{s:?} must not be negative"),
                    );
                    Duration::ZERO
                }
                None => {
                    err(
                        at("defaultCacheDuration"),
                        format!("{s:?} is not a duration like \"10m\""),
                    );
                    Duration::ZERO
                }
            },
        };
        if p.api_version.is_empty() {
            err(at("apiVersion"), "required".into());
        } else if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
            err(
                at("apiVersion"),
                format!(
                    "unsupported value {:?} (want one of {PLUGIN_API_VERSIONS:?})",
                    p.api_version
                ),
            );
        }
        for (k, e) in p.env.iter().enumerate() {
            if e.name.is_empty() {
                err(format!("{}[{k}].name", at("env")), "required".into());
            }
        }
        let mut requires_service_account = false;
        if let Some(t) = &p.token_attributes {
            if t.service_account_token_audience.is_empty() {
                err(
                    at("tokenAttributes.serviceAccountTokenAudience"),
                    "required".into(),
                );
            }
            match t.require_service_account {
                None => err(
                    at("tokenAttributes.requireServiceAccount"),
                    "required".into(),
                ),
                Some(r) => requires_service_account = r,
            }
        }
        specs.push(ProviderSpec {
            name: p.name,
            match_images,
            default_cache_duration,
            api_version: p.api_version,
            args: p.args,
            env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
            requires_service_account,
        });
    }
    if errs.is_empty() {
        Ok(specs)
    } else {
        Err(errs)
    }
}

/// Go `time.ParseDuration` ("1h30m", "1.5s", "0", "-5m"): `(negative, magnitude)`.
pub fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    let (neg, mut rest) = match s.trim().as_bytes().first() {
        Some(b'-') => (true, &s.trim()[1..]),
        Some(b'+') => (false, &s.trim()[1..]),
        _ => (false, s.trim()),
    };
    if rest == "0" {
        return Some((neg, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        rest = tail;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut nanos = whole.checked_mul(scale)?;
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().ok()?;
            nanos = nanos.checked_add(f * scale / 10u128.pow(frac.len() as u32))?;
        }
        total = total.checked_add(nanos)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some((neg, Duration::new(secs, (total % 1_000_000_000) as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let b = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let t = Credential::IdentityToken("refresh-secret".into());
        let s = format!("{b:?} {t:?}");
        assert!(
            !s.contains("hunter2") && !s.contains("refresh-secret"),
            "{s}"
        );
        assert!(s.contains("\"u\""));
    }

    #[tokio::test]
    async fn keyring_orders_and_falls_back_to_anonymous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret.json");
        let node = dir.path().join("config.json");
        std::fs::write(
            &secret,
            r#"{"auths":{"x.azurecr.io":{"username":"a","password":"1"},
                "x.azurecr.io/team":{"username":"b","password":"2"}}}"#,
        )
        .expect("write");
        std::fs::write(&node, r#"{"*.azurecr.io":{"auth":"Yzoz"}}"#).expect("write");
        let kr = Keyring::new(KeyringConfig {
            docker_configs: vec![secret, dir.path().join("missing.json"), node],
            provider: None,
        })
        .expect("keyring");
        let got = kr
            .lookup("x.azurecr.io/team/app:v1", "x.azurecr.io", "team/app")
            .await
            .expect("lookup");
        let users: Vec<String> = got
            .iter()
            .map(|c| match c {
                Credential::Basic { username, .. } => username.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(users, vec!["b", "a", "c"]);
        let kr = kr.with_anonymous_fallback(true);
        let got = kr.lookup("x.azurecr.io/app", "x.azurecr.io", "app").await;
        assert_eq!(got.expect("lookup").last(), Some(&Credential::Anonymous));
        let none = kr
            .lookup("quay.io/x:1", "quay.io", "x")
            .await
            .expect("lookup");
        assert_eq!(none, vec![Credential::Anonymous]);
        assert!(kr.lookup("x", "", "x").await.is_err());
    }

    #[tokio::test]
    async fn docker_configs_before_providers() {
        let file = Path::new(file!());
        let here = if file.is_absolute() {
            file.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
        };
        let fixtures = here
            .ancestors()
            .map(|d| d.join("tests/fixtures/auth"))
            .find(|d| d.join("credential-provider-config.yaml").is_file())
            .expect("tests/fixtures/auth");
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret.json");
        std::fs::write(&secret, r#"{"auths":{"x.azurecr.io":{"auth":"czpw"}}}"#).expect("write");
        let kr = Keyring::new(KeyringConfig {
            docker_configs: vec![secret],
            provider: Some(ProviderSetup {
                config: fixtures.join("credential-provider-config.yaml"),
                bin_dir: fixtures,
            }),
        })
        .expect("keyring");
        let got = kr.lookup("x.azurecr.io/app:1", "x.azurecr.io", "app").await;
        let acr = Credential::Basic {
            username: "00000000-0000-0000-0000-000000000000".into(),
            password: "fake-acr-refresh-token".into(),
        };
        let secret = Credential::Basic {
            username: "s".into(),
            password: "p".into(),
        };
        assert_eq!(got.expect("lookup"), vec![secret, acr]);
    }

    #[test]
    fn keyring_is_shareable_across_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_sync<T: Sync>() {}
        assert_sync::<Keyring>();
        let kr = Keyring::new(KeyringConfig::default()).expect("keyring");
        assert_send(&kr.lookup("a.io/b", "a.io", "b"));
    }

    #[test]
    fn invalid_docker_config_names_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").expect("write");
        let err = Keyring::new(KeyringConfig {
            docker_configs: vec![bad],
            provider: None,
        })
        .expect_err("must fail");
        assert!(err.to_string().contains("bad.json"), "{err}");
    }
}
