//! TokenReview authentication against the in-memory API server, as the
//! coordinator's ServiceAccount.

use serde_json::json;

use super::*;
use crate::testkit::apiserver::{BoundToken, MockApi};

fn agent_token(node: Option<&str>, audience: &str) -> BoundToken {
    BoundToken {
        namespace: "prewarm-system".into(),
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
        "prewarm-system",
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
               "metadata": {"name": "prewarm-agent-x7k2p", "namespace": "prewarm-system"},
               "spec": {"nodeName": "aks-int-2", "containers": []}}),
    );
    assert_eq!(auth(&api).node_of("pod-only").await, Ok("aks-int-2".into()));
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
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
            "system:serviceaccount:prewarm-system:default".into()
        ))
    );
    let mut unbound = agent_token(None, AUDIENCE);
    unbound.pod = None;
    api.issue_token("unbound", unbound);
    assert_eq!(a.node_of("unbound").await, Err(AuthError::Unbound));
}
