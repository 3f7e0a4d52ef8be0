//! KEDA cron triggers as activation windows, so a KEDA-scaled service's
//! schedule is written once, in its `ScaledObject`.
//!
//! Pure: a ScaledObject (the few fields read here) and its target's pod
//! template become [`WindowSpec`]s, one per usable `cron` trigger:
//! - `schedule` = the trigger's `start`, `end_schedule` = its `end`, both
//!   read in its `timezone`, so an occurrence ends at the first `end` after
//!   its start and follows daylight saving time as KEDA does (a 22:00 start
//!   with a 06:00 end runs overnight);
//! - `images` = the template's containers' and initContainers' images;
//!   `node_selector` = the template's `nodeSelector` (the coordinator also
//!   checks the rest of eligibility before sending a window to a node);
//! - lead time and priority from the ScaledObject's annotations
//!   [`LEAD_TIME_ANNOTATION`] and [`PRIORITY_ANNOTATION`], else the
//!   coordinator's defaults;
//! - name `keda-<namespace>-<name>-<trigger index>` (a DNS label, shortened
//!   with a hash when longer than 63), source
//!   `keda:<namespace>/<name>#<trigger index>`.
//!
//! A trigger that is not `cron` is ignored; a cron trigger with
//! `desiredReplicas` 0 (it scales nothing up, so nothing must be warm) or
//! bad metadata is skipped with a reason naming the ScaledObject, the
//! trigger and the field. Nothing here panics on any input.
//!
//! On the agent, [`merge_windows`] puts the coordinator's windows next to
//! the ConfigMap's, which win on conflict.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::config::windows::{parse_timezone, validate_windows, Schedule, Window};
use crate::config::{ConfigError, ImageItem, ImageRef};
use crate::wire::v1::WindowSpec;

/// Annotation on a ScaledObject: how long before each start warming begins
/// at the least (`10m`, `1h30m`).
pub const LEAD_TIME_ANNOTATION: &str = "prewarm.dev/lead-time";
/// Annotation on a ScaledObject: the windows' priority (an integer; higher
/// is warmed first).
pub const PRIORITY_ANNOTATION: &str = "prewarm.dev/priority";

/// The ScaledObject fields this module reads (`keda.sh/v1alpha1`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ScaledObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ScaledObjectSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    #[serde(default)]
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default)]
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default)]
    pub api_version: Option<String>,
    /// KEDA's default is Deployment.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Trigger {
    #[serde(rename = "type", default)]
    pub kind: String,
    /// KEDA's metadata values are strings; numbers are accepted too.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

/// The kinds of workload a window can be derived for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        }
    }
}

/// The workload a ScaledObject scales: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetRef {
    pub kind: TargetKind,
    pub namespace: String,
    pub name: String,
}

/// A cron trigger's metadata, parsed as KEDA reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct CronTrigger {
    pub timezone: chrono_tz::Tz,
    pub start: Schedule,
    pub end: Schedule,
    pub desired_replicas: u64,
}

/// Why a trigger's metadata is unusable: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata.{field}: {message}")]
pub struct MetadataError {
    pub field: &'static str,
    pub message: String,
}

/// A trigger (or a whole ScaledObject, `trigger` None) that gives no window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `namespace/name`.
    pub scaled_object: String,
    pub trigger: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trigger {
            Some(i) => write!(
                f,
                "ScaledObject {} triggers[{i}]: {}",
                self.scaled_object, self.reason
            ),
            None => write!(f, "ScaledObject {}: {}", self.scaled_object, self.reason),
        }
    }
}

/// What the coordinator uses when a ScaledObject does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaDefaults {
    pub lead_time: Duration,
    pub priority: i64,
}

impl Default for KedaDefaults {
    fn default() -> Self {
        Self {
            lead_time: Duration::from_secs(10 * 60),
            priority: 0,
        }
    }
}

/// `namespace/name` of an object.
fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A metadata value as text (KEDA writes strings; YAML may give numbers).
fn text(meta: &BTreeMap<String, Value>, field: &'static str) -> Result<String, MetadataError> {
    let err = |message: &str| MetadataError {
        field,
        message: message.to_string(),
    };
    match meta.get(field) {
        None | Some(Value::Null) => Err(err("missing (required by KEDA's cron scaler)")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(err("must not be empty")),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(err("must be a string")),
    }
}

/// A 5-field cron, as KEDA's cron scaler takes (Minute Hour Dom Month Dow).
fn cron(meta: &BTreeMap<String, Value>, field: &'static str) -> Result<Schedule, MetadataError> {
    let s = text(meta, field)?;
    let fields = s.split_whitespace().count();
    if fields != 5 {
        return Err(MetadataError {
            field,
            message: format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {fields}"
            ),
        });
    }
    s.parse()
        .map_err(|e: crate::config::windows::ScheduleError| MetadataError {
            field,
            message: e.to_string(),
        })
}

/// Parses a cron trigger's metadata: `timezone` (IANA), `start` and `end`
/// (5-field cron, not equal) and `desiredReplicas` (a non-negative
/// integer), all required as in KEDA.
pub fn parse_cron(meta: &BTreeMap<String, Value>) -> Result<CronTrigger, MetadataError> {
    let tz = text(meta, "timezone")?;
    let timezone = parse_timezone(&tz).map_err(|message| MetadataError {
        field: "timezone",
        message,
    })?;
    let start = cron(meta, "start")?;
    let end = cron(meta, "end")?;
    if start
        .as_str()
        .split_whitespace()
        .eq(end.as_str().split_whitespace())
    {
        return Err(MetadataError {
            field: "end",
            message: "must differ from start (KEDA rejects equal start and end)".into(),
        });
    }
    let replicas = text(meta, "desiredReplicas")?;
    let desired_replicas = replicas.parse::<u64>().map_err(|_| MetadataError {
        field: "desiredReplicas",
        message: format!("must be a non-negative integer, got \"{replicas}\""),
    })?;
    Ok(CronTrigger {
        timezone,
        start,
        end,
        desired_replicas,
    })
}

/// The workload `so` scales (kind defaults to Deployment, as in KEDA).
pub fn target_of(so: &ScaledObject) -> Result<TargetRef, Skipped> {
    let skip = |reason: String| Skipped {
        scaled_object: key(&so.metadata),
        trigger: None,
        reason,
    };
    let t = &so.spec.scale_target_ref;
    if t.name.is_empty() {
        return Err(skip("spec.scaleTargetRef.name: missing".into()));
    }
    let kind = match t.kind.as_deref().unwrap_or("Deployment") {
        "Deployment" => TargetKind::Deployment,
        "StatefulSet" => TargetKind::StatefulSet,
        other => {
            return Err(skip(format!(
                "spec.scaleTargetRef.kind: {other} is not supported (Deployment or StatefulSet)"
            )))
        }
    };
    Ok(TargetRef {
        kind,
        namespace: so.metadata.namespace.clone().unwrap_or_default(),
        name: t.name.clone(),
    })
}

/// Images of a pod template: containers, then initContainers, each once.
pub fn template_images(spec: &PodSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let init = spec.init_containers.iter().flatten();
    for image in spec
        .containers
        .iter()
        .chain(init)
        .filter_map(|c| c.image.as_ref())
    {
        if !image.is_empty() && !out.contains(image) {
            out.push(image.clone());
        }
    }
    out
}

/// The window name of trigger `index` of `namespace/name`: a DNS label.
pub fn window_name(namespace: &str, name: &str, index: usize) -> String {
    let raw = format!("keda-{namespace}-{name}-{index}");
    let clean: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if clean.len() <= crate::config::windows::NAME_MAX_LEN {
        return clean;
    }
    // Long: a prefix, then a hash of the whole so names stay distinct.
    let hash = crate::plan::rollout::images_hash(&[raw]);
    let prefix = clean[..crate::config::windows::NAME_MAX_LEN - 9].trim_end_matches('-');
    format!("{prefix}-{}", &hash[..8.min(hash.len())])
}

/// Lead time and priority from the annotations, else the defaults.
fn annotations(so: &ScaledObject, d: &KedaDefaults) -> Result<(Duration, i64), String> {
    let notes = so.metadata.annotations.as_ref();
    let get = |k: &str| notes.and_then(|a| a.get(k)).map(|v| v.trim().to_string());
    let lead = match get(LEAD_TIME_ANNOTATION) {
        None => d.lead_time,
        Some(v) => humantime::parse_duration(&v).map_err(|e| {
            format!(
                "annotation {LEAD_TIME_ANNOTATION}: \"{v}\" is not a duration such as 10m ({e})"
            )
        })?,
    };
    let priority = match get(PRIORITY_ANNOTATION) {
        None => d.priority,
        Some(v) => v
            .parse::<i32>()
            .map(i64::from)
            .map_err(|_| format!("annotation {PRIORITY_ANNOTATION}: \"{v}\" is not an integer"))?,
    };
    Ok((lead, priority))
}

/// The windows `so`'s cron triggers imply for a target whose pod template
/// is `template`, and the triggers skipped with why.
pub fn windows_of(
    so: &ScaledObject,
    template: &PodSpec,
    d: &KedaDefaults,
) -> (Vec<WindowSpec>, Vec<Skipped>) {
    let so_key = key(&so.metadata);
    let skip = |trigger, reason: String| Skipped {
        scaled_object: so_key.clone(),
        trigger,
        reason,
    };
    let (lead, priority) = match annotations(so, d) {
        Ok(v) => v,
        Err(reason) => return (Vec::new(), vec![skip(None, reason)]),
    };
    let images = template_images(template);
    if images.is_empty() {
        let reason = "its target's pod template names no image".to_string();
        return (Vec::new(), vec![skip(None, reason)]);
    }
    let ns = so.metadata.namespace.as_deref().unwrap_or_default();
    let name = so.metadata.name.as_deref().unwrap_or_default();
    let mut windows = Vec::new();
    let mut skipped = Vec::new();
    for (i, t) in so.spec.triggers.iter().enumerate() {
        if t.kind != "cron" {
            continue;
        }
        let cron = match parse_cron(&t.metadata) {
            Ok(c) => c,
            Err(e) => {
                skipped.push(skip(Some(i), e.to_string()));
                continue;
            }
        };
        if cron.desired_replicas == 0 {
            let reason = "metadata.desiredReplicas is 0: it scales nothing up".to_string();
            skipped.push(skip(Some(i), reason));
            continue;
        }
        windows.push(WindowSpec {
            name: window_name(ns, name, i),
            schedule: cron.start.to_string(),
            timezone: cron.timezone.name().to_string(),
            end_schedule: cron.end.to_string(),
            duration_seconds: 0,
            images: images.clone(),
            priority,
            source: format!("keda:{ns}/{name}#{i}"),
            lead_time_seconds: lead.as_secs().min(i64::MAX as u64) as i64,
            node_selector: template
                .node_selector
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        });
    }
    (windows, skipped)
}

/// A received window as the planner's [`Window`], validated like a
/// ConfigMap window (`at` names it in errors, e.g. `windows[keda:ns/x#0]`).
pub fn window_from_spec(
    spec: &WindowSpec,
    at: &str,
    now: DateTime<Utc>,
) -> Result<Window, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let bad = |f: &str, m: String| ConfigError::invalid(field(f), m);
    let schedule: Schedule = spec
        .schedule
        .parse()
        .map_err(|e: crate::config::windows::ScheduleError| bad("schedule", e.to_string()))?;
    let timezone = match spec.timezone.as_str() {
        "" => chrono_tz::Tz::UTC,
        tz => parse_timezone(tz).map_err(|m| bad("timezone", m))?,
    };
    let end = match spec.end_schedule.as_str() {
        "" => None,
        s => Some(
            s.parse()
                .map_err(|e: crate::config::windows::ScheduleError| bad("end", e.to_string()))?,
        ),
    };
    let duration = match spec.duration_seconds {
        0 => None,
        s if s < 0 => return Err(bad("duration", "must be greater than 0".into())),
        s => Some(Duration::from_secs(s as u64)),
    };
    let mut images = Vec::with_capacity(spec.images.len());
    for (i, image) in spec.images.iter().enumerate() {
        let image: ImageRef = image
            .parse()
            .map_err(|e| bad(&format!("images[{i}]"), format!("{e}")))?;
        images.push(ImageItem { image, pin: None });
    }
    let priority =
        i32::try_from(spec.priority.clamp(i32::MIN.into(), i32::MAX.into())).unwrap_or(0);
    let w = Window {
        name: spec.name.clone(),
        schedule,
        timezone,
        duration,
        end,
        lead_time: Duration::from_secs(spec.lead_time_seconds.max(0) as u64),
        node_selector: spec.node_selector.clone().into_iter().collect(),
        images,
        priority,
        pin: true,
        grace: None,
        pacing: None,
        source: Some(spec.source.clone()).filter(|s| !s.is_empty()),
    };
    validate_windows(std::slice::from_ref(&w), at, now).map_err(|mut e| {
        // validate_windows indexes its slice: name the window instead.
        e.field = e.field.replacen(&format!("{at}[0]"), at, 1);
        e
    })?;
    Ok(w)
}

/// A coordinator window the agent does not plan, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub source: String,
    pub reason: String,
}

/// The windows an agent plans: its ConfigMap's `config`, then each
/// received window that parses and does not conflict with them.
///
/// ConfigMap windows win on conflict. A received window conflicts when a
/// ConfigMap window has the same name, or when a ConfigMap window that
/// applies to this node (`labels`) lists every one of its images (the
/// ConfigMap already warms them on its own schedule). A second received
/// window of the same name is dropped too.
pub fn merge_windows(
    config: &[Window],
    received: &[WindowSpec],
    labels: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> (Vec<Window>, Vec<Dropped>) {
    let mut out: Vec<Window> = config.to_vec();
    let mut dropped = Vec::new();
    for spec in received {
        let drop = |reason: String| Dropped {
            name: spec.name.clone(),
            source: spec.source.clone(),
            reason,
        };
        let at = format!("windows[{}]", spec.source);
        let w = match window_from_spec(spec, &at, now) {
            Ok(w) => w,
            Err(e) => {
                dropped.push(drop(e.to_string()));
                continue;
            }
        };
        if let Some(c) = config.iter().find(|c| c.name == w.name) {
            dropped.push(drop(format!(
                "the ConfigMap window {} has its name",
                c.name
            )));
            continue;
        }
        let covers = |c: &Window| {
            c.applies_to(labels)
                && w.images.iter().all(|i| {
                    c.images
                        .iter()
                        .any(|ci| ci.image.cri_name() == i.image.cri_name())
                })
        };
        if let Some(c) = config.iter().find(|c| covers(c)) {
            let reason = format!(
                "the ConfigMap window {} already warms its images on this node",
                c.name
            );
            dropped.push(drop(reason));
            continue;
        }
        if out.iter().any(|o| o.name == w.name) {
            dropped.push(drop("another coordinator window has its name".into()));
            continue;
        }
        out.push(w);
    }
    (out, dropped)
}

/// A ScaledObject with its target's pod template, when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub scaled_object: ScaledObject,
    /// `Err` says why the target is unusable (not found, unsupported kind).
    pub template: Result<PodSpec, String>,
}

/// Each node's windows: those of every resolved ScaledObject whose target's
/// pod template can land on it ([`crate::plan::eligibility`]), in
/// ScaledObject order; and everything skipped, with why.
pub fn windows_by_node(
    objects: &[Resolved],
    nodes: &[crate::plan::eligibility::NodeFacts],
    d: &KedaDefaults,
) -> (BTreeMap<String, Vec<WindowSpec>>, Vec<Skipped>) {
    let mut by_node: BTreeMap<String, Vec<WindowSpec>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for r in objects {
        let template = match &r.template {
            Ok(t) => t,
            Err(reason) => {
                skipped.push(Skipped {
                    scaled_object: key(&r.scaled_object.metadata),
                    trigger: None,
                    reason: reason.clone(),
                });
                continue;
            }
        };
        let (windows, skip) = windows_of(&r.scaled_object, template, d);
        skipped.extend(skip);
        if windows.is_empty() {
            continue;
        }
        for n in crate::plan::eligibility::eligible_nodes(template, nodes) {
            by_node
                .entry(n.name.clone())
                .or_default()
                .extend(windows.iter().cloned());
        }
    }
    (by_node, skipped)
}

#[cfg(test)]
#[path = "keda_tests.rs"]
mod tests;
