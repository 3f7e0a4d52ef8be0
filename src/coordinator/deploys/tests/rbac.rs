//! Deploy groups against the RBAC as installed: the shipped ClusterRoles,
//! and for a namespace that runs DeployGroups its RoleBinding to ClusterRole
//! prewarm-deploygroup (config/integrations-deploygroup.yaml). The other
//! scenarios of this folder run with that RoleBinding; these run without it.

use std::collections::BTreeSet;

use super::*;
use crate::testkit::apiserver::Identity;

const COORDINATOR: &str = "system:serviceaccount:prewarm-system:prewarm-coordinator";

/// Without the namespace's RoleBinding the coordinator touches nothing
/// there: its first write (pausing the member) is refused, and the group's
/// status and a Warning Event name the missing RoleBinding. (Reading the
/// namespace's ScaledObjects works: the coordinator's ClusterRole lists them
/// everywhere, read-only, for KEDA windows.)
#[tokio::test]
async fn without_the_namespaces_role_binding_the_status_names_it() {
    let api = MockApi::new();
    api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, false));
    api.put(SCALED, scaled_object(NS, "orders-so", "orders"));
    api.put(
        GROUPS,
        group(GROUP_NAME, json!([{"deployment": "orders"}]), json!({})),
    );
    let h = Harness::start(&api, true, vec![snap("n1", "apps", &[])]);
    let refused = format!(
        "deployments.apps \"orders\" is forbidden: User \"{COORDINATOR}\" cannot patch resource \
         \"deployments\" in API group \"apps\" in the namespace \"{NS}\""
    );
    let message = format!(
        "no RoleBinding in namespace {NS} grants ClusterRole prewarm-deploygroup to \
         ServiceAccount prewarm-system/prewarm-coordinator; create one to run DeployGroups \
         here (config/integrations-deploygroup.yaml): {refused}"
    );
    let st = wait_status(&api, GROUP_NAME, "refused", |s| s["message"] == message).await;
    assert_eq!(st["phase"], "Idle", "{st:#}");
    // Reconciled again and again, refused each time, written once.
    let again = api
        .wait_for(WAIT, |r| r.iter().filter(|r| r.code == 403).count() >= 3)
        .await;
    assert!(again, "{:#?}", api.requests());
    let forbidden: BTreeSet<(String, String, String)> = api
        .forbidden()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.user.clone()))
        .collect();
    let patch = format!("/apis/apps/v1/namespaces/{NS}/deployments/orders");
    assert_eq!(
        forbidden,
        BTreeSet::from([("PATCH".to_string(), patch, COORDINATOR.to_string())])
    );
    assert_eq!(
        writes_to(&api.requests(), &status_path(GROUP_NAME)).len(),
        1
    );
    assert_group_event(&api, GROUP_NAME, "Forbidden", &message);
    // Not adopted: the member is left unpaused, nothing else written (its
    // pause is attempted and refused each round, nothing more).
    let accepted: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.code != 403)
        .collect();
    assert_eq!(member_writes(&accepted), vec![]);
    let d = api.object(DEPLOYMENTS, NS, "orders").unwrap();
    assert_eq!(d["spec"]["paused"], false);
    h.stop_refused().await;
}

/// The narrowing itself: the shipped ClusterRole no longer lets the
/// coordinator patch Deployments, touch Jobs or ScaledObjects anywhere; the
/// example's RoleBinding grants exactly that in its own namespace.
#[tokio::test]
async fn deploy_group_writes_are_granted_per_namespace_only() {
    let shipped = MockApi::new();
    let bound = api();
    for api in [&shipped, &bound] {
        api.put(DEPLOYMENTS, deployment("orders", ORDERS_1, false));
        let mut other = deployment("orders", ORDERS_1, false);
        other["metadata"]["namespace"] = json!("shop");
        api.put(DEPLOYMENTS, other);
    }
    let pause = Patch::Merge(json!({"spec": {"paused": true}}));
    let pp = PatchParams::default();
    let code = |r: Result<Deployment, kube::Error>| match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("{e}"),
    };
    let in_ns = |api: &MockApi, ns: &str| -> Api<Deployment> {
        Api::namespaced(api.client_as(Identity::coordinator()), ns)
    };
    assert_eq!(
        code(in_ns(&shipped, NS).patch("orders", &pp, &pause).await),
        403
    );
    assert_eq!(
        code(in_ns(&bound, NS).patch("orders", &pp, &pause).await),
        200
    );
    assert_eq!(
        code(in_ns(&bound, "shop").patch("orders", &pp, &pause).await),
        403
    );
    let jobs: Api<Job> = Api::namespaced(bound.coordinator_client(), "shop");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "j"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let created = jobs.create(&PostParams::default(), &job).await;
    assert!(
        matches!(created, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{created:?}"
    );
    let refused: Vec<(String, String)> = [&shipped, &bound]
        .iter()
        .flat_map(|a| a.forbidden())
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        refused,
        vec![
            (
                "PATCH".to_string(),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/orders")
            ),
            (
                "PATCH".to_string(),
                "/apis/apps/v1/namespaces/shop/deployments/orders".to_string()
            ),
            (
                "POST".to_string(),
                "/apis/batch/v1/namespaces/shop/jobs".to_string()
            ),
        ]
    );
}
