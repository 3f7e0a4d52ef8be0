use super::*;
use chrono::TimeZone as _;

/// The README's walkthrough manifests parse, the group validates, and
/// every member starts paused with gated, labelled pods.
#[test]
fn the_walkthrough_example_is_valid() {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde::Deserialize as _;
    let text = include_str!("../../config/integrations-deploygroup.yaml");
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k).cloned();
    let group: DeployGroup = serde_json::from_value(kind("DeployGroup").next().unwrap()).unwrap();
    validate(&group.spec).unwrap();
    assert_eq!(group.spec.members[0].paused_replicas, Some(1));
    assert_eq!(group.spec.quiesce, Dur::secs(300));
    let deployments: Vec<Deployment> = kind("Deployment")
        .map(|d| serde_json::from_value(d).unwrap())
        .collect();
    let names: Vec<String> = deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    let members: Vec<String> = group
        .spec
        .members
        .iter()
        .map(|m| m.deployment.clone())
        .collect();
    assert_eq!(names, members);
    for d in &deployments {
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.paused, Some(true));
        let pod = spec.template.spec.as_ref().unwrap();
        let gates = pod.scheduling_gates.as_ref().unwrap();
        assert_eq!(gates[0].name, "prewarm.dev/warm");
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["prewarm.dev/gate"], "true");
    }
    assert_eq!(kind("ScaledObject").count(), 2);
}

const EXAMPLE: &str = r#"
apiVersion: prewarm.dev/v1alpha1
kind: DeployGroup
metadata: {name: shop, namespace: prod, generation: 3}
spec:
  quiesce: 2m
  warmTimeout: 5m
  rolloutTimeout: 20m
  validationTimeout: 1m30s
  rollback: true
  members:
    - deployment: orders-api
      scaledObject: orders-so
      httpCheck: {url: "http://orders-api.prod/healthz", interval: 10s}
    - deployment: billing-api
      job: {template: {spec: {restartPolicy: Never, containers: [{name: t, image: "smoke:1"}]}}}
    - deployment: web
status:
  phase: Stepping
  message: "stepping billing-api: validating"
  observedGeneration: 3
  deployed: {orders-api: aaaaaaaaaa, billing-api: bbbbbbbbbb, web: cccccccccc}
  step:
    member: billing-api
    templateHash: dddddddddd
    stage: Validating
    started: "2025-01-02T03:04:05Z"
    stageStarted: "2025-01-02T03:10:00.5Z"
    kedaPaused: billing-so
    jobName: billing-api-validate-dddddddd
    warmSeconds: 12.5
    rollSeconds: 300
  results:
    - member: orders-api
      templateHash: aaaaaaaaaa
      result: Succeeded
      reason: ready
      started: "2025-01-02T02:00:00Z"
      finished: "2025-01-02T02:10:00Z"
      warmSeconds: 1
      rollSeconds: 2
      validateSeconds: 3
"#;

#[test]
fn full_example_round_trips() {
    let g: DeployGroup = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    assert_eq!(g.spec.members.len(), 3);
    assert_eq!(g.spec.validation_timeout, Dur::secs(90));
    assert_eq!(
        g.spec.members[0].http_check.as_ref().unwrap().interval,
        Dur::secs(10)
    );
    let st = g.status.as_ref().unwrap();
    assert_eq!(st.phase, GroupPhase::Stepping);
    let step = st.step.as_ref().unwrap();
    assert_eq!(step.stage, Stage::Validating);
    assert_eq!(
        step.stage_started,
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 10, 0).unwrap() + chrono::TimeDelta::milliseconds(500)
    );
    assert_eq!(st.results[0].result, Outcome::Succeeded);

    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(json["apiVersion"], "prewarm.dev/v1alpha1");
    assert_eq!(json["kind"], "DeployGroup");
    assert_eq!(json["spec"]["validationTimeout"], "1m30s");
    assert_eq!(
        json["status"]["step"]["stageStarted"],
        "2025-01-02T03:10:00.500Z"
    );
    assert_eq!(json["status"]["step"]["kedaPaused"], "billing-so");
    assert!(json["spec"]["members"][2].get("httpCheck").is_none());
    let back: DeployGroup = serde_json::from_value(json).unwrap();
    assert_eq!(back, g);
}

#[test]
fn defaults_fill_a_minimal_spec() {
    let g: DeployGroup = serde_json::from_str(
        r#"{"spec":{"members":[{"deployment":"a","httpCheck":{"url":"http://a"}}]}}"#,
    )
    .unwrap();
    assert_eq!(g.spec.quiesce, Dur::secs(60));
    assert_eq!(g.spec.warm_timeout, Dur::secs(600));
    assert_eq!(g.spec.rollout_timeout, Dur::secs(900));
    assert_eq!(g.spec.validation_timeout, Dur::secs(300));
    assert!(!g.spec.rollback);
    assert_eq!(
        g.spec.members[0].http_check.as_ref().unwrap().interval,
        Dur::secs(5)
    );
    assert_eq!(g.spec.members[0].scaled_object, None);
    assert_eq!(g.status, None);
    assert_eq!(
        DeployGroupSpec {
            members: g.spec.members.clone(),
            ..DeployGroupSpec::default()
        },
        g.spec
    );
    let empty: DeployGroupStatus = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, DeployGroupStatus::default());
    assert_eq!(empty.phase, GroupPhase::Idle);
    // No status: none serialized.
    assert!(serde_json::to_value(&g).unwrap().get("status").is_none());
}

#[test]
fn durations_parse() {
    let p = |s: &str| s.parse::<Dur>().unwrap().0;
    assert_eq!(p("90s"), Duration::from_secs(90));
    assert_eq!(p("10m"), Duration::from_secs(600));
    assert_eq!(p("1h"), Duration::from_secs(3600));
    assert_eq!(p("1h30m"), Duration::from_secs(5400));
    assert_eq!(p("1h30m15s"), Duration::from_secs(5415));
    assert_eq!(p("500ms"), Duration::from_millis(500));
    assert_eq!(p("1.5h"), Duration::from_secs(5400));
    assert_eq!(p(" 0 "), Duration::ZERO);
    assert_eq!(p("0s"), Duration::ZERO);
}

#[test]
fn durations_display_go_style_and_round_trip() {
    for (d, text) in [
        (Duration::from_secs(300), "5m0s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(5400), "1h30m0s"),
        (Duration::from_secs(5), "5s"),
        (Duration::ZERO, "0s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_millis(1500), "1.5s"),
    ] {
        assert_eq!(Dur(d).to_string(), text);
        assert_eq!(text.parse::<Dur>().unwrap(), Dur(d));
    }
}

#[test]
fn bad_durations_name_the_value_and_the_forms() {
    for bad in [
        "",
        "10",
        "5x",
        "m",
        "1.2.3s",
        "-5s",
        "1h 30m",
        "99999999999999999999h",
    ] {
        let e = bad.parse::<Dur>().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid duration {bad:?}: expected numbers with units h, m, s or ms, \
                 like \"90s\", \"10m\", \"1h\" or \"1h30m\""
            )
        );
    }
    let e = serde_json::from_str::<DeployGroupSpec>(r#"{"members":[],"quiesce":"soon"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid duration \"soon\""), "{e}");
}

#[test]
fn template_hash_is_stable_and_sensitive() {
    let t: PodTemplateSpec = serde_json::from_str(
        r#"{"metadata":{"labels":{"b":"2","a":"1"}},"spec":{"containers":[{"name":"app","image":"app:1"}]}}"#,
    )
    .unwrap();
    let h = template_hash(&t);
    assert_eq!(h.len(), 10);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    // Label order in the input does not matter.
    let t2: PodTemplateSpec = serde_json::from_str(
        r#"{"metadata":{"labels":{"a":"1","b":"2"}},"spec":{"containers":[{"image":"app:1","name":"app"}]}}"#,
    )
    .unwrap();
    assert_eq!(template_hash(&t2), h);
    let mut t3 = t.clone();
    t3.spec.as_mut().unwrap().containers[0].image = Some("app:2".into());
    assert_ne!(template_hash(&t3), h);
}

#[test]
fn resource_metadata() {
    use kube::Resource as _;
    assert_eq!(DeployGroup::api_version(&()), "prewarm.dev/v1alpha1");
    assert_eq!(DeployGroup::plural(&()), "deploygroups");
    assert_eq!(
        DeployGroup::url_path(&(), Some("prod")),
        "/apis/prewarm.dev/v1alpha1/namespaces/prod/deploygroups"
    );
    let g = DeployGroup::new("shop", DeployGroupSpec::default());
    assert_eq!(g.meta().name.as_deref(), Some("shop"));
}
