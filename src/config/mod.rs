//! The node agent's configuration file: the `config.yaml` key of the
//! `prewarm-agent` ConfigMap, mounted at `/etc/prewarm/config.yaml`.
//!
//! Every section has defaults, so an empty file is a valid configuration.
//! Unknown keys are errors, and every error names the file and the YAML path
//! of the offending field (`agent.yaml: pacing.maxConcurrentPulls: …`).

pub mod dockerconfig;
mod error;
#[cfg(test)]
pub(crate) use error::rust_words;
pub mod images;
pub mod intents;
#[cfg(test)]
mod proptests;
pub mod reference;
pub mod units;
pub mod windows;

pub use error::{ConfigError, ConfigErrorKind, Position};
pub use images::{ImageEntry, ImageItem};
pub use intents::IntentLimits;
pub use reference::{Digest, DigestAlgorithm, DigestError, ImageRef, ReferenceError};
pub use units::{ByteSize, DiskFloor, Platform, PlatformError, UnitError};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent reads its configuration from inside the pod.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/prewarm/config.yaml";

/// The whole agent configuration.
///
/// Always-warm `images` and activation `windows` (see [`windows`]); both
/// image lists are validated as image references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of agent settings"
)]
pub struct AgentConfig {
    pub runtime: RuntimeConfig,
    pub registry: RegistryConfig,
    pub pacing: Pacing,
    /// Images kept warm at all times.
    pub images: Vec<ImageEntry>,
    /// How often the agent re-checks that every image is present.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// Defaults for activation windows.
    #[serde(skip_serializing_if = "windows::Scheduling::is_default")]
    pub scheduling: windows::Scheduling,
    /// Activation windows: images warmed ahead of recurring busy periods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<windows::Window>,
    /// Link to the coordinator; absent, the agent works on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorLink>,
    /// How long the coordinator's intents may last and how much they may pin.
    #[serde(skip_serializing_if = "IntentLimits::is_default")]
    pub intents: IntentLimits,
    /// Where the agent keeps what it learned across restarts.
    #[serde(skip_serializing_if = "StateConfig::is_default")]
    pub state: StateConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            runtime: RuntimeConfig::default(),
            registry: RegistryConfig::default(),
            pacing: Pacing::default(),
            images: Vec::new(),
            resync: Duration::from_secs(60),
            scheduling: windows::Scheduling::default(),
            windows: Vec::new(),
            coordinator: None,
            intents: IntentLimits::default(),
            state: StateConfig::default(),
        }
    }
}

/// Where the learned state file lives on the node.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/prewarm/learned.json";

/// The `state:` section: the file the agent keeps its learned throughput
/// and measurements in, so a restarted agent does not plan from defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of state settings"
)]
pub struct StateConfig {
    /// The file; `null` keeps nothing across restarts. Read at start only.
    pub path: Option<PathBuf>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: Some(PathBuf::from(DEFAULT_STATE_PATH)),
        }
    }
}

impl StateConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let field = format!("{at}.path");
        ensure(
            !path.as_os_str().is_empty(),
            field.clone(),
            "must not be empty (use null to keep no state)",
        )?;
        ensure(
            path.is_absolute(),
            field.clone(),
            "must be an absolute path",
        )?;
        let named =
            path.file_name().is_some() && !path.as_os_str().to_string_lossy().ends_with('/');
        ensure(named, field, "must name a file, not a directory")
    }
}

/// containerd's root when neither the config nor containerd names one.
pub const DEFAULT_CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// The containerd instance images are pulled into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of runtime settings"
)]
pub struct RuntimeConfig {
    /// containerd's gRPC socket; the CRI ImageService is served on it too.
    pub socket: PathBuf,
    /// containerd namespace; the kubelet's images live in `k8s.io`.
    pub namespace: String,
    /// containerd's root; the disk floor guards the filesystem holding it.
    /// Unset, it is asked from containerd (CRI status), else
    /// [`DEFAULT_CONTAINERD_ROOT`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The snapshotter the CRI plugin unpacks into. Unset, it is asked from
    /// containerd (CRI status), else [`DEFAULT_SNAPSHOTTER`]; set, it must
    /// match what containerd reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<String>,
}

/// containerd's default snapshotter on Linux.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            root: None,
            snapshotter: None,
        }
    }
}

/// How registries are reached and authenticated, mirroring the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of registry settings"
)]
pub struct RegistryConfig {
    /// Files in `kubernetes.io/dockerconfigjson` format; missing ones are skipped.
    pub docker_config: Vec<PathBuf>,
    /// Kubelet image credential provider plugins, if the node uses them.
    pub credential_provider: Option<CredentialProviderRef>,
    /// containerd `hosts.toml` directory (`config_path`); `null` disables it.
    pub hosts_dir: Option<PathBuf>,
    /// Platform to pull for; `None` means this node's.
    pub platform: Option<Platform>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            docker_config: vec![PathBuf::from("/var/lib/kubelet/config.json")],
            credential_provider: None,
            hosts_dir: Some(PathBuf::from("/etc/containerd/certs.d")),
            platform: None,
        }
    }
}

impl RegistryConfig {
    /// The configured platform, or this node's.
    pub fn effective_platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }
}

/// The same files the kubelet's `--image-credential-provider-*` flags name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping with config and binDir"
)]
pub struct CredentialProviderRef {
    /// `CredentialProviderConfig` file (`--image-credential-provider-config`).
    pub config: PathBuf,
    /// Plugin binaries (`--image-credential-provider-bin-dir`).
    pub bin_dir: PathBuf,
}

/// How hard the agent may lean on the node and the registries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of pacing settings"
)]
pub struct Pacing {
    /// Images pulled at the same time.
    pub max_concurrent_pulls: usize,
    /// Blob downloads in flight on the node (1..=64), granted in order.
    pub max_concurrent_blobs: usize,
    /// Node-wide download budget in bytes per second; 0 means unlimited.
    #[serde(with = "units::rate")]
    pub bandwidth: ByteSize,
    /// Free space to leave on the containerd filesystem.
    pub disk_floor: DiskFloor,
    pub retry: RetryPolicy,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            max_concurrent_pulls: 2,
            max_concurrent_blobs: 6,
            bandwidth: ByteSize::ZERO,
            disk_floor: DiskFloor::default(),
            retry: RetryPolicy::default(),
        }
    }
}

impl Pacing {
    /// The bandwidth cap, or `None` when unlimited.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        (!self.bandwidth.is_zero()).then_some(self.bandwidth.as_u64())
    }
}

/// Exponential backoff for failed pulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of retry settings"
)]
pub struct RetryPolicy {
    /// Tries per pull, the first one included.
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl AgentConfig {
    /// Parses and validates YAML text; errors carry no file name.
    pub fn from_yaml(text: &str) -> Result<AgentConfig, ConfigError> {
        // An empty document (or only comments, or `null`) means "all defaults".
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Option<AgentConfig> = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::from_yaml(e).located_in(text))?;
        let config = config.unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file; errors name the file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            kind: ConfigErrorKind::Io,
            file: Some(path.to_owned()),
            field: String::new(),
            message: format!("cannot read: {err}"),
            position: None,
            source: Some(err),
        })?;
        Self::from_yaml(&text).map_err(|err| err.with_file(path))
    }

    /// Checks what the types alone cannot; reports the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.runtime.validate("runtime")?;
        self.registry.validate("registry")?;
        self.pacing.validate("pacing")?;
        validate_images(&self.images, "images")?;
        ensure(
            !self.resync.is_zero(),
            "resync".into(),
            "must be greater than zero",
        )?;
        self.scheduling.validate("scheduling")?;
        if let Some(c) = &self.coordinator {
            c.validate("coordinator")?;
        }
        self.intents.validate("intents")?;
        self.state.validate("state")?;
        // The clock only anchors the "never fires" check on schedules.
        windows::validate_windows(&self.windows, "windows", chrono::Utc::now())
    }

    /// Pretty YAML for this configuration (parses back to the same value).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

/// Where the agent reports to and takes rollout intents from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping with endpoint, tokenFile, caFile and insecure"
)]
pub struct CoordinatorLink {
    /// gRPC endpoint, e.g. `https://prewarm-coordinator.prewarm-system.svc:8443`.
    pub endpoint: String,
    /// Projected ServiceAccount token with the coordinator's audience.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// CA of the coordinator's serving certificate (required for https).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allows a plain `http://` endpoint (local tests only): without it
    /// such an endpoint is refused, since the token would travel in clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

fn default_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/prewarm/token")
}

impl CoordinatorLink {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let scheme_ok =
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
        ensure(
            scheme_ok,
            format!("{at}.endpoint"),
            "must be an http:// or https:// URL",
        )?;
        if self.endpoint.starts_with("http://") && !self.insecure {
            return Err(ConfigError::invalid(
                format!("{at}.endpoint"),
                format!("{:?} is plain text, so the agent's service account token would cross the network in clear text: use an https:// endpoint (with {at}.caFile), or set {at}.insecure: true (local tests only)", self.endpoint),
            ));
        }
        ensure(
            !self.endpoint.starts_with("https://") || self.ca_file.is_some(),
            format!("{at}.caFile"),
            "is required for an https endpoint",
        )?;
        ensure(
            !self.token_file.as_os_str().is_empty(),
            format!("{at}.tokenFile"),
            "must not be empty",
        )
    }
}

/// `Ok` when `ok`, otherwise a validation error for `field`.
fn ensure(ok: bool, field: String, message: &str) -> Result<(), ConfigError> {
    match ok {
        true => Ok(()),
        false => Err(ConfigError::invalid(field, message)),
    }
}

impl RuntimeConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let absolute = "must be an absolute path";
        ensure(self.socket.is_absolute(), field("socket"), absolute)?;
        let root_ok = self.root.as_deref().is_none_or(Path::is_absolute);
        ensure(root_ok, field("root"), absolute)?;
        check_namespace(&self.namespace)
            .map_err(|msg| ConfigError::invalid(field("namespace"), msg))?;
        let named = self
            .snapshotter
            .as_deref()
            .is_none_or(|s| !s.trim().is_empty());
        ensure(named, field("snapshotter"), "must not be empty")
    }
}

/// containerd's namespace rule: alphanumeric labels joined by `.`, `_` or `-`, ≤ 76 chars.
fn check_namespace(ns: &str) -> Result<(), &'static str> {
    let labels_ok = ns
        .split(['.', '_', '-'])
        .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric()));
    match () {
        _ if ns.is_empty() => Err("must not be empty"),
        _ if ns.len() > 76 => Err("must be at most 76 characters"),
        _ if !labels_ok => {
            Err("must be letters and digits, optionally joined by single '.', '_' or '-'")
        }
        _ => Ok(()),
    }
}

impl RegistryConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let set = |p: &Path| !p.as_os_str().is_empty();
        let empty = "must not be empty";
        for (i, path) in self.docker_config.iter().enumerate() {
            ensure(set(path), format!("{at}.dockerConfig[{i}]"), empty)?;
        }
        if let Some(cp) = &self.credential_provider {
            ensure(
                set(&cp.config),
                format!("{at}.credentialProvider.config"),
                empty,
            )?;
            ensure(
                set(&cp.bin_dir),
                format!("{at}.credentialProvider.binDir"),
                empty,
            )?;
        }
        let hosts_ok = self.hosts_dir.as_deref().is_none_or(set);
        ensure(
            hosts_ok,
            format!("{at}.hostsDir"),
            "must not be empty (use null to disable)",
        )
    }
}

impl Pacing {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let pulls_ok = self.max_concurrent_pulls >= 1;
        ensure(pulls_ok, field("maxConcurrentPulls"), "must be at least 1")?;
        let blobs_ok = (1..=64).contains(&self.max_concurrent_blobs);
        ensure(
            blobs_ok,
            field("maxConcurrentBlobs"),
            "must be between 1 and 64",
        )?;
        let floor_ok = match self.disk_floor {
            DiskFloor::Percent(pct) => (0.0..100.0).contains(&pct),
            DiskFloor::Bytes(_) => true,
        };
        let floor_msg = "percentage must be at least 0% and below 100%";
        ensure(floor_ok, field("diskFloor"), floor_msg)?;
        let retry = &self.retry;
        ensure(
            retry.attempts >= 1,
            field("retry.attempts"),
            "must be at least 1",
        )?;
        let max = humantime::format_duration(retry.max_backoff);
        let backoff_msg = format!("must not exceed retry.maxBackoff ({max})");
        let backoff_ok = retry.initial_backoff <= retry.max_backoff;
        ensure(backoff_ok, field("retry.initialBackoff"), &backoff_msg)
    }
}

/// Rejects two entries naming the same image once normalized.
fn validate_images(images: &[ImageEntry], at: &str) -> Result<(), ConfigError> {
    for (i, entry) in images.iter().enumerate() {
        if let Some(first) = images[..i].iter().position(|e| e.image == entry.image) {
            let image = &entry.image;
            let message = format!("duplicate image \"{image}\" (same as {at}[{first}])");
            return Err(ConfigError::invalid(format!("{at}[{i}].image"), message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/config/", $name))
        };
    }

    fn parse_err(text: &str) -> ConfigError {
        match AgentConfig::from_yaml(text) {
            Ok(config) => panic!("parsed: {config:?}\n{text}"),
            Err(err) => err,
        }
    }

    #[test]
    fn example_file_parses() {
        let config = AgentConfig::from_yaml(include_str!("../../config/agent.example.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.images.is_empty());
        assert!(config.registry.credential_provider.is_some());
    }

    /// The ConfigMap shipped in daemonset/ must hold a valid configuration.
    #[test]
    fn daemonset_configmap_parses() {
        let manifest = include_str!("../../daemonset/agent-configmap.yaml");
        let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest).unwrap();
        let text = cm["data"]["config.yaml"]
            .as_str()
            .expect("data.config.yaml");
        let config = AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.pacing, Pacing::default());
        assert!(config.registry.credential_provider.is_some());
        assert!(config.coordinator.is_some(), "the default install links");
    }

    /// The examples meant to replace the ConfigMap's config.yaml keep the
    /// default install's link to the coordinator.
    #[test]
    fn examples_link_like_the_shipped_configmap() {
        let manifest = include_str!("../../daemonset/agent-configmap.yaml");
        let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest).unwrap();
        let shipped = AgentConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap())
            .unwrap()
            .coordinator;
        assert!(shipped.is_some());
        for (name, text) in [
            (
                "agent.example.yaml",
                include_str!("../../config/agent.example.yaml"),
            ),
            (
                "aks-integrations.yaml",
                include_str!("../../config/aks-integrations.yaml"),
            ),
        ] {
            let c = AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.coordinator, shipped, "{name}");
        }
    }

    /// A plain http:// link sends the agent's token in clear text: refused
    /// unless `insecure` says so; https is unaffected by it.
    #[test]
    fn a_plaintext_endpoint_needs_insecure() {
        let err = parse_err("coordinator: {endpoint: \"http://127.0.0.1:8443\"}\n");
        assert_eq!(err.field, "coordinator.endpoint", "{err}");
        assert!(
            err.to_string().contains("coordinator.insecure: true"),
            "{err}"
        );
        let ok = AgentConfig::from_yaml(
            "coordinator: {endpoint: \"http://127.0.0.1:8443\", insecure: true}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.coordinator.is_some_and(|c| c.insecure));
        let tls = "coordinator: {endpoint: \"https://c.svc:8443\", caFile: /ca.crt}\n";
        let c = AgentConfig::from_yaml(tls).unwrap().coordinator.unwrap();
        assert!(!c.insecure, "insecure is off by default");
    }

    #[test]
    fn empty_file_means_defaults() {
        for text in ["", "\n", "# nothing yet\n", "---\n", "{}", "~\n", "null"] {
            assert_eq!(
                AgentConfig::from_yaml(text).unwrap(),
                AgentConfig::default(),
                "{text:?}"
            );
        }
        AgentConfig::default().validate().unwrap();
    }

    /// `valid-full.yaml` sets every field; its normalized form is checked in.
    #[test]
    fn full_fixture_normalizes_and_round_trips() {
        let c =
            AgentConfig::from_yaml(fixture!("valid-full.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.to_yaml(), fixture!("valid-full.normalized.yaml"));
        assert_eq!(AgentConfig::from_yaml(&c.to_yaml()).unwrap(), c);
        assert_eq!(c.pacing.bandwidth_limit(), Some(100 << 20));
        assert_eq!(c.pacing.retry.max_backoff, Duration::from_secs(60));
        assert_eq!(c.registry.effective_platform().architecture, "arm64");
        let default = AgentConfig::default();
        assert_eq!(AgentConfig::from_yaml(&default.to_yaml()).unwrap(), default);
        assert_eq!(default.registry.effective_platform(), Platform::host());
    }

    /// Both image lists take plain references and `{image, pin}` mappings;
    /// a window's `pin` is the default for its entries.
    #[test]
    fn image_lists_take_references_or_mappings() {
        let text = "images:\n  - 127.0.0.1:5000/eval/base:1\n  - {image: nginx, pin: false}\n  - image: redis\n";
        let c = AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, bool)> = c
            .images
            .iter()
            .map(|e| (e.image.to_string(), e.pin))
            .collect();
        let want = [
            ("127.0.0.1:5000/eval/base:1", true),
            ("docker.io/library/nginx:latest", false),
            ("docker.io/library/redis:latest", true),
        ];
        assert_eq!(got, want.map(|(i, p)| (i.to_owned(), p)));
        let window = |pin: &str| {
            format!("windows:\n- {{name: a, schedule: '0 8 * * *', duration: 1h, {pin}images: [nginx, {{image: redis, pin: true}}, {{image: busybox, pin: false}}]}}\n")
        };
        for (pin, want) in [
            ("", [true, true, false]),
            ("pin: false, ", [false, true, false]),
        ] {
            let c = AgentConfig::from_yaml(&window(pin)).unwrap_or_else(|e| panic!("{e}"));
            let pins: Vec<bool> = c.windows[0].image_entries().map(|e| e.pin).collect();
            assert_eq!(pins, want, "{pin}");
            assert_eq!(AgentConfig::from_yaml(&c.to_yaml()).unwrap(), c);
        }
        let err = parse_err("windows:\n- {name: a, schedule: '0 8 * * *', duration: 1h, images: [nginx, {image: nginx}]}\n");
        assert_eq!(
            err.to_string(),
            r#"windows[0].images[1]: duplicate image "docker.io/library/nginx:latest" (same as images[0])"#
        );
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = AgentConfig::from_yaml("pacing: {maxConcurrentPulls: 4, diskFloor: 15%}").unwrap();
        let pacing = Pacing {
            max_concurrent_pulls: 4,
            disk_floor: DiskFloor::Percent(15.0),
            ..Pacing::default()
        };
        assert_eq!((c.pacing, c.runtime), (pacing, RuntimeConfig::default()));
        let c = AgentConfig::from_yaml("registry: {platform: null, hostsDir: null}").unwrap();
        assert_eq!((c.registry.platform, c.registry.hosts_dir), (None, None));
    }

    /// Each document in the fixture starts with `# expect: <error display>`;
    /// no message shows a Rust type name.
    #[test]
    fn invalid_fixtures_report_field_and_message() {
        let text = fixture!("invalid.yaml");
        let mut seen = 0;
        let mut wrong = Vec::new();
        for doc in text.split("\n---\n").filter(|d| d.contains("# expect: ")) {
            let expect = doc
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap();
            let got = parse_err(doc).to_string();
            if got != expect {
                wrong.push(format!("expect: {expect}\n   got: {got}"));
            }
            let leaked = error::rust_words(&got);
            assert!(leaked.is_empty(), "{got}: shows {leaked:?}");
            seen += 1;
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(seen >= 50, "only {seen} cases");
    }

    /// Found by the property tests: this error named neither a field nor
    /// a position.
    #[test]
    fn a_second_document_is_located() {
        let err = parse_err("images: []\n---\nresync: 5s\n");
        assert_eq!(
            err.to_string(),
            "line 2, column 1: a second YAML document starts here; the config is one document"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_err(fixture!("invalid-syntax.yaml"));
        assert!(error::rust_words(&err.to_string()).is_empty(), "{err}");
        assert_eq!(err.kind, ConfigErrorKind::Parse);
        assert_eq!(err.field, "");
        let pos = err.position.unwrap();
        assert_eq!((pos.line, pos.column), (4, 3), "{err}");
        assert!(err.to_string().starts_with("line 4, column 3: "), "{err}");
    }

    #[test]
    fn errors_expose_field_and_message() {
        let err = parse_err("images:\n  - image: nginx\n  - image: Foo/Bar\n");
        assert_eq!(err.kind, ConfigErrorKind::Parse);
        assert_eq!(err.field, "images[1].image");
        assert_eq!(
            err.message,
            r#"invalid image reference "Foo/Bar": repository must be lowercase"#
        );
        assert_eq!(err.position.map(|p| p.line), Some(3));
        let err = parse_err("pacing:\n  maxConcurrentPulls: 0\n");
        assert_eq!(
            (err.kind, err.field.as_str()),
            (ConfigErrorKind::Invalid, "pacing.maxConcurrentPulls")
        );
        assert_eq!(err.message, "must be at least 1");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let shown = path.display();
        std::fs::write(&path, "pacing:\n  maxConcurrentPulls: 0\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{shown}: pacing.maxConcurrentPulls: must be at least 1")
        );
        std::fs::write(&path, "pacing:\n  bandwidht: 1\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        let want = format!("{shown}: pacing.bandwidht: unknown field, expected one of");
        assert!(err.starts_with(&want), "{err}");
        std::fs::write(&path, fixture!("invalid-syntax.yaml")).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{shown}: line 4, column 3: ")),
            "{err}"
        );
        std::fs::write(&path, fixture!("valid-full.yaml")).unwrap();
        assert_eq!(
            AgentConfig::load(&path)
                .unwrap()
                .pacing
                .max_concurrent_pulls,
            3
        );
        let missing = dir.path().join("missing.yaml");
        let err = AgentConfig::load(&missing).unwrap_err();
        assert_eq!(err.kind, ConfigErrorKind::Io);
        assert!(std::error::Error::source(&err).is_some());
        let want = format!("{}: cannot read: ", missing.display());
        assert!(err.to_string().starts_with(&want), "{err}");
    }

    #[test]
    fn validation_of_built_configs() {
        let mut c = AgentConfig::default();
        c.pacing.disk_floor = DiskFloor::Percent(f64::NAN);
        assert_eq!(c.validate().unwrap_err().field, "pacing.diskFloor");
        let images = vec![
            ImageEntry::new("a".parse().unwrap()),
            ImageEntry::new("b".parse().unwrap()),
        ];
        let mut c = AgentConfig {
            images,
            ..AgentConfig::default()
        };
        c.validate().unwrap();
        c.images.push(ImageEntry {
            image: "docker.io/library/a:latest".parse().unwrap(),
            pin: false,
        });
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"images[2].image: duplicate image "docker.io/library/a:latest" (same as images[0])"#
        );
        assert_eq!(
            ConfigError::invalid("x", "y")
                .with_file("f.yaml")
                .to_string(),
            "f.yaml: x: y"
        );
    }
}
