//! Where HTTP checks may go: in-cluster Service names by default, other
//! hosts only with the operator's opt-in, never an IP literal, and never a
//! redirect's target.

use super::*;

/// orders, HTTP-checked at `url`; n1 already holds its next image.
fn checked_group(api: &MockApi, url: &str, overrides: Value) -> Vec<Snapshot> {
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, true));
    api.put(
        GROUPS,
        group(
            GROUP_NAME,
            json!([{"deployment": "orders", "httpCheck": {"url": url, "interval": "200ms"}}]),
            overrides,
        ),
    );
    roll_unpaused(api);
    vec![snap("n1", "apps", &[ORDERS_2])]
}

fn refused(url: &str, why: &str) -> String {
    format!("member orders: spec.members[0].httpCheck.url \"{url}\" is refused: {why}")
}

/// Without the opt-in, a check URL naming a host outside the cluster makes
/// the group Invalid (status and Warning Event name the field and the
/// flag), nothing is adopted and the endpoint never sees a request, even
/// after the member changes. With `--http-check-allow-host localhost` the
/// same group steps and the check is made.
#[tokio::test]
async fn a_check_outside_the_cluster_is_refused_unless_allowed() {
    let ep = Endpoint::start(200).await;
    let api = super::api();
    let nodes = checked_group(&api, &ep.url, json!({}));
    let opts = DeployOptions {
        http_checks: deploy::HttpCheckPolicy::default(),
        ..opts()
    };
    let h = Harness::start_with(&api, opts, true, nodes.clone());
    let st = wait_status(&api, GROUP_NAME, "invalid", |s| s["phase"] == "Invalid").await;
    let message = refused(
        &ep.url,
        "host localhost is not an in-cluster Service name (<service>.<namespace>.svc or \
         <service>.<namespace>.svc.cluster.local); the coordinator fetches other hosts only \
         when allowed with --http-check-allow-host",
    );
    assert_eq!(
        st,
        json!({"phase": "Invalid", "message": message, "observedGeneration": 1,
               "deployed": {}, "results": []})
    );
    assert_group_event(&api, GROUP_NAME, "Invalid", &message);
    set_image(&api, "orders", ORDERS_2);
    let hit = api.wait_for(QUIET, |_| ep.hits() > 0).await;
    assert!(!hit, "a refused check was fetched");
    assert!(member_writes(&api.requests()).is_empty());
    assert_eq!(status(&api, GROUP_NAME)["phase"], "Invalid");
    h.stop().await;

    // The same group with the opt-in.
    let api = super::api();
    let nodes = checked_group(&api, &ep.url, json!({}));
    let h = Harness::start(&api, true, nodes);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "succeeded", |s| {
        result_of(s, "orders")["result"] == "Succeeded"
    })
    .await;
    assert_eq!(
        result_of(&st, "orders")["reason"],
        "ready; HTTP check passed"
    );
    assert!(ep.hits() > 0);
    h.stop().await;
}

/// An IP literal is refused even with an allow list, in any spelling.
#[tokio::test]
async fn a_check_to_an_ip_literal_is_refused_even_when_other_hosts_are_allowed() {
    let ep = Endpoint::start(200).await;
    let port = ep.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/healthz"),
        format!("http://2130706433:{port}/healthz"),
        format!("http://0x7f.1:{port}/healthz"),
    ] {
        let api = super::api();
        let nodes = checked_group(&api, &url, json!({}));
        let h = Harness::start(&api, true, nodes);
        let st = wait_status(&api, GROUP_NAME, "invalid", |s| s["phase"] == "Invalid").await;
        let why = "its host is the IP address 127.0.0.1; name a Service (or a host allowed \
                   with --http-check-allow-host) instead";
        assert_eq!(st["message"], refused(&url, why));
        set_image(&api, "orders", ORDERS_2);
        let hit = api.wait_for(QUIET / 3, |_| ep.hits() > 0).await;
        assert!(!hit, "{url} was fetched");
        h.stop().await;
    }
}

/// A local endpoint that answers every request with a redirect to
/// `location`, counting them.
async fn redirecting(location: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let (h, location) = (h.clone(), location.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let found = axum::http::StatusCode::FOUND;
                (found, [(axum::http::header::LOCATION, location)], "moved")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://localhost:{port}/healthz"), hits)
}

/// An allowed host that redirects cannot bounce the check elsewhere: the
/// redirect's target never sees a request, and the 3xx fails the check
/// with a message that says so.
#[tokio::test]
async fn a_redirect_is_not_followed() {
    let elsewhere = Endpoint::start(200).await;
    let (url, hits) = redirecting(elsewhere.url.clone()).await;
    let api = super::api();
    let nodes = checked_group(&api, &url, json!({"validationTimeout": "2s"}));
    let h = Harness::start(&api, true, nodes);
    wait_status(&api, GROUP_NAME, "adopted", |s| s["phase"] == "Idle").await;
    set_image(&api, "orders", ORDERS_2);
    let st = wait_status(&api, GROUP_NAME, "halted", |s| s["phase"] == "Halted").await;
    let target = &elsewhere.url;
    let reason = format!(
        "validation timed out after 2s: HTTP check {url} failed: GET {url}: HTTP 302 Found, \
         redirecting to {target}; redirects are not followed"
    );
    assert_eq!(result_of(&st, "orders")["reason"], reason);
    assert!(hits.load(Ordering::SeqCst) >= 2, "the check was retried");
    assert_eq!(elsewhere.hits(), 0, "the redirect was followed");
    h.stop().await;
}
