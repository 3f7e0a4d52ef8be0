//! Workload pull secrets against the in-memory API server, with the RBAC
//! as installed plus (or without) the namespace's RoleBinding of
//! ClusterRole prewarm-pull-secrets.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::coordinator::rollouts::{self, RolloutConfig};
use crate::testkit::apiserver::{Identity, MockApi, Policy};
use crate::wire::v1::RegistryCredential;

const NS: &str = "erp";
const IMAGE: &str = "reg.example:5000/erp/orders:1.5.0";
const PASSWORD: &str = "s3cret-pull-pw";
const COORDINATOR: &str = "system:serviceaccount:prewarm-system:prewarm-coordinator";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A Deployment mid-rollout whose template names no pull secrets, so its
/// pods get their ServiceAccount's; `n1` is the only node it fits.
fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "orders", "namespace": NS, "generation": 2,
                        "labels": {"prewarm.dev/rollout": "true"}},
           "spec": {"replicas": 1, "paused": true,
                    "selector": {"matchLabels": {"app": "orders"}},
                    "template": {"metadata": {"labels": {"app": "orders"}},
                                 "spec": {"serviceAccountName": "orders",
                                          "nodeSelector": {"kubernetes.io/hostname": "n1"},
                                          "containers": [{"name": "app", "image": IMAGE}]}}},
           "status": {"observedGeneration": 1}})
}

fn account() -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "orders", "namespace": NS},
           "imagePullSecrets": [{"name": "pull"}, {"name": "gone"}]})
}

fn secret() -> Value {
    let config = json!({"auths": {
        "reg.example:5000": {"auth": b64(&format!("robot:{PASSWORD}"))},
        "other.example": {"username": "elsewhere", "password": "other-pw"}}});
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": "pull", "namespace": NS},
           "data": {".dockerconfigjson": b64(&config.to_string())}})
}

fn api(bound: bool) -> MockApi {
    let mut policy = Policy::shipped();
    if bound {
        policy = policy.with_role_binding(NS, ROLE, &Identity::coordinator());
    }
    let api = MockApi::with_policy(policy);
    api.put("api/v1/nodes", node("n1"));
    api.put("api/v1/nodes", node("n2"));
    api.put("apis/apps/v1/deployments", deployment());
    api.put("api/v1/serviceaccounts", account());
    api.put("api/v1/secrets", secret());
    api
}

/// Starts the rollout loop and pull secrets against `api`; returns the
/// link state they publish to.
fn start(api: &MockApi, cancel: &CancellationToken) -> Arc<LinkState> {
    let state = LinkState::with_nodes(Vec::new(), cancel.clone());
    let ps = PullSecrets::new(api.coordinator_client(), state.clone(), Default::default());
    tokio::spawn(ps.clone().run(cancel.clone()));
    let cfg = RolloutConfig {
        debounce: Duration::from_millis(20),
        ..Default::default()
    };
    let publisher = Publisher {
        state: state.clone(),
        secrets: Some(ps),
    };
    tokio::spawn(rollouts::run(
        api.coordinator_client(),
        cfg,
        RolloutPublisher(publisher),
        cancel.clone(),
    ));
    state
}

async fn first_intent(state: &LinkState) -> Intent {
    let mut rx = state.intents.subscribe();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(i) = rx.borrow_and_update().first().cloned() {
                return i;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    got.expect("no intent published")
}

fn gets(api: &MockApi) -> BTreeSet<String> {
    api.requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && (r.path.contains("/secrets/") || r.path.contains("/serviceaccounts/"))
        })
        .map(|r| r.path)
        .collect()
}

/// The rollout's intent carries the entry of its ServiceAccount's pull
/// secret for its image's registry only, read with two gets; a missing
/// secret is skipped, as the kubelet skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_intent_carries_its_service_accounts_pull_secret() {
    let api = api(true);
    let cancel = CancellationToken::new();
    let state = start(&api, &cancel);
    let intent = first_intent(&state).await;
    assert_eq!(intent.nodes, vec!["n1"]);
    assert_eq!(
        intent.credentials,
        vec![RegistryCredential {
            registry: "reg.example:5000".into(),
            username: "robot".into(),
            password: PASSWORD.into(),
            identity_token: String::new(),
            source: "erp/pull".into(),
        }]
    );
    assert_eq!(
        gets(&api),
        BTreeSet::from([
            format!("/api/v1/namespaces/{NS}/serviceaccounts/orders"),
            format!("/api/v1/namespaces/{NS}/secrets/pull"),
            format!("/api/v1/namespaces/{NS}/secrets/gone"),
        ])
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    // Only the named node's share carries it.
    let all = state.intents.borrow().clone();
    assert_eq!(
        super::super::link::intents_for(&all, &Default::default(), "n1").intents[0]
            .credentials
            .len(),
        1
    );
    assert!(
        super::super::link::intents_for(&all, &Default::default(), "n2")
            .intents
            .is_empty()
    );
    cancel.cancel();
}

/// Without the namespace's RoleBinding the intent goes out without
/// credentials (the nodes' own are used); the one refusal is the
/// ServiceAccount read, and nothing else is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_role_binding_the_intent_goes_without_credentials() {
    let api = api(false);
    let cancel = CancellationToken::new();
    let state = start(&api, &cancel);
    let intent = first_intent(&state).await;
    assert_eq!(intent.images, vec![IMAGE]);
    assert!(intent.credentials.is_empty());
    let forbidden: Vec<(String, String)> = api
        .forbidden()
        .into_iter()
        .map(|r| (r.path, r.user))
        .collect();
    assert_eq!(
        forbidden,
        vec![(
            format!("/api/v1/namespaces/{NS}/serviceaccounts/orders"),
            COORDINATOR.to_string()
        )]
    );
    cancel.cancel();
}

fn gated_intent(nodes: &[&str]) -> Intent {
    Intent {
        id: "Gate/erp/Pod/orders-0@1".into(),
        images: vec![IMAGE.into()],
        priority: 1000,
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A gated pod's urgent intent takes the pod's own (admitted) secrets,
/// no ServiceAccount read; a malformed Secret is left out, and an intent
/// without nodes never gets credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pods_intent_takes_the_pods_own_secrets() {
    let api = api(true);
    let mut bad = secret();
    bad["metadata"]["name"] = json!("bad");
    bad["data"][".dockerconfigjson"] = json!(b64("{not json"));
    api.put("api/v1/secrets", bad);
    let cancel = CancellationToken::new();
    let state = LinkState::with_nodes(Vec::new(), cancel.clone());
    let ps = PullSecrets::new(api.coordinator_client(), state.clone(), Default::default());
    tokio::spawn(ps.clone().run(cancel.clone()));
    let pod_secrets = WorkloadSecrets {
        namespace: NS.into(),
        secrets: vec!["bad".into(), "pull".into()],
        service_account: None,
    };
    ps.publish(
        "gate",
        vec![
            (gated_intent(&["n1", "n2"]), pod_secrets.clone()),
            (
                Intent {
                    id: "everywhere".into(),
                    ..gated_intent(&[])
                },
                pod_secrets,
            ),
        ],
    );
    let mut rx = state.intents.subscribe();
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let all = rx.borrow_and_update().clone();
            if all.len() == 2 {
                return all;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("both intents published");
    let gate = all.iter().find(|i| i.id.starts_with("Gate/")).unwrap();
    assert_eq!(gate.credentials.len(), 1, "{gate:?}");
    assert_eq!(gate.credentials[0].source, "erp/pull");
    let everywhere = all.iter().find(|i| i.id == "everywhere").unwrap();
    assert!(everywhere.credentials.is_empty());
    assert!(!gets(&api).iter().any(|p| p.contains("serviceaccounts")));
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());

    // Withdrawn: the link no longer has it.
    ps.publish("gate", Vec::new());
    assert!(state.intents.borrow().is_empty());
    cancel.cancel();
}

/// Debug output of intents, credentials and the cluster view never shows
/// a password or token.
#[tokio::test]
async fn credentials_never_show_in_debug_or_the_view() {
    let mut i = gated_intent(&["n1"]);
    i.credentials = vec![RegistryCredential {
        registry: "reg.example:5000".into(),
        username: "robot".into(),
        password: PASSWORD.into(),
        identity_token: "tok-s3cret".into(),
        source: "erp/pull".into(),
    }];
    let shown = format!(
        "{i:?} {:?} {:#?}",
        i.credentials,
        crate::wire::v1::IntentSet {
            intents: vec![i.clone()],
            ..Default::default()
        }
    );
    assert!(
        !shown.contains(PASSWORD) && !shown.contains("tok-s3cret"),
        "{shown}"
    );
    assert!(
        shown.contains("robot") && shown.contains("erp/pull"),
        "{shown}"
    );

    // The view (as /v1/images serves it) lists the intent's image for the
    // node it targets.
    let snap = crate::wire::v1::Snapshot {
        node: "n1".into(),
        seq: 1,
        ..Default::default()
    };
    let state = LinkState::with_nodes(vec![snap], CancellationToken::new());
    state.publish("test", vec![i]);
    let json = serde_json::to_string(&super::super::http::image_rows(&state)).unwrap();
    assert!(json.contains(IMAGE), "{json}");
    assert!(
        !json.contains(PASSWORD) && !json.contains("tok-s3cret") && !json.contains("robot"),
        "{json}"
    );
}

/// Over a plain-text link (`--insecure`) no intent carries credentials to
/// an agent, whoever published them; over TLS only named nodes get them.
#[test]
fn a_plain_text_link_never_carries_credentials() {
    let mut i = gated_intent(&["n1"]);
    i.credentials = vec![RegistryCredential {
        registry: "reg.example:5000".into(),
        password: PASSWORD.into(),
        source: "erp/pull".into(),
        ..Default::default()
    }];
    let mut everywhere = i.clone();
    everywhere.id = "everywhere".into();
    everywhere.nodes.clear();
    let all = vec![i, everywhere];
    let state = LinkState::with_nodes(Vec::new(), CancellationToken::new());
    let tls = state.share(&all, &Default::default(), "n1");
    let carried: Vec<(&str, usize)> = tls
        .intents
        .iter()
        .map(|i| (i.id.as_str(), i.credentials.len()))
        .collect();
    assert_eq!(
        carried,
        vec![("Gate/erp/Pod/orders-0@1", 1), ("everywhere", 0)]
    );
    state.forbid_credentials();
    let plain = state.share(&all, &Default::default(), "n1");
    assert_eq!(plain.intents.len(), 2);
    assert!(plain.intents.iter().all(|i| i.credentials.is_empty()));
}
