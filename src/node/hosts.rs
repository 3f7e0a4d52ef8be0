//! containerd's registry host configuration (`[plugins."io.containerd.grpc.v1.cri".registry]
//! config_path`, e.g. `/etc/containerd/certs.d`), resolved the way
//! containerd's `remotes/docker/config.ConfigureHosts` does for a pull.
//!
//! Directory lookup for `host` under the root, first existing wins:
//! `<host>_<port>_` (port hosts only), `<host[:port]>`, `_default`.  A found
//! directory's `hosts.toml` lists `[host."<url>"]` entries (tried in file
//! order) and then the `server` (upstream).  Without `hosts.toml` the
//! directory's Docker-style `*.crt` / `*.cert` / `*.key` files apply to the
//! default server.  Mirrors (endpoints whose host differs from the upstream)
//! get `?ns=<upstream host>` on every request, see [`request_url`].
//!
//! Difference from containerd: an unparsable `hosts.toml` is an error here,
//! where containerd logs it and silently falls back to the certificate files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Spanned, Value};
use url::Url;

/// What an endpoint may be used for (containerd `HostCapabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve tags to digests.
    pub resolve: bool,
    pub push: bool,
}

impl Caps {
    pub const ALL: Caps = Caps {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// `client` entry: certificate plus optional separate key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
}

/// One endpoint to try for a registry, in containerd's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// `scheme://host[:port][/path]` as configured (no `/v2` added; see [`api_base`]).
    pub url: Url,
    pub capabilities: Caps,
    pub ca_files: Vec<PathBuf>,
    pub client_certs: Vec<ClientCert>,
    pub skip_verify: bool,
    /// Use the URL path verbatim instead of appending `/v2`.
    pub override_path: bool,
    pub headers: Vec<(String, String)>,
    /// Host differs from the upstream registry: requests carry `?ns=`.
    pub is_mirror: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid registry host {0:?}")]
    InvalidHost(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {context}: {message}")]
    Invalid {
        path: PathBuf,
        context: String,
        message: String,
    },
}

#[derive(Deserialize, Default)]
struct RawHost {
    capabilities: Option<Vec<String>>,
    ca: Option<Value>,
    client: Option<Value>,
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    header: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawHostsFile {
    server: Option<String>,
    #[serde(default)]
    host: BTreeMap<Spanned<String>, RawHost>,
    #[serde(flatten)]
    root: RawHost,
}

/// A parsed entry; `url: None` is the default server for the registry.
struct Entry {
    url: Option<Url>,
    capabilities: Caps,
    ca_files: Vec<PathBuf>,
    client_certs: Vec<ClientCert>,
    skip_verify: Option<bool>,
    override_path: bool,
    headers: Vec<(String, String)>,
}

impl Entry {
    fn default_server() -> Self {
        Entry {
            url: None,
            capabilities: Caps::ALL,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            skip_verify: None,
            override_path: false,
            headers: Vec::new(),
        }
    }
}

/// Endpoints for `host` (`name[:port]`, as in the image reference), in the
/// order containerd tries them. `config_dir: None` means no `config_path`.
pub fn resolve_hosts(
    config_dir: Option<&Path>,
    host: &str,
) -> Result<Vec<RegistryEndpoint>, HostsError> {
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(HostsError::InvalidHost(host.to_string()));
    }
    let entries = match config_dir.and_then(|root| find_host_dir(root, host)) {
        Some(dir) => load_host_dir(&dir)?,
        None => vec![Entry::default_server()],
    };
    entries
        .into_iter()
        .map(|e| finish(e, host))
        .collect::<Result<_, _>>()
}

/// Candidate directories for `host` under `root`, in lookup order.
pub fn host_dir_candidates(root: &Path, host: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some((name, port)) = host.rsplit_once(':').filter(|(n, _)| !n.is_empty()) {
        out.push(root.join(format!("{name}_{port}_")));
    }
    out.push(root.join(host));
    out.push(root.join("_default"));
    out
}

fn find_host_dir(root: &Path, host: &str) -> Option<PathBuf> {
    host_dir_candidates(root, host)
        .into_iter()
        .find(|d| d.is_dir())
}

fn load_host_dir(dir: &Path) -> Result<Vec<Entry>, HostsError> {
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse_hosts_toml(&text, dir, &file),
        Ok(_) => load_cert_files(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => load_cert_files(dir),
        Err(source) => Err(HostsError::Read { path: file, source }),
    }
}

/// Parses `hosts.toml`; relative `ca`/`client` paths resolve against `dir`.
fn parse_hosts_toml(text: &str, dir: &Path, file: &Path) -> Result<Vec<Entry>, HostsError> {
    let raw: RawHostsFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..at];
        HostsError::Toml {
            path: file.to_path_buf(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message: e.message().trim().to_string(),
        }
    })?;
    // `[host."…"]` tables in the order they appear in the file.
    let mut hosts: Vec<(Spanned<String>, RawHost)> = raw.host.into_iter().collect();
    hosts.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::new();
    for (key, h) in hosts {
        let context = format!("host {:?}", key.get_ref());
        out.push(entry(Some(key.get_ref()), h, dir, file, &context)?);
    }
    out.push(entry(raw.server.as_deref(), raw.root, dir, file, "server")?);
    Ok(out)
}

fn entry(
    server: Option<&str>,
    raw: RawHost,
    dir: &Path,
    file: &Path,
    context: &str,
) -> Result<Entry, HostsError> {
    let invalid = |message: String| HostsError::Invalid {
        path: file.to_path_buf(),
        context: context.to_string(),
        message,
    };
    let url = match server.filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_server(s).map_err(invalid)?),
        None => None,
    };
    let capabilities = match raw.capabilities.filter(|c| !c.is_empty()) {
        None => Caps::ALL,
        Some(list) => {
            let mut caps = Caps {
                pull: false,
                resolve: false,
                push: false,
            };
            for c in list {
                match c.to_ascii_lowercase().as_str() {
                    "pull" => caps.pull = true,
                    "resolve" => caps.resolve = true,
                    "push" => caps.push = true,
                    _ => return Err(invalid(format!("unknown capability {c:?}"))),
                }
            }
            caps
        }
    };
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let ca_files = match raw.ca {
        None => Vec::new(),
        Some(Value::String(s)) => vec![abs(&s)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(abs))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("\"ca\" must be a path or a list of paths".into()))?,
        Some(_) => return Err(invalid("\"ca\" must be a path or a list of paths".into())),
    };
    let client_err =
        || invalid("\"client\" must be a path, or a list of paths or [cert, key] pairs".into());
    let client_certs = match raw.client {
        None => Vec::new(),
        Some(Value::String(s)) => vec![ClientCert {
            cert: abs(&s),
            key: None,
        }],
        Some(Value::Array(items)) => {
            let mut certs = Vec::new();
            for item in &items {
                certs.push(match item {
                    Value::String(s) => ClientCert {
                        cert: abs(s),
                        key: None,
                    },
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::String(c), Value::String(k)] => ClientCert {
                            cert: abs(c),
                            key: Some(abs(k)),
                        },
                        _ => return Err(client_err()),
                    },
                    _ => return Err(client_err()),
                });
            }
            certs
        }
        Some(_) => return Err(client_err()),
    };
    let mut headers = Vec::new();
    for (name, value) in raw.header.unwrap_or_default() {
        let bad = || {
            invalid(format!(
                "header {name:?} must be a string or a list of strings"
            ))
        };
        match value {
            Value::String(v) => headers.push((name.clone(), v)),
            Value::Array(vs) => {
                for v in vs {
                    headers.push((name.clone(), v.as_str().ok_or_else(bad)?.to_string()));
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(Entry {
        url,
        capabilities,
        ca_files,
        client_certs,
        skip_verify: raw.skip_verify,
        override_path: raw.override_path,
        headers,
    })
}

/// `server` / `[host."…"]` value: `https://` assumed without a scheme, path
/// cleaned (containerd `path.Clean`).
fn parse_server(s: &str) -> Result<Url, String> {
    let with_scheme = if s.starts_with("http") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("invalid URL {s:?}: need http(s)://host"));
    }
    let cleaned: Vec<&str> = url.path().split('/').filter(|p| !p.is_empty()).collect();
    url.set_path(&format!("/{}", cleaned.join("/")));
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Docker-style certificate files: `*.crt` CAs, `*.cert` with optional `*.key`.
fn load_cert_files(dir: &Path) -> Result<Vec<Entry>, HostsError> {
    let read_err = |source| HostsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    let mut entry = Entry::default_server();
    for name in &names {
        if name.ends_with(".crt") {
            entry.ca_files.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            entry.client_certs.push(ClientCert {
                cert: dir.join(name),
                key: key.is_file().then_some(key),
            });
        }
    }
    Ok(vec![entry])
}

/// Fills in the default server and the mirror flag.
fn finish(e: Entry, host: &str) -> Result<RegistryEndpoint, HostsError> {
    let mut skip_verify = e.skip_verify.unwrap_or(false);
    let url = match e.url {
        Some(u) => u,
        None => {
            let (scheme, authority) = if host == "docker.io" {
                ("https", "registry-1.docker.io")
            } else if is_localhost(host) {
                // containerd's CRI: plain HTTP (and no TLS verification) for loopback.
                skip_verify = e.skip_verify.unwrap_or(true);
                ("http", host)
            } else {
                ("https", host)
            };
            Url::parse(&format!("{scheme}://{authority}"))
                .map_err(|_| HostsError::InvalidHost(host.to_string()))?
        }
    };
    let is_mirror = is_proxy(&authority(&url), host);
    Ok(RegistryEndpoint {
        url,
        capabilities: e.capabilities,
        ca_files: e.ca_files,
        client_certs: e.client_certs,
        skip_verify,
        override_path: e.override_path,
        headers: e.headers,
        is_mirror,
    })
}

/// `host[:port]` of a URL.
fn authority(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// containerd `isProxy`: another host serves the upstream's content
/// (Docker Hub's own `registry-1.docker.io` is not a mirror of `docker.io`).
fn is_proxy(endpoint_host: &str, upstream: &str) -> bool {
    endpoint_host != upstream
        && !(upstream == "docker.io" && endpoint_host == "registry-1.docker.io")
}

/// `localhost`, or a loopback IP, with or without port.
pub fn is_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((n, _)) if !n.contains(':') => n,
            _ => host,
        },
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// API root requests are made under: the endpoint URL plus `/v2`, unless
/// `override_path` is set or the path already ends in `/v2`.
pub fn api_base(ep: &RegistryEndpoint) -> Url {
    let mut url = ep.url.clone();
    let path = url.path().trim_end_matches('/').to_string();
    if !ep.override_path && !path.ends_with("/v2") {
        url.set_path(&format!("{path}/v2"));
    }
    url
}

/// Full request URL, e.g. `tail = "manifests/latest"`: `<api_base>/<repository>/<tail>`,
/// plus `?ns=<upstream_host>` on mirrors as containerd sends it.
pub fn request_url(
    ep: &RegistryEndpoint,
    upstream_host: &str,
    repository: &str,
    tail: &str,
) -> Url {
    let mut url = api_base(ep);
    let mut path = url.path().trim_end_matches('/').to_string();
    for part in [repository, tail] {
        let part = part.trim_matches('/');
        if !part.is_empty() {
            path.push('/');
            path.push_str(part);
        }
    }
    url.set_path(&path);
    if ep.is_mirror {
        url.query_pairs_mut().append_pair("ns", upstream_host);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn urls(eps: &[RegistryEndpoint]) -> Vec<String> {
        eps.iter().map(|e| e.url.to_string()).collect()
    }

    #[test]
    fn defaults_without_config() {
        let eps = resolve_hosts(None, "myacr.azurecr.io").expect("resolve");
        assert_eq!(urls(&eps), vec!["https://myacr.azurecr.io/"]);
        assert_eq!(
            (eps[0].capabilities, eps[0].is_mirror, eps[0].skip_verify),
            (Caps::ALL, false, false)
        );
        let hub = resolve_hosts(None, "docker.io").expect("resolve");
        assert_eq!(urls(&hub), vec!["https://registry-1.docker.io/"]);
        assert!(!hub[0].is_mirror);
        for local in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
        ] {
            let eps = resolve_hosts(None, local).expect("resolve");
            assert_eq!(eps[0].url.scheme(), "http", "{local}");
            assert!(eps[0].skip_verify && !eps[0].is_mirror, "{local}");
        }
        assert!(resolve_hosts(None, "").is_err());
        assert!(resolve_hosts(None, "a/b").is_err());
    }

    #[test]
    fn hosts_toml_order_and_fields() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "docker.io/hosts.toml",
            r#"
server = "https://registry-1.docker.io"

[host."https://zz-mirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.pem"
  client = [["client.cert", "/abs/client.key"], "combined.pem"]
  [host."https://zz-mirror.example.com".header]
    x-custom = "1"
    x-multi = ["a", "b"]

[host."http://aa-cache.local:8080/prefix/v2/"]
  capabilities = ["pull"]
  ca = ["/etc/ca1.pem", "ca2.pem"]
  skip_verify = true
  override_path = true
"#,
        );
        let dir = root.path().join("docker.io");
        let eps = resolve_hosts(Some(root.path()), "docker.io").expect("resolve");
        assert_eq!(
            urls(&eps),
            vec![
                "https://zz-mirror.example.com/",
                "http://aa-cache.local:8080/prefix/v2",
                "https://registry-1.docker.io/"
            ]
        );
        let m = &eps[0];
        let caps = Caps {
            pull: true,
            resolve: true,
            push: false,
        };
        assert_eq!(
            (m.capabilities, m.is_mirror, m.skip_verify),
            (caps, true, false)
        );
        assert_eq!(m.ca_files, vec![dir.join("mirror-ca.pem")]);
        assert_eq!(
            m.client_certs,
            vec![
                ClientCert {
                    cert: dir.join("client.cert"),
                    key: Some("/abs/client.key".into())
                },
                ClientCert {
                    cert: dir.join("combined.pem"),
                    key: None
                },
            ]
        );
        let hdrs = vec![
            ("x-custom".into(), "1".into()),
            ("x-multi".into(), "a".into()),
            ("x-multi".into(), "b".into()),
        ];
        assert_eq!(m.headers, hdrs);
        let c = &eps[1];
        assert_eq!(
            c.capabilities,
            Caps {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(
            c.ca_files,
            vec![PathBuf::from("/etc/ca1.pem"), dir.join("ca2.pem")]
        );
        assert!(c.skip_verify && c.override_path && c.is_mirror);
        let s = &eps[2];
        assert_eq!((s.capabilities, s.is_mirror), (Caps::ALL, false));
    }

    #[test]
    fn server_omitted_gets_default_and_root_settings() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "_default/hosts.toml",
            "ca = \"root.pem\"\n[host.\"mirror.local:5000\"]\n",
        );
        let eps = resolve_hosts(Some(root.path()), "quay.io").expect("resolve");
        assert_eq!(
            urls(&eps),
            vec!["https://mirror.local:5000/", "https://quay.io/"]
        );
        assert!(eps[0].is_mirror && !eps[1].is_mirror);
        assert_eq!(eps[1].ca_files, vec![root.path().join("_default/root.pem")]);
    }

    #[test]
    fn host_directory_names() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "127.0.0.1:5000/hosts.toml",
            "server = \"http://127.0.0.1:5000\"\n[host.\"http://colon\"]\n",
        );
        let eps = resolve_hosts(Some(root.path()), "127.0.0.1:5000").expect("resolve");
        assert_eq!(eps[0].url.as_str(), "http://colon/");
        assert_eq!(eps[1].url.as_str(), "http://127.0.0.1:5000/");
        assert!(!eps[1].is_mirror);
        // The `_port_` spelling wins over `:port`.
        write(
            root.path(),
            "127.0.0.1_5000_/hosts.toml",
            "[host.\"http://underscore\"]\n",
        );
        let eps = resolve_hosts(Some(root.path()), "127.0.0.1:5000").expect("resolve");
        assert_eq!(eps[0].url.as_str(), "http://underscore/");
        assert_eq!(eps[1].url.as_str(), "http://127.0.0.1:5000/");
        // No host dir and no _default: the plain default server.
        let eps = resolve_hosts(Some(root.path()), "ghcr.io").expect("resolve");
        assert_eq!(urls(&eps), vec!["https://ghcr.io/"]);
        assert_eq!(
            host_dir_candidates(Path::new("/c"), "h:1"),
            vec![
                PathBuf::from("/c/h_1_"),
                PathBuf::from("/c/h:1"),
                PathBuf::from("/c/_default")
            ]
        );
    }

    #[test]
    fn docker_style_cert_dir_without_hosts_toml() {
        let root = tempfile::tempdir().expect("tempdir");
        for f in [
            "ca.crt",
            "client.cert",
            "client.key",
            "other.cert",
            "readme.txt",
        ] {
            write(root.path(), &format!("registry.local/{f}"), "x");
        }
        let dir = root.path().join("registry.local");
        let eps = resolve_hosts(Some(root.path()), "registry.local").expect("resolve");
        assert_eq!(urls(&eps), vec!["https://registry.local/"]);
        assert_eq!(eps[0].ca_files, vec![dir.join("ca.crt")]);
        assert_eq!(
            eps[0].client_certs,
            vec![
                ClientCert {
                    cert: dir.join("client.cert"),
                    key: Some(dir.join("client.key"))
                },
                ClientCert {
                    cert: dir.join("other.cert"),
                    key: None
                },
            ]
        );
    }

    #[test]
    fn errors_name_file_line_and_host() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "bad.io/hosts.toml",
            "server = \"https://bad.io\"\n\n[host.\"https://m\"\ncapabilities = [\"pull\"]\n",
        );
        let err = resolve_hosts(Some(root.path()), "bad.io").expect_err("bad toml");
        let HostsError::Toml { path, line, .. } = &err else {
            panic!("{err}")
        };
        assert!(path.ends_with("bad.io/hosts.toml") && *line == 3, "{err}");
        assert!(err.to_string().contains("hosts.toml:3:"), "{err}");

        write(
            root.path(),
            "cap.io/hosts.toml",
            "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fly\"]\n",
        );
        let err = resolve_hosts(Some(root.path()), "cap.io").expect_err("bad capability");
        let text = err.to_string();
        assert!(
            text.contains("cap.io/hosts.toml")
                && text.contains("https://m")
                && text.contains("fly"),
            "{text}"
        );

        write(root.path(), "ca.io/hosts.toml", "ca = 5\n");
        let err = resolve_hosts(Some(root.path()), "ca.io").expect_err("bad ca");
        assert!(err.to_string().contains("server: \"ca\""), "{err}");

        write(root.path(), "hdr.io/hosts.toml", "[header]\nx = 1\n");
        assert!(resolve_hosts(Some(root.path()), "hdr.io").is_err());
    }

    #[test]
    fn api_base_and_request_urls() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "docker.io/hosts.toml",
            r#"
[host."https://mirror.example.com/cache"]
[host."https://art.example.com/api/docker/hub"]
  override_path = true
[host."https://already.example.com/v2"]
"#,
        );
        let eps = resolve_hosts(Some(root.path()), "docker.io").expect("resolve");
        let bases: Vec<String> = eps.iter().map(|e| api_base(e).to_string()).collect();
        assert_eq!(
            bases,
            vec![
                "https://mirror.example.com/cache/v2",
                "https://art.example.com/api/docker/hub",
                "https://already.example.com/v2",
                "https://registry-1.docker.io/v2",
            ]
        );
        let u = request_url(&eps[0], "docker.io", "library/nginx", "manifests/1.27");
        assert_eq!(
            u.as_str(),
            "https://mirror.example.com/cache/v2/library/nginx/manifests/1.27?ns=docker.io"
        );
        let u = request_url(&eps[3], "docker.io", "library/nginx", "/blobs/sha256:ab/");
        assert_eq!(
            u.as_str(),
            "https://registry-1.docker.io/v2/library/nginx/blobs/sha256:ab"
        );
        assert!(is_localhost("127.1.2.3:80") && !is_localhost("localhost.example.com"));
    }
}
