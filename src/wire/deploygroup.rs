//! The DeployGroup custom resource (`deploygroups.prewarm.dev/v1alpha1`):
//! an ordered list of Deployments the coordinator rolls out one at a time,
//! warming, validating and quiescing each before the next. The state machine
//! lives in [`crate::plan::deploy`]; these are only the wire types.
//!
//! The resource is namespaced and its members are Deployments in the same
//! namespace. All progress is kept in `status`, so a restarted coordinator
//! resumes where it stood.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

pub const GROUP: &str = "prewarm.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "prewarm.dev/v1alpha1";
pub const KIND: &str = "DeployGroup";
pub const PLURAL: &str = "deploygroups";

/// KEDA's annotation that freezes a ScaledObject at its current replica count.
pub const PAUSED_ANNOTATION: &str = "autoscaling.keda.sh/paused";
/// KEDA annotation that scales the target to a fixed count and pauses.
pub const PAUSED_REPLICAS_ANNOTATION: &str = "autoscaling.keda.sh/paused-replicas";

/// A DeployGroup object. Serializes with `apiVersion` and `kind`; both are
/// ignored when reading (the API server already routed by them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployGroup {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DeployGroupSpec,
    #[serde(default)]
    pub status: Option<DeployGroupStatus>,
}

impl DeployGroup {
    /// A new object named `name` with no status.
    pub fn new(name: &str, spec: DeployGroupSpec) -> DeployGroup {
        DeployGroup {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

impl Serialize for DeployGroup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            api_version: &'a str,
            kind: &'a str,
            metadata: &'a ObjectMeta,
            spec: &'a DeployGroupSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'a DeployGroupStatus>,
        }
        Wire {
            api_version: API_VERSION,
            kind: KIND,
            metadata: &self.metadata,
            spec: &self.spec,
            status: self.status.as_ref(),
        }
        .serialize(serializer)
    }
}

// Written by hand: the crate builds kube without its `derive` feature.
impl kube::Resource for DeployGroup {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(API_VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployGroupSpec {
    /// Members in deploy order.
    pub members: Vec<MemberSpec>,
    /// How long a member runs unpaused after validating before the next starts.
    #[serde(default = "default_quiesce")]
    pub quiesce: Dur,
    /// Longest wait for images to warm; the rollout then proceeds cold.
    #[serde(default = "default_warm_timeout")]
    pub warm_timeout: Dur,
    /// Longest wait for a rollout (and for a rollback) to complete.
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: Dur,
    /// Longest wait for readiness and the member's check to pass.
    #[serde(default = "default_validation_timeout")]
    pub validation_timeout: Dur,
    /// Roll a failed member back to its previous template.
    #[serde(default)]
    pub rollback: bool,
    /// ServiceAccount (of the group's namespace) every validation Job's pod
    /// runs as; a member's Job may not name another.
    #[serde(default = "default_validation_service_account")]
    pub validation_service_account: String,
}

fn default_quiesce() -> Dur {
    Dur::secs(60)
}
fn default_warm_timeout() -> Dur {
    Dur::secs(10 * 60)
}
fn default_rollout_timeout() -> Dur {
    Dur::secs(15 * 60)
}
fn default_validation_timeout() -> Dur {
    Dur::secs(5 * 60)
}
fn default_validation_service_account() -> String {
    "default".to_string()
}
fn default_check_interval() -> Dur {
    Dur::secs(5)
}

impl Default for DeployGroupSpec {
    fn default() -> DeployGroupSpec {
        DeployGroupSpec {
            members: Vec::new(),
            quiesce: default_quiesce(),
            warm_timeout: default_warm_timeout(),
            rollout_timeout: default_rollout_timeout(),
            validation_timeout: default_validation_timeout(),
            rollback: false,
            validation_service_account: default_validation_service_account(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberSpec {
    /// Deployment name, in the DeployGroup's namespace.
    pub deployment: String,
    /// ScaledObject to pause during the step; default: the ScaledObject whose
    /// `scaleTargetRef` names this Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_object: Option<String>,
    /// Replica count KEDA holds the Deployment at during the step
    /// (`autoscaling.keda.sh/paused-replicas`), so a service scaled to zero
    /// is validated on running pods; unset pauses KEDA at its current scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_check: Option<HttpCheck>,
    /// A batch/v1 JobSpec run as validation; it must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
}

/// `GET url` must answer 2xx; retried every `interval` until the
/// validation timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupPhase {
    /// No step running; every member is at its deployed template.
    #[default]
    Idle,
    Stepping,
    /// A step failed; later members wait for a fix.
    Halted,
    /// The spec (or a missing Deployment) prevents any progress.
    Invalid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    Warming,
    Rolling,
    Validating,
    Quiescing,
    RollingBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployGroupStatus {
    pub phase: GroupPhase,
    pub message: String,
    pub observed_generation: i64,
    /// Member → template hash last deployed successfully (or adopted).
    pub deployed: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepStatus>,
    /// Last result per member, one entry each, in member order.
    pub results: Vec<MemberResult>,
    /// Member whose failure halted the group. Kept while the phase is
    /// Invalid, so a halt survives a Deployment briefly going missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// ScaledObject kept paused by a halt whose rollback was impossible;
    /// resumed by the member's next step, or when the halt clears without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keda_held: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub member: String,
    pub template_hash: String,
    pub stage: Stage,
    #[serde(with = "rfc3339")]
    pub started: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub stage_started: DateTime<Utc>,
    /// ScaledObject this step paused (None: none found, or already paused
    /// by someone else, so not ours to resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keda_paused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// How long each finished stage took.
    #[serde(flatten)]
    pub timings: StageTimings,
    /// Validating: the last HTTP check failure (retried until the timeout).
    /// RollingBack: why the step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberResult {
    pub member: String,
    pub template_hash: String,
    pub result: Outcome,
    #[serde(default)]
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub started: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub finished: DateTime<Utc>,
    /// How long each finished stage took.
    #[serde(flatten)]
    pub timings: StageTimings,
}

/// Seconds each stage of a step took, for the stages done (flattened into
/// the step and the result: `warmSeconds`, `rollSeconds`,
/// `validateSeconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageTimings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_seconds: Option<f64>,
}

/// Why a DeployGroup cannot make progress, naming the member or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployGroupError {
    #[error("spec.members is empty; a DeployGroup needs at least one member")]
    NoMembers,
    #[error("member at position {position}: deployment name is empty")]
    EmptyName { position: usize },
    #[error(
        "member {member} appears at positions {first} and {second}; \
         a deploy order must name each Deployment once"
    )]
    Duplicate {
        member: String,
        first: usize,
        second: usize,
    },
    #[error("member {member}: httpCheck.url {url:?} must be an http or https URL with a host")]
    BadUrl { member: String, url: String },
    #[error("member {member}: set httpCheck or job, not both")]
    BothChecks { member: String },
    #[error("member {member}: job is not a valid batch/v1 JobSpec: {reason}")]
    BadJob { member: String, reason: String },
    #[error("member {member}: no Deployment {member} in this namespace")]
    MissingDeployment { member: String },
    #[error(
        "spec.validationServiceAccount {0:?} is not a ServiceAccount name \
         (lower case letters, digits, '-' and '.', at most 253)"
    )]
    BadServiceAccount(String),
    #[error(
        "member {member}: spec.members[{index}].job.template.spec.{field} is {found:?}; \
         validation Jobs run as spec.validationServiceAccount ({expected:?}): remove the \
         field or name that ServiceAccount there"
    )]
    JobServiceAccount {
        member: String,
        index: usize,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "member {member}: spec.members[{index}].job.template.metadata.namespace is set; \
         a validation Job always runs in the DeployGroup's namespace: remove the field"
    )]
    JobNamespace { member: String, index: usize },
}

/// Checks the spec alone (Deployments are checked by
/// [`crate::plan::deploy::decide`]).
/// Positions are 1-based.
pub fn validate(spec: &DeployGroupSpec) -> Result<(), DeployGroupError> {
    if spec.members.is_empty() {
        return Err(DeployGroupError::NoMembers);
    }
    let sa = &spec.validation_service_account;
    if !is_dns_subdomain(sa) {
        return Err(DeployGroupError::BadServiceAccount(sa.clone()));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in spec.members.iter().enumerate() {
        let name = m.deployment.as_str();
        if name.trim().is_empty() {
            return Err(DeployGroupError::EmptyName { position: i + 1 });
        }
        if let Some(first) = seen.insert(name, i + 1) {
            return Err(DeployGroupError::Duplicate {
                member: name.to_string(),
                first,
                second: i + 1,
            });
        }
        if m.http_check.is_some() && m.job.is_some() {
            return Err(DeployGroupError::BothChecks {
                member: name.to_string(),
            });
        }
        if let Some(check) = &m.http_check {
            let ok = url::Url::parse(&check.url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(DeployGroupError::BadUrl {
                    member: name.to_string(),
                    url: check.url.clone(),
                });
            }
        }
        if let Some(job) = &m.job {
            if let Err(reason) = check_job(job) {
                return Err(DeployGroupError::BadJob {
                    member: name.to_string(),
                    reason,
                });
            }
            check_job_identity(job, sa).map_err(|e| e.at(name, i))?;
        }
    }
    Ok(())
}

/// What in a member's Job would change who or where it runs.
enum JobIdentity {
    ServiceAccount {
        field: &'static str,
        found: String,
        expected: String,
    },
    Namespace,
}

impl JobIdentity {
    fn at(self, member: &str, index: usize) -> DeployGroupError {
        let member = member.to_string();
        match self {
            JobIdentity::ServiceAccount {
                field,
                found,
                expected,
            } => DeployGroupError::JobServiceAccount {
                member,
                index,
                field,
                found,
                expected,
            },
            JobIdentity::Namespace => DeployGroupError::JobNamespace { member, index },
        }
    }
}

/// The Job runs as the group's ServiceAccount in the group's namespace:
/// its template may not name another account (nor the deprecated
/// `serviceAccount` alias) or a namespace.
fn check_job_identity(job: &serde_json::Value, sa: &str) -> Result<(), JobIdentity> {
    let template = &job["template"];
    for field in ["serviceAccountName", "serviceAccount"] {
        match &template["spec"][field] {
            serde_json::Value::Null => {}
            // Empty is unset to the API server; the Job gets `sa`.
            v if v.as_str().is_some_and(|v| v.is_empty() || v == sa) => {}
            v => {
                let found = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                let expected = sa.to_string();
                return Err(JobIdentity::ServiceAccount {
                    field,
                    found,
                    expected,
                });
            }
        }
    }
    if !template["metadata"]["namespace"].is_null() {
        return Err(JobIdentity::Namespace);
    }
    Ok(())
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// A JobSpec the API server could accept: k8s-openapi defaults missing
/// required fields, so the pod template's containers are checked by hand.
fn check_job(job: &serde_json::Value) -> Result<(), String> {
    let spec: JobSpec = serde_json::from_value(job.clone()).map_err(|e| e.to_string())?;
    let containers = spec.template.spec.map(|s| s.containers).unwrap_or_default();
    if containers.is_empty() {
        return Err("template.spec.containers is empty".to_string());
    }
    Ok(())
}

impl DeployGroupStatus {
    /// One human-readable block for the CLI: phase and message, the step,
    /// then the last result of each member.
    pub fn summary(&self) -> String {
        let mut out = format!("{:?}: {}", self.phase, self.message);
        if let Some(s) = &self.step {
            out.push_str(&format!(
                "\n  step: {} template {} stage {} since {} (step started {})",
                s.member,
                s.template_hash,
                s.stage,
                secs(s.stage_started),
                secs(s.started)
            ));
            let t = s.timings.to_string();
            if !t.is_empty() {
                out.push_str(&format!(" [{t}]"));
            }
        }
        for r in &self.results {
            let (t, fin) = (r.timings.to_string(), secs(r.finished));
            out.push_str(&format!(
                "\n  {}: {:?} template {} at {fin}",
                r.member, r.result, r.template_hash
            ));
            if !r.reason.is_empty() {
                out.push_str(&format!(": {}", r.reason));
            }
            if !t.is_empty() {
                out.push_str(&format!(" [{t}]"));
            }
        }
        out
    }
}

/// A time as RFC 3339 in UTC, whole seconds.
fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl fmt::Display for StageTimings {
    /// "warm 1.0s, rollout 2.0s, validation 3.0s", for the stages done.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = [
            ("warm", self.warm_seconds),
            ("rollout", self.roll_seconds),
            ("validation", self.validate_seconds),
        ];
        let parts: Vec<String> = done
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.1}s")))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Warming => "warming",
            Stage::Rolling => "rolling out",
            Stage::Validating => "validating",
            Stage::Quiescing => "quiescing",
            Stage::RollingBack => "rolling back",
        })
    }
}

/// Hash identifying a pod template: sha256 of its JSON, first 10 hex chars.
///
/// Deterministic: k8s-openapi serializes struct fields in declaration order,
/// maps are `BTreeMap`s (sorted) and unset optional fields are omitted, so
/// equal templates give equal bytes. It changes when k8s-openapi adds fields
/// that are set, which only happens across upgrades of the API server.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut hex = hex::encode(Sha256::digest(&bytes));
    hex.truncate(10);
    hex
}

/// `#[serde(with = "rfc3339")]`: timestamps as RFC 3339 UTC strings, the way
/// Kubernetes writes them (chrono is built without its serde feature).
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| de::Error::custom(format!("invalid timestamp {text:?}: {e}")))
    }
}

/// A duration written as a string: `"90s"`, `"10m"`, `"1h30m"`, `"500ms"`,
/// `"1.5h"`. Displays the way Go does (`"5m0s"`, `"1h30m0s"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected numbers with units h, m, s or ms, \
     like \"90s\", \"10m\", \"1h\" or \"1h30m\""
)]
pub struct DurError(pub String);

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(s: &str) -> Result<Dur, DurError> {
        let bad = || DurError(s.to_string());
        let text = s.trim();
        if text == "0" {
            return Ok(Dur::default());
        }
        if text.is_empty() {
            return Err(bad());
        }
        let mut nanos: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (num, tail) = rest.split_at(num_len);
            let (unit_len, unit_nanos): (usize, u128) = if tail.starts_with("ms") {
                (2, 1_000_000)
            } else if tail.starts_with('h') {
                (1, 3_600_000_000_000)
            } else if tail.starts_with('m') {
                (1, 60_000_000_000)
            } else if tail.starts_with('s') {
                (1, 1_000_000_000)
            } else {
                return Err(bad());
            };
            let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
            if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
                return Err(bad());
            }
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            // Fraction digits beyond nanosecond precision are dropped.
            let digits = &frac[..frac.len().min(18)];
            let frac_val: u128 = if digits.is_empty() {
                0
            } else {
                digits.parse().map_err(|_| bad())?
            };
            let scale = 10u128.pow(digits.len() as u32);
            nanos = whole
                .checked_mul(unit_nanos)
                .and_then(|w| w.checked_add(frac_val * unit_nanos / scale))
                .and_then(|v| v.checked_add(nanos))
                .ok_or_else(bad)?;
            rest = &tail[unit_len..];
        }
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
        Ok(Dur(Duration::new(secs, (nanos % 1_000_000_000) as u32)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let (secs, sub) = (d.as_secs(), d.subsec_nanos());
        if secs == 0 && sub == 0 {
            return f.write_str("0s");
        }
        if secs == 0 && sub % 1_000_000 == 0 {
            return write!(f, "{}ms", sub / 1_000_000);
        }
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        if sub == 0 {
            write!(f, "{s}s")
        } else {
            let frac = format!("{sub:09}");
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "deploygroup_tests.rs"]
mod tests;
