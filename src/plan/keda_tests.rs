use super::*;
use crate::config::windows::Scheduling;
use crate::plan::windows::{plan_windows, NodeView, Phase};
use chrono::TimeZone;
use chrono_tz::Europe::Amsterdam;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

fn so(value: serde_json::Value) -> ScaledObject {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
}

fn orders(triggers: serde_json::Value) -> ScaledObject {
    so(json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "orders-sync", "namespace": "integrations",
                     "annotations": {"prewarm.dev/lead-time": "20m", "prewarm.dev/priority": "7"}},
        "spec": {"scaleTargetRef": {"name": "orders-sync"}, "triggers": triggers}
    }))
}

fn cron_trigger(start: &str, end: &str, tz: &str) -> serde_json::Value {
    json!({"type": "cron", "metadata": {"timezone": tz, "start": start, "end": end, "desiredReplicas": "3"}})
}

fn template() -> PodSpec {
    serde_json::from_value(json!({
        "nodeSelector": {"kubernetes.azure.com/agentpool": "integrations"},
        "initContainers": [{"name": "migrate", "image": "myregistry.azurecr.io/erp/migrate:2"}],
        "containers": [
            {"name": "app", "image": "myregistry.azurecr.io/erp/orders-sync:1.4.2"},
            {"name": "sidecar", "image": "myregistry.azurecr.io/erp/migrate:2"}
        ]
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Amsterdam
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .expect("a local time")
        .with_timezone(&Utc)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// The one window of a ScaledObject with a single cron trigger, as the agent plans it.
fn window(start: &str, end: &str, tz: &str) -> Window {
    let (specs, skipped) = windows_of(
        &orders(json!([cron_trigger(start, end, tz)])),
        &template(),
        &KedaDefaults::default(),
    );
    assert!(skipped.is_empty(), "{skipped:?}");
    let now = utc(2026, 1, 1, 0, 0);
    window_from_spec(&specs[0], "windows[x]", now).unwrap_or_else(|e| panic!("{e}"))
}

/// The phase and occurrence the planner sees at `now`.
type Occurrence = Option<(DateTime<Utc>, DateTime<Utc>)>;

fn at(w: &Window, now: DateTime<Utc>) -> (Phase, Occurrence) {
    let labels = BTreeMap::from([(
        "kubernetes.azure.com/agentpool".to_string(),
        "integrations".to_string(),
    )]);
    let (missing, warm) = (BTreeMap::new(), BTreeSet::new());
    let node = NodeView {
        labels: &labels,
        missing_bytes: &missing,
        warm: &warm,
        throughput: None,
    };
    let plan = plan_windows(std::slice::from_ref(w), &Scheduling::default(), &node, now);
    (plan.windows[0].phase, plan.windows[0].occurrence)
}

#[test]
fn a_cron_trigger_becomes_a_window_spec() {
    let (specs, skipped) = windows_of(
        &orders(json!([
            {"type": "cpu", "metadata": {"value": "50"}},
            cron_trigger("0 8 * * MON-FRI", "0 18 * * MON-FRI", "Europe/Amsterdam")
        ])),
        &template(),
        &KedaDefaults::default(),
    );
    assert!(
        skipped.is_empty(),
        "the cpu trigger is ignored: {skipped:?}"
    );
    let spec = &specs[..];
    assert_eq!(spec.len(), 1);
    let s = &spec[0];
    assert_eq!(s.name, "keda-integrations-orders-sync-1");
    assert_eq!(s.source, "keda:integrations/orders-sync#1");
    assert_eq!(
        (
            s.schedule.as_str(),
            s.end_schedule.as_str(),
            s.timezone.as_str()
        ),
        ("0 8 * * MON-FRI", "0 18 * * MON-FRI", "Europe/Amsterdam")
    );
    assert_eq!(s.duration_seconds, 0);
    assert_eq!(
        s.images,
        [
            "myregistry.azurecr.io/erp/orders-sync:1.4.2",
            "myregistry.azurecr.io/erp/migrate:2"
        ]
    );
    assert_eq!((s.lead_time_seconds, s.priority), (1200, 7));
    assert_eq!(
        s.node_selector
            .get("kubernetes.azure.com/agentpool")
            .map(String::as_str),
        Some("integrations")
    );
}

#[test]
fn defaults_apply_without_annotations_and_the_kind_defaults_to_deployment() {
    let mut o = orders(json!([cron_trigger("0 8 * * *", "0 9 * * *", "UTC")]));
    o.metadata.annotations = None;
    let d = KedaDefaults {
        lead_time: Duration::from_secs(300),
        priority: 3,
    };
    let (specs, _) = windows_of(&o, &template(), &d);
    assert_eq!((specs[0].lead_time_seconds, specs[0].priority), (300, 3));
    let t = target_of(&o).unwrap();
    assert_eq!(
        (t.kind, t.namespace.as_str(), t.name.as_str()),
        (TargetKind::Deployment, "integrations", "orders-sync")
    );
    o.spec.scale_target_ref.kind = Some("StatefulSet".into());
    assert_eq!(target_of(&o).unwrap().kind, TargetKind::StatefulSet);
    o.spec.scale_target_ref.kind = Some("Rollout".into());
    let e = target_of(&o).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ScaledObject integrations/orders-sync: spec.scaleTargetRef.kind: Rollout is not supported (Deployment or StatefulSet)"
    );
}

#[test]
fn bad_triggers_are_skipped_with_a_reason_naming_the_field() {
    let zero = json!({"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": "0"}});
    let (specs, skipped) = windows_of(
        &orders(json!([
            zero,
            cron_trigger("0 8 * * *", "0 9 * * *", "Mars/Olympus"),
            cron_trigger("0 0 8 * * *", "0 9 * * *", "UTC"),
            cron_trigger("0 8 * * *", "0  8 * * *", "UTC"),
            {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 9 * * *"}},
            {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": "many"}},
            {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 25 * * *", "end": "0 9 * * *", "desiredReplicas": 2}},
            cron_trigger("0 8 * * *", "0 9 * * *", "UTC"),
        ])),
        &template(),
        &KedaDefaults::default(),
    );
    let reasons: Vec<String> = skipped.iter().map(|s| s.to_string()).collect();
    let p = "ScaledObject integrations/orders-sync";
    assert_eq!(
        reasons,
        [
            format!("{p} triggers[0]: metadata.desiredReplicas is 0: it scales nothing up"),
            format!("{p} triggers[1]: metadata.timezone: unknown IANA time zone \"Mars/Olympus\""),
            format!("{p} triggers[2]: metadata.start: expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
            format!("{p} triggers[3]: metadata.end: must differ from start (KEDA rejects equal start and end)"),
            format!("{p} triggers[4]: metadata.desiredReplicas: missing (required by KEDA's cron scaler)"),
            format!("{p} triggers[5]: metadata.desiredReplicas: must be a non-negative integer, got \"many\""),
            format!("{p} triggers[6]: metadata.start: {}", "0 25 * * *".parse::<Schedule>().err().map(|e| e.to_string()).unwrap_or_default()),
        ]
    );
    assert!(reasons[6].len() > format!("{p} triggers[6]: metadata.start: ").len());
    assert_eq!(specs.len(), 1, "only the last trigger is usable");
    assert_eq!(specs[0].source, "keda:integrations/orders-sync#7");
    // "ScaledObject" is the Kubernetes kind; the reasons must show no Rust words.
    for r in skipped.iter().map(|s| &s.reason) {
        let leaked = crate::config::rust_words(r);
        assert!(leaked.is_empty(), "{r}: shows {leaked:?}");
    }
}

#[test]
fn a_bad_annotation_or_an_imageless_template_skips_the_scaled_object() {
    let mut o = orders(json!([cron_trigger("0 8 * * *", "0 9 * * *", "UTC")]));
    o.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LEAD_TIME_ANNOTATION.into(), "soon".into());
    let (specs, skipped) = windows_of(&o, &template(), &KedaDefaults::default());
    assert!(specs.is_empty());
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]
        .to_string()
        .starts_with("ScaledObject integrations/orders-sync: annotation prewarm.dev/lead-time: \"soon\" is not a duration"));
    let o = orders(json!([cron_trigger("0 8 * * *", "0 9 * * *", "UTC")]));
    let (specs, skipped) = windows_of(&o, &PodSpec::default(), &KedaDefaults::default());
    assert!(specs.is_empty());
    assert_eq!(
        skipped[0].to_string(),
        "ScaledObject integrations/orders-sync: its target's pod template names no image"
    );
}

#[test]
fn window_names_are_dns_labels_and_stay_distinct_when_shortened() {
    assert_eq!(window_name("ns", "Orders.Sync", 0), "keda-ns-orders-sync-0");
    let long = "a".repeat(200);
    let a = window_name("integrations", &long, 0);
    let b = window_name("integrations", &long, 1);
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b);
    for n in [a, b] {
        assert!(n
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
        assert!(!n.ends_with('-') && !n.starts_with('-'));
    }
}

#[test]
fn office_hours_follow_amsterdam_time_across_spring_forward() {
    let w = window("0 8 * * *", "0 18 * * *", "Europe/Amsterdam");
    // Saturday before the change: CET, 07:00–17:00 UTC.
    let (phase, occ) = at(&w, local(2026, 3, 28, 12, 0));
    assert_eq!(phase, Phase::Late);
    assert_eq!(occ, Some((utc(2026, 3, 28, 7, 0), utc(2026, 3, 28, 17, 0))));
    // Sunday after it: CEST, 06:00–16:00 UTC.
    let (_, occ) = at(&w, local(2026, 3, 29, 12, 0));
    assert_eq!(occ, Some((utc(2026, 3, 29, 6, 0), utc(2026, 3, 29, 16, 0))));
}

#[test]
fn a_night_window_over_spring_forward_is_an_hour_shorter() {
    // 01:00 CET to 05:00 CEST: three real hours, not four.
    let w = window("0 1 * * *", "0 5 * * *", "Europe/Amsterdam");
    let (phase, occ) = at(&w, utc(2026, 3, 29, 1, 0));
    assert_eq!(phase, Phase::Late);
    assert_eq!(occ, Some((utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 3, 0))));
    assert_eq!(
        at(&w, utc(2026, 3, 29, 3, 0)).0,
        Phase::Grace,
        "ended at 05:00 CEST"
    );
}

#[test]
fn a_night_window_over_fall_back_is_an_hour_longer() {
    // 01:00 CEST (23:00 UTC the day before) to 05:00 CET (04:00 UTC): five hours.
    let w = window("0 1 * * *", "0 5 * * *", "Europe/Amsterdam");
    let (phase, occ) = at(&w, utc(2026, 10, 25, 3, 30));
    assert_eq!(phase, Phase::Late);
    assert_eq!(
        occ,
        Some((utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 4, 0)))
    );
}

#[test]
fn a_start_in_the_spring_forward_gap_runs_after_the_gap() {
    // 02:30 does not exist on 2026-03-29 in Amsterdam: it runs at 03:00 CEST.
    let w = window("30 2 * * *", "0 4 * * *", "Europe/Amsterdam");
    let (_, occ) = at(&w, utc(2026, 3, 29, 1, 30));
    assert_eq!(occ, Some((utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0))));
}

#[test]
fn a_fixed_start_in_the_fall_back_overlap_runs_once() {
    // 02:30 happens twice on 2026-10-25; the window opens at the first.
    let w = window("30 2 * * *", "0 4 * * *", "Europe/Amsterdam");
    let (_, occ) = at(&w, utc(2026, 10, 25, 1, 0));
    assert_eq!(
        occ,
        Some((utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3, 0)))
    );
    let (_, occ) = at(&w, utc(2026, 10, 25, 1, 45));
    assert_eq!(
        occ.map(|o| o.0),
        Some(utc(2026, 10, 25, 0, 30)),
        "no second start at 02:30 CET"
    );
}

#[test]
fn start_and_end_across_midnight() {
    let w = window("0 22 * * *", "0 6 * * *", "Europe/Amsterdam");
    let (phase, occ) = at(&w, local(2026, 6, 10, 23, 30));
    assert_eq!(phase, Phase::Late);
    assert_eq!(
        occ,
        Some((local(2026, 6, 10, 22, 0), local(2026, 6, 11, 6, 0)))
    );
    let (phase, occ) = at(&w, local(2026, 6, 11, 3, 0));
    assert_eq!(phase, Phase::Late);
    assert_eq!(occ.map(|o| o.1), Some(local(2026, 6, 11, 6, 0)));
}

#[test]
fn an_end_before_the_start_on_the_same_day_ends_the_next_day() {
    // End 09:00, start 18:00: at 10:00 nothing runs; the next occurrence
    // is 18:00 until 09:00 the next morning.
    let w = window("0 18 * * *", "0 9 * * *", "Europe/Amsterdam");
    let now = local(2026, 6, 10, 10, 0);
    let (phase, _) = at(&w, now);
    assert!(matches!(phase, Phase::Idle | Phase::Grace), "{phase:?}");
    let start = w.next_start(now).unwrap();
    assert_eq!(start, local(2026, 6, 10, 18, 0));
    assert_eq!(w.end_of(start), Some(local(2026, 6, 11, 9, 0)));
    // Warming starts the lead time (20m) before it.
    let (phase, occ) = at(&w, local(2026, 6, 10, 17, 45));
    assert_eq!(phase, Phase::Warming);
    assert_eq!(occ, Some((start, local(2026, 6, 11, 9, 0))));
}

#[test]
fn received_windows_are_validated_like_configmap_windows() {
    let mut spec = windows_of(
        &orders(json!([cron_trigger("0 8 * * *", "0 9 * * *", "UTC")])),
        &template(),
        &KedaDefaults::default(),
    )
    .0
    .remove(0);
    let now = utc(2026, 1, 1, 0, 0);
    let w = window_from_spec(&spec, "windows[keda:integrations/orders-sync#0]", now).unwrap();
    assert_eq!(w.source_name(), "keda:integrations/orders-sync#0");
    assert_eq!(w.lead_time, Duration::from_secs(1200));
    spec.duration_seconds = 3600;
    let e = window_from_spec(&spec, "windows[k]", now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "windows[k].end: set either duration or end, not both"
    );
    spec.images = vec!["Not An Image".into()];
    let e = window_from_spec(&spec, "windows[k]", now).unwrap_err();
    assert!(e.to_string().starts_with("windows[k].images[0]: "), "{e}");
}

fn config_window(name: &str, images: &[&str], selector: &[(&str, &str)]) -> Window {
    let images: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
    let selector: Vec<String> = selector
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    let text = format!(
        "{{name: {name}, schedule: '0 7 * * *', duration: 1h, images: [{}], nodeSelector: {{{}}}}}",
        images.join(", "),
        selector.join(", ")
    );
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn configmap_windows_win_on_name_and_on_covering_images() {
    let (specs, _) = windows_of(
        &orders(json!([
            cron_trigger("0 8 * * *", "0 9 * * *", "UTC"),
            cron_trigger("0 20 * * *", "0 21 * * *", "UTC")
        ])),
        &template(),
        &KedaDefaults::default(),
    );
    let pool = BTreeMap::from([(
        "kubernetes.azure.com/agentpool".to_string(),
        "integrations".to_string(),
    )]);
    let now = utc(2026, 1, 1, 0, 0);
    let app = "myregistry.azurecr.io/erp/orders-sync:1.4.2";
    let migrate = "myregistry.azurecr.io/erp/migrate:2";
    // No conflict: both received windows are planned after the config's.
    let other = config_window("other", &["nginx"], &[]);
    let (out, dropped) = merge_windows(std::slice::from_ref(&other), &specs, &pool, now);
    let names: Vec<&str> = out.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "other",
            "keda-integrations-orders-sync-0",
            "keda-integrations-orders-sync-1"
        ]
    );
    assert!(dropped.is_empty());
    // Same name: the ConfigMap's wins.
    let named = config_window("keda-integrations-orders-sync-0", &["nginx"], &[]);
    let (out, dropped) = merge_windows(std::slice::from_ref(&named), &specs, &pool, now);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].source_name(), "config");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].source, "keda:integrations/orders-sync#0");
    // A ConfigMap window on this pool already warming every image wins too.
    let covering = config_window(
        "erp",
        &[app, migrate, "nginx"],
        &[("kubernetes.azure.com/agentpool", "integrations")],
    );
    let (out, dropped) = merge_windows(std::slice::from_ref(&covering), &specs, &pool, now);
    assert_eq!(out.len(), 1);
    assert_eq!(dropped.len(), 2);
    assert_eq!(
        dropped[0].reason,
        "the ConfigMap window erp already warms its images on this node"
    );
    // ... but not one that covers only some images, or another pool.
    let partial = config_window("erp", &[app], &[]);
    assert_eq!(
        merge_windows(std::slice::from_ref(&partial), &specs, &pool, now)
            .0
            .len(),
        3
    );
    let elsewhere = config_window(
        "erp",
        &[app, migrate],
        &[("kubernetes.azure.com/agentpool", "batch")],
    );
    assert_eq!(
        merge_windows(std::slice::from_ref(&elsewhere), &specs, &pool, now)
            .0
            .len(),
        3
    );
    // A bad received window is dropped with the validation error.
    let mut bad = specs[0].clone();
    bad.timezone = "Nowhere".into();
    let (out, dropped) = merge_windows(&[], &[bad], &pool, now);
    assert!(out.is_empty());
    assert_eq!(
        dropped[0].reason,
        "windows[keda:integrations/orders-sync#0].timezone: unknown IANA time zone \"Nowhere\""
    );
}

/// A valid 5-field cron, from its fields.
fn cron_text() -> impl Strategy<Value = String> {
    (
        0u32..60,
        0u32..24,
        prop_oneof![
            Just("*".to_string()),
            (1u32..29).prop_map(|d| d.to_string())
        ],
        prop_oneof![Just("*"), Just("MON-FRI"), Just("0"), Just("SAT,SUN")],
    )
        .prop_map(|(m, h, dom, dow)| format!("{m} {h} {dom} * {dow}"))
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        ".{0,30}".prop_map(Value::from),
        cron_text().prop_map(Value::from),
        Just(Value::from("Europe/Amsterdam")),
        Just(json!(["0 8 * * *"])),
    ]
}

proptest! {
    /// Any metadata: an Ok that round-trips, or an error naming one of
    /// the four fields; never a panic.
    #[test]
    fn the_metadata_parser_never_panics(
        fields in proptest::collection::btree_map(
            prop_oneof![Just("timezone"), Just("start"), Just("end"), Just("desiredReplicas"), Just("other")],
            value(),
            0..6,
        )
    ) {
        let meta: BTreeMap<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        match parse_cron(&meta) {
            Ok(c) => {
                prop_assert_eq!(c.start.as_str().split_whitespace().count(), 5);
                prop_assert_ne!(c.start.as_str(), c.end.as_str());
            }
            Err(e) => {
                prop_assert!(["timezone", "start", "end", "desiredReplicas"].contains(&e.field));
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// Well-formed metadata always parses, and its window's occurrences end
    /// after they start.
    #[test]
    fn valid_metadata_parses_and_ends_after_it_starts(
        start in cron_text(), end in cron_text(), replicas in 1u64..100,
        tz in prop_oneof![Just("UTC"), Just("Europe/Amsterdam"), Just("America/New_York"), Just("Asia/Kolkata")],
        day in 0i64..400,
    ) {
        prop_assume!(start != end);
        let meta = BTreeMap::from([
            ("timezone".to_string(), Value::from(tz)),
            ("start".to_string(), Value::from(start.clone())),
            ("end".to_string(), Value::from(end.clone())),
            ("desiredReplicas".to_string(), Value::from(replicas.to_string())),
        ]);
        let c = parse_cron(&meta).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.desired_replicas, replicas);
        let w = window(&start, &end, tz);
        let from = utc(2026, 1, 1, 0, 0) + chrono::Duration::days(day);
        if let Some(s) = w.next_start(from) {
            let e = w.end_of(s);
            prop_assert!(e.is_some_and(|e| e > s), "{:?} -> {:?}", s, e);
        }
    }
}
