//! Who is calling: agents present a projected ServiceAccount token with a
//! dedicated audience; the coordinator validates it with TokenReview and
//! binds the stream to the node the agent's pod runs on.

use std::collections::HashMap;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// The audience agents request for their projected token.
pub const AUDIENCE: &str = "prewarm.dev/coordinator";
/// Extra fields the API server adds to pod-bound ServiceAccount tokens.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("token is not the agent's ServiceAccount: {0}")]
    WrongIdentity(String),
    #[error("token is not bound to a pod on a node")]
    Unbound,
    #[error("cannot review token: {0}")]
    Unavailable(String),
    #[error("too many token reviews right now; retry later")]
    RateLimited,
}

/// Validates a bearer token and returns the node it is bound to.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn node_of(&self, token: &str) -> Result<String, AuthError>;
}

/// TokenReview against the API server.
pub struct TokenReviewAuth {
    client: kube::Client,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    agent_user: String,
    /// The agents' namespace, where their pods are read.
    agent_namespace: String,
}

impl TokenReviewAuth {
    pub fn new(
        client: kube::Client,
        audience: &str,
        namespace: &str,
        service_account: &str,
    ) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            agent_user: format!("system:serviceaccount:{namespace}:{service_account}"),
            agent_namespace: namespace.to_string(),
        }
    }
}

/// What a TokenReview said of a token.
pub(crate) enum Review {
    Authenticated(UserInfo),
    /// Why not, in the API server's words.
    Rejected(String),
}

/// Asks the API server who `token` is, for `audiences` (None: the API
/// server's own). Agents' link tokens and the view's callers both go here.
pub(crate) async fn review_token(
    client: &kube::Client,
    token: &str,
    audiences: Option<Vec<String>>,
) -> Result<Review, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences,
        },
        ..Default::default()
    };
    let out = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = out.status.unwrap_or_default();
    Ok(match status.authenticated {
        Some(true) => Review::Authenticated(status.user.unwrap_or_default()),
        _ => Review::Rejected(status.error.unwrap_or_else(|| "not authenticated".into())),
    })
}

#[async_trait]
impl Authenticator for TokenReviewAuth {
    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let audiences = Some(vec![self.audience.clone()]);
        let user = match review_token(&self.client, token, audiences).await {
            Ok(Review::Authenticated(user)) => user,
            Ok(Review::Rejected(why)) => return Err(AuthError::Rejected(why)),
            Err(e) => return Err(AuthError::Unavailable(e.to_string())),
        };
        let name = user.username.unwrap_or_default();
        if name != self.agent_user {
            return Err(AuthError::WrongIdentity(name));
        }
        let extra = user.extra.unwrap_or_default();
        if let Some(node) = extra.get(NODE_NAME_EXTRA).and_then(|v| v.first()) {
            return Ok(node.clone());
        }
        // Older API servers bind tokens to the pod only: ask where it runs.
        let pod = extra
            .get(POD_NAME_EXTRA)
            .and_then(|v| v.first())
            .ok_or(AuthError::Unbound)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.agent_namespace);
        let p = pods
            .get(pod)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        p.spec.and_then(|s| s.node_name).ok_or(AuthError::Unbound)
    }
}

/// Fixed tokens, for tests and for running outside a cluster.
pub struct StaticAuth(pub HashMap<String, String>);

#[async_trait]
impl Authenticator for StaticAuth {
    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Rejected("unknown token".into()))
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
