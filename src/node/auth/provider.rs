//! Kubelet credential-provider exec plugins (`--image-credential-provider-config`,
//! `--image-credential-provider-bin-dir`), protocol
//! `credentialprovider.kubelet.k8s.io/v1` (v1beta1 / v1alpha1 when configured).
//!
//! As in the kubelet: the request's `image` is the repository without tag or
//! digest (`repoToPull`), the response must carry the configured apiVersion,
//! and responses are cached per `cacheKeyType` (Image, then Registry, then
//! Global are looked up).  Unlike the kubelet's per-image singleflight, execs
//! of one provider are serialized so concurrent lookups share a cached answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{
    join, load_config, parse_go_duration, sort_most_specific, Credential, FieldError,
    ProviderSetup, ProviderSpec, RegistryPattern, Target,
};

/// The kubelet's catch-all plugin timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on captured plugin stdout/stderr.
const MAX_OUTPUT: u64 = 1 << 20;
const STDERR_EXCERPT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("reading credential provider config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential provider config {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("credential provider config {path}: {}", join(.errors))]
    InvalidConfig {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
    #[error("credential provider bin dir {path}: {source}")]
    BinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential provider {provider}: plugin binary {path}: {reason}")]
    Binary {
        provider: String,
        path: PathBuf,
        reason: String,
    },
    #[error("credential provider {provider}: starting {path}: {source}")]
    Spawn {
        provider: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential provider {provider}: I/O with plugin for image {image}: {source}")]
    Io {
        provider: String,
        image: String,
        source: std::io::Error,
    },
    #[error("credential provider {provider}: no answer for image {image} within {timeout:?}, plugin killed")]
    Timeout {
        provider: String,
        image: String,
        timeout: Duration,
    },
    #[error("credential provider {provider}: plugin {status} for image {image}: {stderr}")]
    Failed {
        provider: String,
        image: String,
        status: String,
        stderr: String,
    },
    // Never quotes stdout: it may hold credentials.
    #[error("credential provider {provider}: invalid response for image {image}: {reason}")]
    BadResponse {
        provider: String,
        image: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Image(String),
    Registry(String),
    Global,
}

#[derive(Debug)]
struct CacheEntry {
    auth: AuthEntries,
    expires_at: Instant,
}

/// Response `auth` entries, most specific key first.
type AuthEntries = Vec<(RegistryPattern, Credential)>;

enum KeyType {
    Image,
    Registry,
    Global,
}

/// A validated `CredentialProviderResponse`; `ttl: None` means do not cache.
struct Response {
    key_type: KeyType,
    ttl: Option<Duration>,
    auth: AuthEntries,
}

#[derive(Debug)]
struct ExecProvider {
    spec: ProviderSpec,
    binary: PathBuf,
    /// Held across cache check and exec: one exec per provider at a time.
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
}

/// All configured plugins, with their in-memory response caches.
#[derive(Debug)]
pub struct ProviderSet {
    providers: Vec<ExecProvider>,
    timeout: Duration,
}

impl ProviderSet {
    /// Loads the config and checks the bin dir and every plugin binary.
    pub fn load(setup: &ProviderSetup) -> Result<Self, ProviderError> {
        std::fs::metadata(&setup.bin_dir).map_err(|source| ProviderError::BinDir {
            path: setup.bin_dir.clone(),
            source,
        })?;
        Self::new(load_config(&setup.config)?, &setup.bin_dir)
    }

    pub fn new(specs: Vec<ProviderSpec>, bin_dir: &Path) -> Result<Self, ProviderError> {
        let mut providers = Vec::new();
        for spec in specs {
            let binary = bin_dir.join(&spec.name);
            check_executable(&spec.name, &binary)?;
            providers.push(ExecProvider {
                spec,
                binary,
                cache: Mutex::new(HashMap::new()),
            });
        }
        Ok(ProviderSet {
            providers,
            timeout: DEFAULT_EXEC_TIMEOUT,
        })
    }

    pub fn set_exec_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn specs(&self) -> impl Iterator<Item = &ProviderSpec> {
        self.providers.iter().map(|p| &p.spec)
    }

    /// Credentials from every provider whose `matchImages` match, most
    /// specific response key first; failing providers are reported apart.
    pub async fn credentials(
        &self,
        target: &Target,
        now: Instant,
    ) -> (Vec<Credential>, Vec<ProviderError>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for p in &self.providers {
            if p.spec.requires_service_account
                || !p.spec.match_images.iter().any(|m| m.matches(target))
            {
                continue;
            }
            match p.provide(target, now, self.timeout).await {
                Ok(auth) => found.extend(auth.into_iter().filter(|(k, _)| k.matches(target))),
                Err(e) => errors.push(e),
            }
        }
        sort_most_specific(&mut found);
        (found.into_iter().map(|(_, c)| c).collect(), errors)
    }
}

fn check_executable(provider: &str, path: &Path) -> Result<(), ProviderError> {
    let bad = |reason: String| ProviderError::Binary {
        provider: provider.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(bad("not executable".into()));
        }
    }
    Ok(())
}

impl ExecProvider {
    /// Cached or fresh response auth entries for the target's repository.
    async fn provide(
        &self,
        target: &Target,
        now: Instant,
        timeout: Duration,
    ) -> Result<AuthEntries, ProviderError> {
        let mut cache = self.cache.lock().await;
        let keys = [
            CacheKey::Image(target.repo().to_string()),
            CacheKey::Registry(target.registry().to_string()),
            CacheKey::Global,
        ];
        for key in &keys {
            if let Some(entry) = cache.get(key) {
                if now <= entry.expires_at {
                    return Ok(entry.auth.clone());
                }
                cache.remove(key);
            }
        }
        let response = self.exec(target.repo(), timeout).await?;
        let Response {
            key_type,
            ttl,
            auth,
        } = self.decode(target.repo(), &response)?;
        if let Some(ttl) = ttl.filter(|d| !d.is_zero()) {
            let key = match key_type {
                KeyType::Image => keys[0].clone(),
                KeyType::Registry => keys[1].clone(),
                KeyType::Global => CacheKey::Global,
            };
            cache.retain(|_, e| now <= e.expires_at);
            cache.insert(
                key,
                CacheEntry {
                    auth: auth.clone(),
                    expires_at: now + ttl,
                },
            );
        }
        Ok(auth)
    }

    /// Runs the plugin once: request on stdin, response from stdout.
    async fn exec(&self, image: &str, timeout: Duration) -> Result<Vec<u8>, ProviderError> {
        let name = &self.spec.name;
        let request = serde_json::json!({
            "apiVersion": self.spec.api_version,
            "kind": "CredentialProviderRequest",
            "image": image,
        })
        .to_string();
        let mut child = tokio::process::Command::new(&self.binary)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProviderError::Spawn {
                provider: name.clone(),
                path: self.binary.clone(),
                source,
            })?;
        let stdin = child.stdin.take();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let feed = async move {
            if let Some(mut w) = stdin {
                // A plugin that exits without reading stdin is not an error.
                let _ = w.write_all(request.as_bytes()).await;
            }
        };
        let run =
            async { tokio::join!(feed, read_capped(stdout), read_capped(stderr), child.wait()) };
        let outcome = tokio::time::timeout(timeout, run).await;
        let (_, out, err, status) = match outcome {
            Ok(done) => done,
            Err(_) => {
                let _ = child.kill().await;
                return Err(ProviderError::Timeout {
                    provider: name.clone(),
                    image: image.to_string(),
                    timeout,
                });
            }
        };
        let io = |source| ProviderError::Io {
            provider: name.clone(),
            image: image.to_string(),
            source,
        };
        let status = status.map_err(io)?;
        let (out, err) = (out.map_err(io)?, err.map_err(io)?);
        if !status.success() {
            return Err(ProviderError::Failed {
                provider: name.clone(),
                image: image.to_string(),
                status: status.to_string(),
                stderr: excerpt(&err),
            });
        }
        Ok(out)
    }

    /// Validates a `CredentialProviderResponse`.
    fn decode(&self, image: &str, stdout: &[u8]) -> Result<Response, ProviderError> {
        let bad = |reason: String| ProviderError::BadResponse {
            provider: self.spec.name.clone(),
            image: image.to_string(),
            reason,
        };
        let value: Value = serde_json::from_slice(stdout).map_err(|e| {
            bad(format!(
                "stdout is not JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let text = |field: &str| value.get(field).and_then(Value::as_str).unwrap_or_default();
        if text("apiVersion") != self.spec.api_version {
            return Err(bad(format!(
                "apiVersion {:?} does not match the configured {:?}",
                text("apiVersion"),
                self.spec.api_version
            )));
        }
        if text("kind") != "CredentialProviderResponse" {
            return Err(bad(format!(
                "kind {:?} is not \"CredentialProviderResponse\"",
                text("kind")
            )));
        }
        let key_type = match text("cacheKeyType") {
            "Image" => KeyType::Image,
            "Registry" => KeyType::Registry,
            "Global" => KeyType::Global,
            other => {
                return Err(bad(format!(
                    "cacheKeyType {other:?} is not Image, Registry or Global"
                )))
            }
        };
        let ttl = match value.get("cacheDuration") {
            None | Some(Value::Null) => Some(self.spec.default_cache_duration),
            Some(Value::String(s)) => match parse_go_duration(s) {
                Some((false, d)) => Some(d),
                Some((true, _)) => None,
                None => return Err(bad(format!("cacheDuration {s:?} is not a duration"))),
            },
            Some(_) => return Err(bad("cacheDuration must be a string".into())),
        };
        let mut auth = Vec::new();
        match value.get("auth") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, entry) in map {
                    let field = |f: &str| {
                        entry
                            .get(f)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    let cred = Credential::Basic {
                        username: field("username"),
                        password: field("password"),
                    };
                    match RegistryPattern::from_docker_key(key) {
                        Ok(pat) => auth.push((pat, cred)),
                        // The kubelet ignores unparsable keys too.
                        Err(why) => {
                            tracing::warn!(provider = %self.spec.name, key, why, "ignoring auth key")
                        }
                    }
                }
            }
            Some(_) => return Err(bad("auth must be an object".into())),
        }
        sort_most_specific(&mut auth);
        Ok(Response {
            key_type,
            ttl,
            auth,
        })
    }
}

async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        r.take(MAX_OUTPUT).read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Last part of stderr, where the reason usually is.
fn excerpt(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_EXCERPT);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    match &text[start..] {
        "" => "(no stderr)".to_string(),
        t if start > 0 => format!("...{t}"),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_config;
    use super::*;

    /// tests/fixtures/auth, found from this file whichever crate compiles it.
    fn fixtures() -> PathBuf {
        let file = Path::new(file!());
        let here = if file.is_absolute() {
            file.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
        };
        here.ancestors()
            .chain(Path::new(env!("CARGO_MANIFEST_DIR")).ancestors())
            .map(|d| d.join("tests/fixtures/auth"))
            .find(|d| d.join("fake-acr-provider").is_file())
            .expect("tests/fixtures/auth/fake-acr-provider")
    }

    struct Fake {
        set: ProviderSet,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Fake {
        /// One fake provider; `extra` is YAML appended to its entry.
        fn new(default_ttl: &str, env: &[(&str, &str)], extra: &str) -> Fake {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("calls.log");
            let mut yaml = format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n\
                 - name: fake-acr-provider\n  matchImages: [\"*.azurecr.io\", \"registry.local:5000/team\"]\n  \
                 defaultCacheDuration: \"{default_ttl}\"\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  \
                 args: [\"--azure-config\", \"/etc/kubernetes/azure.json\"]\n  env:\n  \
                 - {{name: FAKE_PROVIDER_LOG, value: \"{}\"}}\n  \
                 - {{name: FAKE_PROVIDER_USER, value: acr-user}}\n  - {{name: FAKE_PROVIDER_PASS, value: acr-pass}}\n",
                log.display()
            );
            for (k, v) in env {
                yaml.push_str(&format!("  - {{name: {k}, value: \"{v}\"}}\n"));
            }
            yaml.push_str(extra);
            let specs = parse_config(&yaml, Path::new("test.yaml")).expect("config");
            let set = ProviderSet::new(specs, &fixtures()).expect("provider set");
            Fake {
                set,
                log,
                _dir: dir,
            }
        }
        fn calls(&self) -> usize {
            std::fs::read_to_string(&self.log)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        }
        async fn get(
            &self,
            host: &str,
            repo: &str,
            now: Instant,
        ) -> (Vec<Credential>, Vec<ProviderError>) {
            self.set.credentials(&Target::new(host, repo), now).await
        }
    }

    fn acr() -> Credential {
        Credential::Basic {
            username: "acr-user".into(),
            password: "acr-pass".into(),
        }
    }

    #[test]
    fn fixture_config_parses() {
        let specs =
            load_config(&fixtures().join("credential-provider-config.yaml")).expect("fixture");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "fake-acr-provider");
        assert_eq!(specs[0].default_cache_duration, Duration::from_secs(600));
        assert_eq!(specs[0].match_images.len(), 4);
        assert_eq!(specs[0].args, vec!["/etc/kubernetes/azure.json"]);
        assert!(ProviderSet::load(&ProviderSetup {
            config: fixtures().join("credential-provider-config.yaml"),
            bin_dir: fixtures(),
        })
        .is_ok());
    }

    #[test]
    fn json_config_accepted() {
        let json = r#"{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig",
            "providers":[{"name":"p","matchImages":["*.azurecr.io"],"defaultCacheDuration":"1h30m",
            "apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1"}]}"#;
        let specs = parse_config(json, Path::new("c.json")).expect("json");
        assert_eq!(specs[0].default_cache_duration, Duration::from_secs(5400));
    }

    #[test]
    fn validation_errors_name_fields() {
        let yaml = "apiVersion: kubelet.config.k8s.io/v2\nkind: Nope\nproviders:\n\
            - name: a/b\n  matchImages: []\n  defaultCacheDuration: \"-1m\"\n  apiVersion: bogus/v1\n\
            - name: ok\n  matchImages: [\"https://x.io\"]\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  \
              env: [{value: x}]\n\
            - name: ok\n  matchImages: [\"x.io\"]\n  defaultCacheDuration: 10q\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  \
              tokenAttributes: {serviceAccountTokenAudience: aud}\n";
        let err = parse_config(yaml, Path::new("/etc/cp.yaml")).expect_err("invalid");
        let ProviderError::InvalidConfig { errors, .. } = &err else {
            panic!("{err}");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "apiVersion",
                "kind",
                "providers[0].name",
                "providers[0].matchImages",
                "providers[0].defaultCacheDuration",
                "providers[0].apiVersion",
                "providers[1].matchImages[0]",
                "providers[1].defaultCacheDuration",
                "providers[1].env[0].name",
                "providers[2].name",
                "providers[2].defaultCacheDuration",
                "providers[2].tokenAttributes.requireServiceAccount",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("/etc/cp.yaml")
                && text.contains("providers[0].matchImages: must not be empty"),
            "{text}"
        );
        let empty = parse_config(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n",
            Path::new("e"),
        );
        assert!(empty
            .expect_err("empty")
            .to_string()
            .contains("providers: must not be empty"));
        let unknown = parse_config(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nprovider: []\n",
            Path::new("u"),
        );
        assert!(matches!(unknown, Err(ProviderError::ParseConfig { .. })));
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("0"), Some((false, Duration::ZERO)));
        assert_eq!(d("0s"), Some((false, Duration::ZERO)));
        assert_eq!(d("1h30m"), Some((false, Duration::from_secs(5400))));
        assert_eq!(d("1.5s"), Some((false, Duration::from_millis(1500))));
        assert_eq!(d("300ms"), Some((false, Duration::from_millis(300))));
        assert_eq!(d("2m0.5s"), Some((false, Duration::from_millis(120_500))));
        assert_eq!(d("-5m"), Some((true, Duration::from_secs(300))));
        for bad in ["", "5", "5x", "m", ".s", "1h-2m"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_binary_is_reported() {
        let specs = parse_config(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- name: nope\n  \
             matchImages: [\"*.io\"]\n  defaultCacheDuration: 1m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
            Path::new("c"),
        )
        .expect("config");
        let err = ProviderSet::new(specs, &fixtures()).expect_err("missing");
        assert!(
            matches!(err, ProviderError::Binary { .. }) && err.to_string().contains("nope"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exec_success_and_match_images() {
        let f = Fake::new("0s", &[], "");
        let now = Instant::now();
        let (creds, errs) = f.get("myacr.azurecr.io", "team/app", now).await;
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(creds, vec![acr()]);
        let log = std::fs::read_to_string(&f.log).expect("log");
        assert!(
            log.contains("\"image\": \"myacr.azurecr.io/team/app\""),
            "{log}"
        );
        assert!(
            log.contains("\"args\": [\"--azure-config\", \"/etc/kubernetes/azure.json\"]"),
            "{log}"
        );
        // matchImages: no exec for other registries, deeper hosts or paths.
        for (host, repo) in [
            ("quay.io", "app"),
            ("a.b.azurecr.io", "app"),
            ("registry.local:5000", "other/app"),
        ] {
            let (creds, errs) = f.get(host, repo, now).await;
            assert!(creds.is_empty() && errs.is_empty(), "{host}/{repo}");
        }
        assert_eq!(f.calls(), 1);
    }

    #[tokio::test]
    async fn response_key_must_match_image() {
        let f = Fake::new(
            "0s",
            &[("FAKE_PROVIDER_KEY", "registry.local:5000/team/app")],
            "",
        );
        let now = Instant::now();
        assert_eq!(
            f.get("registry.local:5000", "team/app/sub", now).await.0,
            vec![acr()]
        );
        assert!(f
            .get("registry.local:5000", "team/other", now)
            .await
            .0
            .is_empty());
        assert_eq!(f.calls(), 2);
    }

    #[tokio::test]
    async fn older_api_version_round_trips() {
        let f = Fake::new("0s", &[], "");
        let mut specs: Vec<ProviderSpec> = f.set.specs().cloned().collect();
        specs[0].api_version = "credentialprovider.kubelet.k8s.io/v1alpha1".into();
        let set = ProviderSet::new(specs, &fixtures()).expect("set");
        let (creds, errs) = set
            .credentials(&Target::new("x.azurecr.io", "a"), Instant::now())
            .await;
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(creds, vec![acr()]);
    }

    #[tokio::test]
    async fn response_api_version_mismatch() {
        let v = "credentialprovider.kubelet.k8s.io/v1beta1";
        let f = Fake::new("0s", &[("FAKE_PROVIDER_RESPONSE_API_VERSION", v)], "");
        let (creds, errs) = f.get("x.azurecr.io", "a", Instant::now()).await;
        assert!(creds.is_empty());
        assert!(
            matches!(&errs[..], [ProviderError::BadResponse { reason, .. }] if reason.contains("apiVersion")),
            "{errs:?}"
        );
    }

    #[tokio::test]
    async fn non_zero_exit_carries_stderr() {
        let f = Fake::new("0s", &[("FAKE_PROVIDER_MODE", "fail")], "");
        let (_, errs) = f.get("x.azurecr.io", "a", Instant::now()).await;
        let [ProviderError::Failed { stderr, status, .. }] = &errs[..] else {
            panic!("{errs:?}");
        };
        assert!(
            stderr.contains("simulated failure") && status.contains('3'),
            "{stderr} / {status}"
        );
    }

    #[tokio::test]
    async fn garbage_stdout_is_rejected() {
        let f = Fake::new("0s", &[("FAKE_PROVIDER_MODE", "garbage")], "");
        let (creds, errs) = f.get("x.azurecr.io", "a", Instant::now()).await;
        assert!(creds.is_empty());
        let [ProviderError::BadResponse { reason, .. }] = &errs[..] else {
            panic!("{errs:?}");
        };
        assert!(
            reason.contains("not JSON") && !reason.contains("CredentialProviderResponse\n"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn timeout_kills_plugin() {
        let mut f = Fake::new(
            "0s",
            &[
                ("FAKE_PROVIDER_MODE", "sleep"),
                ("FAKE_PROVIDER_SLEEP", "30"),
            ],
            "",
        );
        f.set.set_exec_timeout(Duration::from_millis(700));
        let started = Instant::now();
        let (_, errs) = f.get("x.azurecr.io", "a", Instant::now()).await;
        assert!(
            matches!(&errs[..], [ProviderError::Timeout { .. }]),
            "{errs:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn cache_by_registry() {
        let f = Fake::new("0s", &[("FAKE_PROVIDER_CACHE_DURATION", "5m")], "");
        let t0 = Instant::now();
        f.get("x.azurecr.io", "a", t0).await;
        f.get("x.azurecr.io", "b/c", t0 + Duration::from_secs(60))
            .await;
        assert_eq!(f.calls(), 1, "same registry is a cache hit");
        f.get("y.azurecr.io", "a", t0).await;
        assert_eq!(f.calls(), 2, "other registry execs");
        // Still valid exactly at expiry, refetched after it.
        f.get("x.azurecr.io", "a", t0 + Duration::from_secs(300))
            .await;
        assert_eq!(f.calls(), 2);
        let (creds, _) = f
            .get("x.azurecr.io", "a", t0 + Duration::from_secs(301))
            .await;
        assert_eq!((f.calls(), creds), (3, vec![acr()]));
    }

    #[tokio::test]
    async fn cache_by_image() {
        let env = [
            ("FAKE_PROVIDER_CACHE_DURATION", "1m"),
            ("FAKE_PROVIDER_CACHE_KEY_TYPE", "Image"),
        ];
        let f = Fake::new("0s", &env, "");
        let t0 = Instant::now();
        f.get("x.azurecr.io", "a", t0).await;
        f.get("x.azurecr.io", "a", t0 + Duration::from_secs(30))
            .await;
        assert_eq!(f.calls(), 1);
        f.get("x.azurecr.io", "b", t0).await;
        assert_eq!(f.calls(), 2);
        f.get("x.azurecr.io", "a", t0 + Duration::from_secs(61))
            .await;
        assert_eq!(f.calls(), 3);
    }

    #[tokio::test]
    async fn cache_global_and_default_duration() {
        // No cacheDuration in the response: defaultCacheDuration (2m) applies.
        let f = Fake::new("2m", &[("FAKE_PROVIDER_CACHE_KEY_TYPE", "Global")], "");
        let t0 = Instant::now();
        assert_eq!(f.get("x.azurecr.io", "a", t0).await.0, vec![acr()]);
        // The cached "*.azurecr.io" answer serves another registry...
        assert_eq!(f.get("y.azurecr.io", "b", t0).await.0, vec![acr()]);
        // ...but its key must still match the image.
        assert!(f
            .get("registry.local:5000", "team/x", t0)
            .await
            .0
            .is_empty());
        assert_eq!(f.calls(), 1);
        f.get("y.azurecr.io", "b", t0 + Duration::from_secs(121))
            .await;
        assert_eq!(f.calls(), 2);
    }

    #[tokio::test]
    async fn zero_durations_disable_cache() {
        let f = Fake::new("0s", &[], "");
        let t0 = Instant::now();
        f.get("x.azurecr.io", "a", t0).await;
        f.get("x.azurecr.io", "a", t0).await;
        assert_eq!(f.calls(), 2, "defaultCacheDuration 0 and no cacheDuration");
        let f = Fake::new("1h", &[("FAKE_PROVIDER_CACHE_DURATION", "0s")], "");
        f.get("x.azurecr.io", "a", t0).await;
        f.get("x.azurecr.io", "a", t0).await;
        assert_eq!(f.calls(), 2, "explicit cacheDuration 0s");
    }

    #[tokio::test]
    async fn service_account_providers_are_skipped() {
        let extra = "  tokenAttributes:\n    serviceAccountTokenAudience: aud\n    requireServiceAccount: true\n";
        let f = Fake::new("0s", &[], extra);
        let (creds, errs) = f.get("x.azurecr.io", "a", Instant::now()).await;
        assert!(creds.is_empty() && errs.is_empty());
        assert_eq!(f.calls(), 0);
    }
}
