//! View authentication against the in-memory API server's TokenReview and
//! SubjectAccessReview (shipped RBAC), and the cache in front of them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::coordinator::auth::AUDIENCE;
use crate::testkit::apiserver::{BoundToken, Identity, MockApi, Policy, API_AUDIENCE};

fn token(api: &MockApi, token: &str, ns: &str, sa: &str, audience: &str) {
    api.issue_token(
        token,
        BoundToken {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: None,
            node: None,
            audiences: vec![audience.into()],
        },
    );
}

fn viewer() -> Identity {
    Identity::service_account("ops", "viewer")
}

/// A server with the shipped RBAC plus prewarm-view bound to ops/viewer,
/// and tokens for ops/viewer, ops/other and the agent's link.
fn server(policy: Policy) -> MockApi {
    let api = MockApi::with_policy(policy);
    token(&api, "tok-viewer", "ops", "viewer", API_AUDIENCE);
    token(&api, "tok-other", "ops", "other", API_AUDIENCE);
    token(
        &api,
        "tok-agent",
        "prewarm-system",
        "prewarm-agent",
        AUDIENCE,
    );
    api
}

#[tokio::test]
async fn the_view_needs_a_token_whose_user_is_bound_to_prewarm_view() {
    let api = server(Policy::shipped().with_cluster_role_binding(VIEW_ROLE, &viewer()));
    let auth = KubeViewAuth::new(api.coordinator_client());
    let check = |h: Option<&'static str>, path: &'static str| {
        let auth = &auth;
        async move { check(auth, h, path).await }
    };
    assert_eq!(check(None, "/v1/nodes").await, Err(ViewAuthError::Missing));
    assert_eq!(
        check(Some("Basic dXNlcjpwYXNz"), "/v1/nodes").await,
        Err(ViewAuthError::Missing)
    );
    assert!(matches!(
        check(Some("Bearer made-up"), "/v1/nodes").await,
        Err(ViewAuthError::Rejected(_))
    ));
    // The agents' link tokens are for the coordinator's audience, not the
    // API server's.
    assert!(matches!(
        check(Some("Bearer tok-agent"), "/v1/nodes").await,
        Err(ViewAuthError::Rejected(m)) if m.contains("audiences")
    ));
    let other = "system:serviceaccount:ops:other";
    assert_eq!(
        check(Some("Bearer tok-other"), "/v1/nodes").await,
        Err(ViewAuthError::Forbidden {
            user: other.into(),
            path: "/v1/nodes".into()
        })
    );
    let ok = check(Some("bearer tok-viewer"), "/v1/deploys")
        .await
        .unwrap();
    assert_eq!(ok.user, viewer().user);
    assert_eq!(ok.groups, viewer().groups);
    // prewarm-view covers the view's paths and nothing else.
    for path in ["/v1", "/v1x", "/metrics", "/mutate-pods"] {
        assert!(
            matches!(
                check(Some("Bearer tok-viewer"), path).await,
                Err(ViewAuthError::Forbidden { .. })
            ),
            "{path}"
        );
    }
    // TokenReview asked for the API server's audience; SubjectAccessReview
    // for `get` on the path, as the caller with its groups.
    let reqs = api.requests();
    let review = reqs
        .iter()
        .find(|r| r.path.ends_with("/tokenreviews"))
        .unwrap();
    let spec = &review.body.as_ref().unwrap()["spec"];
    assert!(spec.get("audiences").is_none_or(|a| a.is_null()), "{spec}");
    let sar = reqs
        .iter()
        .rev()
        .find(|r| r.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .unwrap();
    let spec = &sar.body.as_ref().unwrap()["spec"];
    assert_eq!(
        spec["nonResourceAttributes"],
        serde_json::json!({"path": "/mutate-pods", "verb": "get"})
    );
    assert_eq!(spec["user"], viewer().user);
    assert_eq!(spec["groups"], serde_json::json!(viewer().groups));
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
}

/// Without `subjectaccessreviews create` the coordinator cannot check a
/// caller: nobody gets in, and the 403 shows where.
#[tokio::test]
async fn without_the_subjectaccessreview_grant_nobody_gets_in() {
    let policy = Policy::shipped()
        .with_cluster_role_binding(VIEW_ROLE, &viewer())
        .without("subjectaccessreviews.authorization.k8s.io", "create");
    let api = server(policy);
    let auth = KubeViewAuth::new(api.coordinator_client());
    let r = check(&auth, Some("Bearer tok-viewer"), "/v1/nodes").await;
    assert!(matches!(r, Err(ViewAuthError::Unavailable(_))), "{r:?}");
    let refused = api.forbidden();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].path.ends_with("/subjectaccessreviews"));
}

/// The fake, counting the reviews it is asked for; `down` answers every
/// review with an API server error.
#[derive(Default)]
struct Counting {
    inner: StaticViewAuth,
    down: bool,
    authn: AtomicUsize,
    authz: AtomicUsize,
}

#[async_trait]
impl ViewAuth for Counting {
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError> {
        self.authn.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(ViewAuthError::Unavailable("connection refused".into()));
        }
        self.inner.authenticate(token).await
    }

    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError> {
        self.authz.fetch_add(1, Ordering::SeqCst);
        self.inner.authorize(caller, path).await
    }
}

fn counting(down: bool) -> Arc<Counting> {
    let caller = Caller {
        user: "alice".into(),
        ..Default::default()
    };
    Arc::new(Counting {
        inner: StaticViewAuth {
            tokens: [("tok-a".to_string(), caller)].into(),
            grants: vec![("alice".into(), "/v1/nodes".into())],
        },
        down,
        ..Default::default()
    })
}

#[async_trait]
impl ViewAuth for Arc<Counting> {
    async fn authenticate(&self, token: &str) -> Result<Caller, ViewAuthError> {
        self.as_ref().authenticate(token).await
    }

    async fn authorize(&self, caller: &Caller, path: &str) -> Result<(), ViewAuthError> {
        self.as_ref().authorize(caller, path).await
    }
}

fn calls(c: &Counting) -> (usize, usize) {
    (
        c.authn.load(Ordering::SeqCst),
        c.authz.load(Ordering::SeqCst),
    )
}

#[tokio::test(start_paused = true)]
async fn answers_are_kept_briefly_and_errors_of_the_moment_not_at_all() {
    let fake = counting(false);
    let cfg = view_cache_config();
    let cached = CachedViewAuth::new(fake.clone(), cfg);
    let bearer = Some("Bearer tok-a");
    for _ in 0..3 {
        check(&cached, bearer, "/v1/nodes").await.unwrap();
    }
    assert_eq!(calls(&fake), (1, 1));
    // Another path: the token is known, the access is asked for.
    let denied = check(&cached, bearer, "/v1/images").await;
    assert!(matches!(denied, Err(ViewAuthError::Forbidden { .. })));
    check(&cached, bearer, "/v1/images").await.unwrap_err();
    assert_eq!(calls(&fake), (1, 2));
    // A refused token is remembered for the negative TTL only.
    for _ in 0..2 {
        check(&cached, Some("Bearer bad"), "/v1/nodes")
            .await
            .unwrap_err();
    }
    assert_eq!(calls(&fake), (2, 2));
    tokio::time::advance(cfg.negative_ttl).await;
    check(&cached, Some("Bearer bad"), "/v1/nodes")
        .await
        .unwrap_err();
    check(&cached, bearer, "/v1/images").await.unwrap_err();
    assert_eq!(calls(&fake), (3, 3), "denial asked again after its TTL");
    check(&cached, bearer, "/v1/nodes").await.unwrap();
    assert_eq!(calls(&fake), (3, 3), "allowed still cached");
    tokio::time::advance(cfg.positive_ttl - cfg.negative_ttl).await;
    check(&cached, bearer, "/v1/nodes").await.unwrap();
    assert_eq!(calls(&fake), (4, 4), "asked again after the positive TTL");

    // An API server error is not remembered.
    let down = counting(true);
    let cached = CachedViewAuth::new(down.clone(), cfg);
    for _ in 0..2 {
        let r = check(&cached, bearer, "/v1/nodes").await;
        assert!(matches!(r, Err(ViewAuthError::Unavailable(_))));
    }
    assert_eq!(calls(&down), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn made_up_tokens_cannot_flood_the_api_server() {
    let fake = counting(false);
    let cfg = CacheConfig {
        reviews_per_second: 1.0,
        burst: 2,
        ..view_cache_config()
    };
    let cached = CachedViewAuth::new(fake.clone(), cfg);
    for t in ["Bearer x1", "Bearer x2"] {
        let r = check(&cached, Some(t), "/v1/nodes").await;
        assert!(matches!(r, Err(ViewAuthError::Rejected(_))), "{r:?}");
    }
    let r = check(&cached, Some("Bearer x3"), "/v1/nodes").await;
    assert_eq!(r, Err(ViewAuthError::RateLimited));
    assert_eq!(calls(&fake), (2, 0));
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    let r = check(&cached, Some("Bearer x3"), "/v1/nodes").await;
    assert!(matches!(r, Err(ViewAuthError::Rejected(_))), "{r:?}");
}
