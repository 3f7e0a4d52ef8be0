use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn spec(v: serde_json::Value) -> PodSpec {
    let mut base = json!({"containers": [{"name": "app", "image": "reg.example/app:1"}]});
    if let (Some(b), Some(extra)) = (base.as_object_mut(), v.as_object()) {
        b.extend(extra.clone());
    }
    serde_json::from_value(base).unwrap()
}

fn data(key: &str, text: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([(key.to_string(), text.as_bytes().to_vec())])
}

fn entries(ns: &str, name: &str, json: &str) -> Vec<SecretEntry> {
    parse_secret(
        ns,
        name,
        Some(DOCKER_CONFIG_JSON.0),
        &data(DOCKER_CONFIG_JSON.1, json),
    )
    .unwrap()
}

fn basic(u: &str, p: &str) -> Credential {
    Credential::Basic {
        username: u.into(),
        password: p.into(),
    }
}

#[test]
fn a_template_without_secrets_takes_its_service_accounts() {
    let t = WorkloadSecrets::of_template("erp", &spec(json!({})));
    assert_eq!(t.service_account.as_deref(), Some("default"));
    assert!(t.secrets.is_empty() && !t.is_empty());
    assert_eq!(t.names(&["sa-pull".into()]), vec!["sa-pull"]);

    let named = WorkloadSecrets::of_template("erp", &spec(json!({"serviceAccountName": "orders"})));
    assert_eq!(named.service_account.as_deref(), Some("orders"));

    // Its own secrets win: admission copies the ServiceAccount's only
    // into a pod that names none.
    let own = spec(json!({"imagePullSecrets": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}));
    let t = WorkloadSecrets::of_template("erp", &own);
    assert_eq!(t.service_account, None);
    assert_eq!(t.names(&["sa-pull".into()]), vec!["a", "b"]);

    // An admitted pod already carries what admission copied.
    let p = WorkloadSecrets::of_pod("erp", &spec(json!({})));
    assert!(p.is_empty());
    let mut p = WorkloadSecrets::of_pod("erp", &own);
    p.merge(&WorkloadSecrets::of_pod(
        "erp",
        &spec(json!({"imagePullSecrets": [{"name": "c"}, {"name": "b"}]})),
    ));
    assert_eq!(p.secrets, vec!["a", "b", "c"]);
}

#[test]
fn both_secret_types_parse_and_errors_name_the_secret_and_field() {
    let json = entries(
        "erp",
        "pull",
        r#"{"auths":{"reg.example:5000":{"username":"robot","password":"pw-1"}}}"#,
    );
    assert_eq!(json.len(), 1);
    assert_eq!(json[0].source, "erp/pull");
    assert_eq!(json[0].pattern.as_str(), "reg.example:5000");
    assert_eq!(json[0].credential, basic("robot", "pw-1"));

    // dockercfg: entries at the root, `auth` is base64 of user:password.
    let cfg = parse_secret(
        "erp",
        "old",
        Some(DOCKERCFG.0),
        &data(
            DOCKERCFG.1,
            r#"{"https://reg.example/v1/":{"auth":"cm9ib3Q6cHctMg=="}}"#,
        ),
    )
    .unwrap();
    assert_eq!(cfg[0].pattern.as_str(), "reg.example");
    assert_eq!(cfg[0].credential, basic("robot", "pw-2"));

    let opaque = parse_secret("erp", "tls", Some("Opaque"), &BTreeMap::new()).unwrap_err();
    assert_eq!(
        opaque.to_string(),
        "Secret erp/tls: type \"Opaque\" is not a pull secret (kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg); the kubelet ignores it too"
    );
    let missing =
        parse_secret("erp", "pull", Some(DOCKER_CONFIG_JSON.0), &BTreeMap::new()).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "Secret erp/pull: data[\".dockerconfigjson\"] is missing or empty"
    );
    let bad = parse_secret(
        "erp",
        "pull",
        Some(DOCKER_CONFIG_JSON.0),
        &data(
            DOCKER_CONFIG_JSON.1,
            r#"{"auths":{"reg.example":{"auth":"not base64 pw-3!"}}}"#,
        ),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        bad,
        "Secret erp/pull: data[\".dockerconfigjson\"]: entry \"reg.example\": \"auth\" is not valid base64"
    );
    let broken = parse_secret(
        "erp",
        "pull",
        Some(DOCKER_CONFIG_JSON.0),
        &data(
            DOCKER_CONFIG_JSON.1,
            r#"{"auths":{"reg.example":{"password":"pw-4"#,
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        broken.starts_with("Secret erp/pull: data[\".dockerconfigjson\"]: invalid JSON"),
        "{broken}"
    );
    assert!(!broken.contains("pw-4"), "{broken}");
}

#[test]
fn only_entries_for_the_images_registries_are_selected_most_specific_first() {
    let e = entries(
        "erp",
        "pull",
        r#"{"auths":{
            "*.azurecr.io":{"username":"glob","password":"g"},
            "erp.azurecr.io/orders":{"username":"team","password":"t"},
            "erp.azurecr.io":{"username":"host","password":"h"},
            "other.example":{"username":"other","password":"o"}}}"#,
    );
    let got = select(&e, &["erp.azurecr.io/orders/sync:1.4.2".to_string()]);
    let users: Vec<&str> = got.iter().map(|c| c.username.as_str()).collect();
    assert_eq!(users, vec!["team", "host", "glob"]);
    assert!(got.iter().all(|c| c.source == "erp/pull"));
    assert_eq!(got[0].registry, "erp.azurecr.io/orders");
    // A repository outside the path prefix, and no image at all.
    let users: Vec<String> = select(&e, &["erp.azurecr.io/billing:1".to_string()])
        .into_iter()
        .map(|c| c.username)
        .collect();
    assert_eq!(users, vec!["host", "glob"]);
    assert!(select(&e, &[]).is_empty());
    assert!(select(&e, &["docker.io/library/nginx:1".to_string()]).is_empty());
}

fn intent(id: &str, priority: i64, images: &[&str], nodes: &[&str]) -> Intent {
    Intent {
        id: id.into(),
        images: images.iter().map(|s| s.to_string()).collect(),
        priority,
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn an_intent_without_nodes_gets_no_credentials() {
    let e = entries(
        "erp",
        "pull",
        r#"{"auths":{"reg.example":{"username":"u","password":"p"}}}"#,
    );
    let mut named = intent("a", 0, &["reg.example/app:1"], &["n1"]);
    attach(&mut named, &e);
    assert_eq!(named.credentials.len(), 1);
    let mut everywhere = intent("b", 0, &["reg.example/app:1"], &[]);
    everywhere.credentials = named.credentials.clone();
    attach(&mut everywhere, &e);
    assert!(everywhere.credentials.is_empty());
}

#[test]
fn the_agent_takes_only_intents_that_apply_and_name_it() {
    let e = entries(
        "erp",
        "pull",
        r#"{"auths":{"reg.example":{"username":"u","password":"p"}}}"#,
    );
    let other = entries(
        "ops",
        "pull",
        r#"{"auths":{"reg.example/app":{"username":"ops","password":"q"},
                     "reg.example":{"identitytoken":"tok"}}}"#,
    );
    let mut low = intent("low", 0, &["reg.example/app:1"], &["n1", "n2"]);
    attach(&mut low, &e);
    let mut high = intent("high", 10, &["reg.example/app:2", "quay.io/x:1"], &["n1"]);
    attach(&mut high, &other);
    let mut ended = intent("ended", 50, &["reg.example/app:1"], &["n1"]);
    attach(&mut ended, &e);
    ended.credentials[0].password = "stale".into();
    let mut bad = intent("bad", 0, &["reg.example/app:1"], &["n1"]);
    bad.credentials = vec![
        RegistryCredential {
            registry: "".into(),
            password: "pw-9".into(),
            source: "erp/broken".into(),
            ..Default::default()
        },
        RegistryCredential {
            registry: "reg.example".into(),
            source: "erp/empty".into(),
            ..Default::default()
        },
    ];
    let all = vec![low, high, ended, bad];
    let applying: BTreeSet<String> = ["low", "high", "bad"].map(String::from).into();

    let (n1, problems) = for_node(&all, &applying, "n1");
    assert_eq!(
        n1,
        BTreeMap::from([(
            "reg.example/app".to_string(),
            vec![
                basic("ops", "q"),
                Credential::IdentityToken("tok".into()),
                basic("u", "p"),
            ]
        )])
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("intent bad: credentials[0] (from erp/broken)"));
    assert!(problems[1].contains("no username, password or token"));
    assert!(problems.iter().all(|p| !p.contains("pw-9")));

    let (n2, _) = for_node(&all, &applying, "n2");
    assert_eq!(n2["reg.example/app"], vec![basic("u", "p")]);
    let (n3, _) = for_node(&all, &applying, "n3");
    assert!(n3.is_empty(), "a node no intent names gets nothing");
}

proptest! {
    /// Whatever a Secret holds, parsing never panics, and an error names
    /// the Secret and never repeats its content.
    #[test]
    fn any_secret_data_parses_or_fails_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        dockercfg in any::<bool>(),
    ) {
        let (kind, key) = if dockercfg { DOCKERCFG } else { DOCKER_CONFIG_JSON };
        let map = BTreeMap::from([(key.to_string(), bytes.clone())]);
        match parse_secret("ns", "s", Some(kind), &map) {
            Ok(es) => prop_assert!(es.iter().all(|e| e.source == "ns/s")),
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("Secret ns/s: data["), "{}", shown);
                prop_assert!(!shown.contains("PullSecretError"), "{}", shown);
            }
        }
    }

    /// Selected entries always match one of the intent's images, and a
    /// password is never selected for another registry.
    #[test]
    fn selection_matches_an_image(
        hosts in proptest::collection::vec("[a-c]{1,2}\\.example(:5000)?", 1..5),
        image_host in "[a-c]{1,2}\\.example(:5000)?",
    ) {
        let auths: serde_json::Map<String, serde_json::Value> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), json!({"username": format!("u{i}"), "password": h})))
            .collect();
        let text = json!({"auths": auths}).to_string();
        let e = entries("ns", "s", &text);
        let image = format!("{image_host}/app:1");
        for c in select(&e, &[image]) {
            prop_assert_eq!(&c.registry, &image_host);
            prop_assert_eq!(&c.password, &image_host);
        }
    }
}
