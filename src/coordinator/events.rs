//! Kubernetes Events on workloads, so `kubectl describe deployment/x` shows
//! when prewarm had its images warm. Only the leader writes them (see
//! [`super::leader`]), so two replicas do not report the same thing twice.
//!
//! Events are core/v1, in the style of client-go's legacy recorder:
//! `firstTimestamp`/`lastTimestamp` and `count`, `source.component`, plus
//! `reportingComponent`/`reportingInstance`. The involved object carries the
//! workload's uid (read with a GET), which `kubectl describe` matches on.

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

use crate::plan::rollout::{WorkloadKind, WorkloadRef};

/// `reason` of the Event.
pub const REASON: &str = "ImagesWarm";
/// `reportingComponent` (`reportingController` in events.k8s.io terms) and
/// `source.component`.
pub const REPORTING_CONTROLLER: &str = "prewarm.dev/coordinator";
/// Longest message kept (the events.k8s.io limit).
pub const MAX_MESSAGE: usize = 1024;

/// The Event for `workload` (with its `uid`), as created at `now` by the
/// replica `instance`.
pub fn warm_event_object(
    workload: &WorkloadRef,
    uid: Option<&str>,
    instance: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Event {
    let involved = ObjectReference {
        api_version: Some("apps/v1".to_string()),
        kind: Some(workload.kind.as_str().to_string()),
        name: Some(workload.name.clone()),
        namespace: Some(workload.namespace.clone()),
        uid: uid.map(str::to_string),
        ..ObjectReference::default()
    };
    event_object(&involved, false, REASON, instance, message, now)
}

/// An Event about `involved` (`Warning` or `Normal`), named like client-go
/// names Events: `<object name>.<hex nanoseconds>`; the message is cut to
/// [`MAX_MESSAGE`] bytes.
pub fn event_object(
    involved: &ObjectReference,
    warning: bool,
    reason: &str,
    instance: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Event {
    let nanos = now.timestamp_nanos_opt().unwrap_or_default().max(0) as u64;
    let mut message = message.to_string();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let time = Time(
        k8s_openapi::jiff::Timestamp::from_second(now.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    );
    let name = involved.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{nanos:x}")),
            namespace: involved.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: involved.clone(),
        reason: Some(reason.to_string()),
        message: Some(message),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
        source: Some(EventSource {
            component: Some(REPORTING_CONTROLLER.to_string()),
            host: None,
        }),
        reporting_component: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance.to_string()),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        count: Some(1),
        ..Event::default()
    }
}

/// This replica's name (`POD_NAME`, from the downward API).
pub fn instance() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| "prewarm-coordinator".to_string())
}

/// Creates an Event about `involved` (which must carry a namespace).
pub async fn record(
    client: &kube::Client,
    involved: &ObjectReference,
    warning: bool,
    reason: &str,
    message: &str,
) -> Result<Event, kube::Error> {
    let event = event_object(involved, warning, reason, &instance(), message, Utc::now());
    let ns = involved.namespace.clone().unwrap_or_default();
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
}

/// The workload's uid, read from the API server.
async fn uid_of(client: &kube::Client, w: &WorkloadRef) -> Result<Option<String>, kube::Error> {
    let c = client.clone();
    let ns = w.namespace.as_str();
    let meta = match w.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(c, ns)
                .get(&w.name)
                .await?
                .metadata
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(c, ns)
                .get(&w.name)
                .await?
                .metadata
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(c, ns)
                .get(&w.name)
                .await?
                .metadata
        }
    };
    Ok(meta.uid)
}

/// Records that `workload`'s images are warm, as the replica `instance`
/// (its pod name). Only the leader calls this.
pub async fn warm_event_as(
    client: &kube::Client,
    instance: &str,
    workload: &WorkloadRef,
    message: &str,
) -> Result<Event, kube::Error> {
    let uid = uid_of(client, workload).await?;
    let event = warm_event_object(workload, uid.as_deref(), instance, message, Utc::now());
    let events: Api<Event> = Api::namespaced(client.clone(), &workload.namespace);
    events.create(&PostParams::default(), &event).await
}

/// [`warm_event_as`] with this pod's name (`POD_NAME`, from the downward
/// API) as the instance.
pub async fn warm_event(
    client: &kube::Client,
    workload: &WorkloadRef,
    message: &str,
) -> Result<Event, kube::Error> {
    warm_event_as(client, &instance(), workload, message).await
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
