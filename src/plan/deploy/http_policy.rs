//! Which `httpCheck` URLs the coordinator fetches.
//!
//! A check is a GET from the coordinator's network position, so whoever can
//! create a DeployGroup could otherwise make it reach anything the
//! coordinator can (cloud metadata, the API server, other namespaces'
//! admin ports). By default only in-cluster Service names are fetched:
//! `<x>.svc` and `<x>.svc.<cluster domain>`, over http or https, without
//! user info. IP literals are never fetched, in any spelling the URL parser
//! accepts (`127.0.0.1`, `2130706433`, `0x7f.1`, `[::1]`): the host is
//! judged as [`url::Url`] parses it, which is also how the HTTP client
//! reads the URL. Other host names need the operator's opt-in
//! (`--http-check-allow-host`). Redirects are not followed (the effector's
//! client), so an allowed host cannot bounce a check elsewhere.
//!
//! Pure: no resolution, no I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use url::{Host, Url};

use crate::wire::deploygroup::DeployGroupSpec;

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The coordinator flag that allows more check hosts.
pub const ALLOW_FLAG: &str = "--http-check-allow-host";

/// The hosts `httpCheck` URLs may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckPolicy {
    cluster_domain: String,
    allow: Vec<HostPattern>,
}

impl Default for HttpCheckPolicy {
    fn default() -> Self {
        HttpCheckPolicy {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            allow: Vec::new(),
        }
    }
}

/// An allowed host outside the cluster's Services: a name, or `*.suffix`
/// for every name below `suffix` (not `suffix` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Below(String),
}

/// Why a host name or pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a host name")]
    NotAName(String),
    #[error("{0:?} is an IP address; only host names can be allowed")]
    Ip(String),
    #[error("{0:?}: `*` may only start a pattern, as in *.example.com")]
    Wildcard(String),
}

/// Why a check URL is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("it is not a URL ({0})")]
    Unparsable(String),
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("it carries user info (user:password@); remove it")]
    Userinfo,
    #[error("it has no host")]
    NoHost,
    #[error("its host is the IP address {0}; name a Service (or a host allowed with {ALLOW_FLAG}) instead")]
    Ip(IpAddr),
    #[error(
        "host {host} is not an in-cluster Service name (<service>.<namespace>.svc or \
         <service>.<namespace>.svc.{domain}); the coordinator fetches other hosts only \
         when allowed with {ALLOW_FLAG}"
    )]
    NotInCluster { host: String, domain: String },
}

/// A member's check URL that is refused: names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member {member}: spec.members[{index}].httpCheck.url {url:?} is refused: {why}")]
pub struct RefusedCheck {
    pub member: String,
    /// 0-based, as in the field path.
    pub index: usize,
    pub url: String,
    pub why: UrlRefusal,
}

impl HttpCheckPolicy {
    /// In-cluster Services of `cluster_domain`, plus `allow`.
    pub fn new(cluster_domain: &str, allow: Vec<HostPattern>) -> Result<Self, NameError> {
        let cluster_domain = host_name(cluster_domain)?;
        Ok(HttpCheckPolicy {
            cluster_domain,
            allow,
        })
    }

    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// Whether `url` may be fetched as a check.
    pub fn check(&self, url: &str) -> Result<(), UrlRefusal> {
        let u = Url::parse(url).map_err(|e| UrlRefusal::Unparsable(e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(UrlRefusal::Scheme(u.scheme().to_string()));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(UrlRefusal::Userinfo);
        }
        let domain = match u.host() {
            None => return Err(UrlRefusal::NoHost),
            Some(Host::Ipv4(ip)) => return Err(UrlRefusal::Ip(ip.into())),
            Some(Host::Ipv6(ip)) => return Err(UrlRefusal::Ip(ip.into())),
            Some(Host::Domain(d)) => d,
        };
        // An absolute name (`orders.prod.svc.`) is the same host.
        let host = domain.strip_suffix('.').unwrap_or(domain);
        if host.is_empty() {
            return Err(UrlRefusal::NoHost);
        }
        let named = !host.split('.').any(str::is_empty);
        if named && (self.in_cluster(host) || self.allow.iter().any(|p| p.matches(host))) {
            return Ok(());
        }
        Err(UrlRefusal::NotInCluster {
            host: host.to_string(),
            domain: self.cluster_domain.clone(),
        })
    }

    /// The first member whose check URL is refused.
    pub fn check_spec(&self, spec: &DeployGroupSpec) -> Result<(), RefusedCheck> {
        for (index, m) in spec.members.iter().enumerate() {
            let Some(check) = &m.http_check else { continue };
            self.check(&check.url).map_err(|why| RefusedCheck {
                member: m.deployment.clone(),
                index,
                url: check.url.clone(),
                why,
            })?;
        }
        Ok(())
    }

    /// `<x>.svc` or `<x>.svc.<cluster domain>`, with a non-empty `<x>`.
    fn in_cluster(&self, host: &str) -> bool {
        let full = format!(".svc.{}", self.cluster_domain);
        [".svc", full.as_str()]
            .iter()
            .any(|s| host.len() > s.len() && host.ends_with(s))
    }
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|rest| !rest.is_empty()),
        }
    }
}

impl FromStr for HostPattern {
    type Err = NameError;

    fn from_str(s: &str) -> Result<HostPattern, NameError> {
        let text = s.trim();
        match text.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') => host_name(suffix)
                .map(HostPattern::Below)
                .map_err(|e| match e {
                    NameError::NotAName(_) => NameError::NotAName(text.to_string()),
                    other => other,
                }),
            _ if text.contains('*') => Err(NameError::Wildcard(text.to_string())),
            _ => host_name(text).map(HostPattern::Exact),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Below(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// `text` as the URL parser would spell it as a host: lower case,
/// punycode, without a trailing dot; IP addresses (in any spelling) and
/// anything with characters outside DNS names are refused.
pub fn host_name(text: &str) -> Result<String, NameError> {
    let text = text.trim();
    let not_a_name = || NameError::NotAName(text.to_string());
    let dns = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if text.is_empty() || !text.chars().all(|c| dns(c) || !c.is_ascii()) {
        return Err(not_a_name());
    }
    let parsed = Url::parse(&format!("http://{text}/")).map_err(|_| not_a_name())?;
    let domain = match parsed.host() {
        Some(Host::Domain(d)) => d.to_string(),
        Some(_) => return Err(NameError::Ip(text.to_string())),
        None => return Err(not_a_name()),
    };
    let name = domain.strip_suffix('.').unwrap_or(&domain).to_string();
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err(not_a_name());
    }
    Ok(name)
}

#[cfg(test)]
#[path = "http_policy_tests.rs"]
mod tests;
