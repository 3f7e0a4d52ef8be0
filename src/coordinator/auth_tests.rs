//! TokenReview authentication against the in-memory API server, as the
//! coordinator's ServiceAccount.

use serde_json::json;

use super::*;
use crate::testkit::apiserver::{BoundToken, MockApi};

fn agent_token(node: Option<&str>, audience: &str) -> BoundToken {
    BoundToken {
        namespace: "prewarm-node".into(),
        service_account: "prewarm-agent".into(),
        pod: Some("prewarm-agent-x7k2p".into()),
        node: node.map(str::to_string),
        audiences: vec![audience.into()],
    }
}

fn auth(api: &MockApi) -> TokenReviewAuth {
    TokenReviewAuth::new(
        api.coordinator_client(),
        AUDIENCE,
        "prewarm-node",
        "prewarm-agent",
    )
}

#[tokio::test]
async fn a_pod_bound_agent_token_names_its_node() {
    let api = MockApi::new();
    api.issue_token("good", agent_token(Some("aks-int-1"), AUDIENCE));
    assert_eq!(auth(&api).node_of("good").await, Ok("aks-int-1".into()));
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}

/// Older API servers bind the token to the pod only: its node is read from
/// the pod.
#[tokio::test]
async fn a_token_bound_to_a_pod_only_is_resolved_through_the_pod() {
    let api = MockApi::new();
    api.issue_token("pod-only", agent_token(None, AUDIENCE));
    api.put(
        "api/v1/pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "prewarm-agent-x7k2p", "namespace": "prewarm-node"},
               "spec": {"nodeName": "aks-int-2", "containers": []}}),
    );
    assert_eq!(auth(&api).node_of("pod-only").await, Ok("aks-int-2".into()));
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}

/// The pod fallback reads pods in the agents' namespace only: the Role
/// that grants `get` lives in prewarm-node, no longer cluster-wide. A
/// coordinator pointed at another agent namespace (here the old layout,
/// agents beside it in prewarm-system) is refused, and says it cannot
/// resolve the token rather than accepting it.
#[tokio::test]
async fn the_pod_fallback_is_refused_outside_the_agents_namespace() {
    let api = MockApi::new();
    let mut token = agent_token(None, AUDIENCE);
    token.namespace = "prewarm-system".into();
    api.issue_token("pod-only", token);
    api.put(
        "api/v1/pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "prewarm-agent-x7k2p", "namespace": "prewarm-system"},
               "spec": {"nodeName": "aks-int-2", "containers": []}}),
    );
    let a = TokenReviewAuth::new(
        api.coordinator_client(),
        AUDIENCE,
        "prewarm-system",
        "prewarm-agent",
    );
    let got = a.node_of("pod-only").await;
    assert!(
        matches!(&got, Err(AuthError::Unavailable(m)) if m.contains("forbidden")),
        "{got:?}"
    );
    let refused: Vec<(String, String)> = api
        .forbidden()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        refused,
        vec![(
            "GET".to_string(),
            "/api/v1/namespaces/prewarm-system/pods/prewarm-agent-x7k2p".to_string()
        )]
    );
}

#[tokio::test]
async fn foreign_tokens_are_refused() {
    let api = MockApi::new();
    api.issue_token(
        "kubelet-audience",
        agent_token(Some("n1"), "https://kubernetes.default.svc"),
    );
    let mut other = agent_token(Some("n1"), AUDIENCE);
    other.service_account = "default".into();
    api.issue_token("other-sa", other);
    let a = auth(&api);
    assert_eq!(a.node_of("").await, Err(AuthError::Missing));
    assert!(matches!(
        a.node_of("kubelet-audience").await,
        Err(AuthError::Rejected(_))
    ));
    assert!(matches!(
        a.node_of("unknown").await,
        Err(AuthError::Rejected(_))
    ));
    assert_eq!(
        a.node_of("other-sa").await,
        Err(AuthError::WrongIdentity(
            "system:serviceaccount:prewarm-node:default".into()
        ))
    );
    let mut unbound = agent_token(None, AUDIENCE);
    unbound.pod = None;
    api.issue_token("unbound", unbound);
    assert_eq!(a.node_of("unbound").await, Err(AuthError::Unbound));
}

/// The API server failing is an error of its own (not a refused token).
#[tokio::test]
async fn an_api_server_error_is_unavailable() {
    let api = MockApi::new();
    api.issue_token("good", agent_token(Some("aks-int-1"), AUDIENCE));
    api.set_outage(crate::testkit::apiserver::Outage::Refuse);
    let got = auth(&api).node_of("good").await;
    assert!(matches!(got, Err(AuthError::Unavailable(_))), "{got:?}");
}

// ---- the cache and rate limit in front of TokenReviewAuth ----

use super::super::auth_cache::{CacheConfig, CachedAuth};
use std::time::Duration;

fn reviews(api: &MockApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/tokenreviews"))
        .count()
}

fn cached(api: &MockApi, cfg: CacheConfig) -> CachedAuth<TokenReviewAuth> {
    CachedAuth::new(auth(api), cfg)
}

#[tokio::test(start_paused = true)]
async fn a_valid_token_is_reviewed_once_a_minute() {
    let api = MockApi::new();
    api.issue_token("good", agent_token(Some("aks-int-1"), AUDIENCE));
    let a = cached(&api, CacheConfig::default());
    for _ in 0..5 {
        assert_eq!(a.node_of("good").await, Ok("aks-int-1".into()));
    }
    assert_eq!(reviews(&api), 1, "reconnects are served from the cache");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(a.node_of("good").await, Ok("aks-int-1".into()));
    assert_eq!(reviews(&api), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(a.node_of("good").await, Ok("aks-int-1".into()));
    assert_eq!(reviews(&api), 2, "reviewed again after the TTL");
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_remembered_for_less_time() {
    let api = MockApi::new();
    let a = cached(&api, CacheConfig::default());
    for _ in 0..3 {
        assert!(matches!(
            a.node_of("forged").await,
            Err(AuthError::Rejected(_))
        ));
    }
    assert_eq!(reviews(&api), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    // Issued meanwhile (a token the API server did not know yet).
    api.issue_token("forged", agent_token(Some("n1"), AUDIENCE));
    assert_eq!(a.node_of("forged").await, Ok("n1".into()));
    assert_eq!(reviews(&api), 2);
}

#[tokio::test(start_paused = true)]
async fn an_api_error_is_not_remembered() {
    let api = MockApi::new();
    api.issue_token("good", agent_token(Some("n1"), AUDIENCE));
    let a = cached(&api, CacheConfig::default());
    api.set_outage(crate::testkit::apiserver::Outage::Refuse);
    assert!(matches!(
        a.node_of("good").await,
        Err(AuthError::Unavailable(_))
    ));
    api.set_outage(crate::testkit::apiserver::Outage::None);
    assert_eq!(a.node_of("good").await, Ok("n1".into()));
    assert_eq!(reviews(&api), 1, "the outage's refusal is not recorded");
}

/// A JWT's own expiry bounds its entry.
#[tokio::test(start_paused = true)]
async fn a_token_is_not_trusted_past_its_expiry() {
    use base64::Engine as _;
    let exp = chrono::Utc::now().timestamp() + 5;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"exp": exp, "sub": "x"})).unwrap());
    let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln");
    assert_eq!(super::super::auth_cache::jwt_expiry(&jwt), Some(exp));
    let api = MockApi::new();
    api.issue_token(&jwt, agent_token(Some("n1"), AUDIENCE));
    let a = cached(&api, CacheConfig::default());
    assert_eq!(a.node_of(&jwt).await, Ok("n1".into()));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(a.node_of(&jwt).await, Ok("n1".into()));
    assert_eq!(reviews(&api), 1);
    // Paused tokio time does not move the wall clock the expiry is read
    // against; an entry is capped at the time left when it was made.
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(a.node_of(&jwt).await, Ok("n1".into()));
    assert_eq!(reviews(&api), 2, "cached past the token's exp");
}

#[tokio::test(start_paused = true)]
async fn reviews_beyond_the_rate_are_refused_not_made() {
    let api = MockApi::new();
    for t in ["t1", "t2", "t3"] {
        api.issue_token(t, agent_token(Some(t), AUDIENCE));
    }
    let cfg = CacheConfig {
        reviews_per_second: 1.0,
        burst: 2,
        ..CacheConfig::default()
    };
    let a = cached(&api, cfg);
    assert_eq!(a.node_of("t1").await, Ok("t1".into()));
    assert_eq!(a.node_of("t2").await, Ok("t2".into()));
    assert_eq!(a.node_of("t3").await, Err(AuthError::RateLimited));
    // Cached tokens need no review, so they still get in.
    assert_eq!(a.node_of("t1").await, Ok("t1".into()));
    assert_eq!(reviews(&api), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(a.node_of("t3").await, Ok("t3".into()));
    assert_eq!(reviews(&api), 3);
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded() {
    let api = MockApi::new();
    let cfg = CacheConfig {
        max_entries: 2,
        ..CacheConfig::default()
    };
    let a = cached(&api, cfg);
    for i in 0..10 {
        let t = format!("t{i}");
        api.issue_token(&t, agent_token(Some("n1"), AUDIENCE));
        assert_eq!(a.node_of(&t).await, Ok("n1".into()));
        assert!(a.len() <= 2, "{} entries", a.len());
    }
    assert_eq!(reviews(&api), 10);
}
