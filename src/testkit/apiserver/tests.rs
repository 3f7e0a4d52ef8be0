//! The in-memory API server against kube's own client.
use super::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ns", "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "r/a:1"}]}})
}

#[test]
fn paths_parse() {
    let t = parse_path("/apis/apps/v1/namespaces/ns/deployments/d/status").unwrap();
    assert_eq!(t.resource, "apis/apps/v1/deployments");
    assert_eq!(t.namespace.as_deref(), Some("ns"));
    assert_eq!(t.name.as_deref(), Some("d"));
    assert_eq!(t.subresource.as_deref(), Some("status"));
    let t = parse_path("/api/v1/namespaces/ns").unwrap();
    assert_eq!(
        (t.resource.as_str(), t.name.as_deref()),
        ("api/v1/namespaces", Some("ns"))
    );
    assert_eq!(parse_path("/api/v1/pods").unwrap().namespace, None);
    assert!(parse_path("/healthz").is_none());
}

#[tokio::test]
async fn lists_by_selector_patches_and_records() {
    let api = MockApi::new();
    api.put("api/v1/pods", pod("a", json!({"gate": "true"})));
    api.put("api/v1/pods", pod("b", json!({})));
    let pods: Api<Pod> = Api::namespaced(api.client_as(Identity::admin()), "ns");
    let listed = pods
        .list(&kube::api::ListParams::default().labels("gate=true"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let ops = json!([{"op": "test", "path": "/metadata/name", "value": "a"},
                     {"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]);
    let p: json_patch::Patch = serde_json::from_value(ops.clone()).unwrap();
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(p))
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["x"], "y");
    let w = api.writes();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].body.as_ref(), Some(&ops));
    assert!(w[0].content_type.starts_with("application/json-patch+json"));
    // A failing test op is refused and changes nothing.
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "z"}]))
            .unwrap();
    assert!(pods
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(bad))
        .await
        .is_err());
    // Creating an existing object is a conflict.
    let dup: Pod = serde_json::from_value(pod("a", json!({}))).unwrap();
    let err = pods.create(&PostParams::default(), &dup).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[tokio::test]
async fn watch_delivers_later_changes() {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let api = MockApi::new();
    api.put("api/v1/pods", pod("a", json!({"gate": "true"})));
    let pods: Api<Pod> = Api::all(api.client_as(Identity::admin()));
    let cfg = watcher::Config::default().labels("gate=true");
    let mut stream = watcher::watcher(pods, cfg).boxed();
    let mut seen = Vec::new();
    let feeder = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        feeder.put("api/v1/pods", pod("b", json!({})));
        feeder.put("api/v1/pods", pod("c", json!({"gate": "true"})));
    });
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
            seen.push(p.metadata.name.unwrap_or_default());
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, vec!["a", "c"]);
}

// ---- the real server's answers, where prewarm meets them ----

fn err_of<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn rbac_refuses_what_no_rule_allows_with_the_real_message() {
    let api = MockApi::new();
    api.put("api/v1/pods", pod("a", json!({})));
    api.put(
        "api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
    );
    // The agent may read Nodes one by one, nothing else.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(api.agent_client());
    assert!(nodes.get("n1").await.is_ok());
    let e = err_of(nodes.list(&Default::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "nodes is forbidden: User \"system:serviceaccount:prewarm-node:prewarm-agent\" \
         cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let pods: Api<Pod> = Api::namespaced(api.agent_client(), "ns");
    let e = err_of(pods.get("a").await);
    assert_eq!(
        e.message,
        "pods \"a\" is forbidden: User \"system:serviceaccount:prewarm-node:prewarm-agent\" \
         cannot get resource \"pods\" in API group \"\" in the namespace \"ns\""
    );
    // Refusals are recorded with their code; an unknown caller gets nothing.
    assert_eq!(api.forbidden().len(), 2);
    let stranger = Identity::service_account("ns", "default");
    let pods: Api<Pod> = Api::namespaced(api.client_as(stranger), "ns");
    assert_eq!(err_of(pods.get("a").await).code, 403);
}

#[tokio::test]
async fn rbac_resource_names_and_role_namespaces_bind() {
    use k8s_openapi::api::coordination::v1::Lease;
    let api = MockApi::new();
    let lease = |ns: &str, name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "namespace": ns}, "spec": {}})
    };
    api.put(
        "apis/coordination.k8s.io/v1/leases",
        lease("prewarm-system", "prewarm-coordinator"),
    );
    api.put(
        "apis/coordination.k8s.io/v1/leases",
        lease("prewarm-system", "other"),
    );
    api.put(
        "apis/coordination.k8s.io/v1/leases",
        lease("erp", "prewarm-coordinator"),
    );
    let own: Api<Lease> = Api::namespaced(api.coordinator_client(), "prewarm-system");
    assert!(own.get("prewarm-coordinator").await.is_ok());
    // The Role names one Lease, in its own namespace only.
    assert_eq!(err_of(own.get("other").await).code, 403);
    let elsewhere: Api<Lease> = Api::namespaced(api.coordinator_client(), "erp");
    assert_eq!(err_of(elsewhere.get("prewarm-coordinator").await).code, 403);
}

#[tokio::test]
async fn stale_resource_versions_conflict_and_custom_resources_need_one() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let api = MockApi::new();
    let admin = api.client_as(Identity::admin());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), "ns");
    let created = leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let mut first = created.clone();
    first.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let updated = leases
        .replace("l", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    // The same version again is stale now.
    let mut second = created.clone();
    second.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let e = err_of(leases.replace("l", &PostParams::default(), &second).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );
    // A merge patch carrying a resourceVersion is a precondition too.
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version},
                       "spec": {"holderIdentity": "d"}});
    let e = err_of(
        leases
            .patch("l", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!(e.code, 409);
    // A custom resource cannot be replaced without a resourceVersion.
    let gvk = GroupVersionKind::gvk("prewarm.dev", "v1alpha1", "DeployGroup");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "deploygroups");
    let groups: Api<DynamicObject> = Api::namespaced_with(admin, "ns", &ar);
    let g: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
        "metadata": {"name": "g"}, "spec": {"members": []}}))
    .unwrap();
    let mut stored = groups.create(&PostParams::default(), &g).await.unwrap();
    stored.metadata.resource_version = None;
    let e = err_of(groups.replace("g", &PostParams::default(), &stored).await);
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("metadata.resourceVersion"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn status_subresources_split_what_a_write_may_change() {
    let api = MockApi::new();
    api.put(
        "apis/apps/v1/deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "d", "namespace": "ns", "generation": 1},
               "spec": {"paused": true}, "status": {"replicas": 1}}),
    );
    let client = api.client_as(Identity::admin());
    let ds: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, "ns");
    // Through the object: the spec changes, the status is kept.
    let p = json!({"spec": {"paused": false}, "status": {"replicas": 9}});
    let d = ds
        .patch("d", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(false));
    assert_eq!(d.status.as_ref().unwrap().replicas, Some(1));
    assert_eq!(d.metadata.generation, Some(2));
    // Through /status: only the status changes, and no generation.
    let p = json!({"spec": {"paused": true}, "status": {"replicas": 3}});
    let d = ds
        .patch_status("d", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(false));
    assert_eq!(d.status.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(2));
    // A write that changes nothing keeps the version and wakes no watcher.
    let before = api.object("apis/apps/v1/deployments", "ns", "d").unwrap();
    let p = json!({"spec": {"paused": false}});
    ds.patch("d", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(
        api.object("apis/apps/v1/deployments", "ns", "d").unwrap(),
        before
    );
}

fn gated(affinity: Value, node_selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "g", "namespace": "ns"},
           "spec": {"containers": [{"name": "c", "image": "r/a:1"}],
                    "schedulingGates": [{"name": "prewarm.dev/warm"}, {"name": "other"}],
                    "nodeSelector": node_selector, "affinity": affinity}})
}

fn term(exprs: Value) -> Value {
    json!({"matchExpressions": exprs})
}

fn required(terms: Value) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}})
}

async fn json_patch(api: &MockApi, ops: Value) -> Result<Pod, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(api.client_as(Identity::admin()), "ns");
    let p: json_patch::Patch = serde_json::from_value(ops).unwrap();
    pods.patch("g", &PatchParams::default(), &Patch::Json::<()>(p))
        .await
}

#[tokio::test]
async fn a_gated_pod_may_only_be_narrowed() {
    let zone = json!({"key": "zone", "operator": "In", "values": ["a"]});
    let host = json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]});
    let api = MockApi::new();
    api.put(
        "api/v1/pods",
        gated(required(json!([term(json!([zone]))])), json!({"pool": "p"})),
    );
    // Appending a requirement to the term and a nodeSelector key: narrowing.
    json_patch(&api, json!([
        {"op": "add", "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/-", "value": host},
        {"op": "add", "path": "/spec/nodeSelector/disk", "value": "ssd"}]))
    .await
    .unwrap();
    // A second term widens (terms are ORed).
    let e = err_of(json_patch(&api, json!([{"op": "add",
        "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/-",
        "value": term(json!([host]))}])).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(e.message.starts_with("Pod \"g\" is invalid: spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: Invalid value: "), "{}", e.message);
    assert!(e
        .message
        .ends_with("no additions/deletions to non-empty NodeSelectorTerms list are allowed"));
    // Changing an existing requirement or selector value is not narrowing.
    let e = err_of(json_patch(&api, json!([{"op": "replace",
        "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0/values/0", "value": "b"}])).await);
    assert!(
        e.message.contains("nodeSelectorTerms[0]: Invalid value: ")
            && e.message
                .ends_with("only additions are allowed (no mutations or deletions)"),
        "{}",
        e.message
    );
    let e = err_of(
        json_patch(
            &api,
            json!([{"op": "replace", "path": "/spec/nodeSelector/pool", "value": "q"}]),
        )
        .await,
    );
    assert!(
        e.message.contains(
            "only additions to spec.nodeSelector are allowed (no mutations or deletions)"
        ),
        "{}",
        e.message
    );
    // A gate may be removed, never added.
    let e = err_of(
        json_patch(
            &api,
            json!([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "x"}}]),
        )
        .await,
    );
    assert_eq!(e.message, "Pod \"g\" is invalid: spec.schedulingGates[2].name: Forbidden: only deletion is allowed, but found new scheduling gate 'x'");
    // Other spec fields are not scheduling directives.
    let e = err_of(
        json_patch(
            &api,
            json!([{"op": "add", "path": "/spec/hostNetwork", "value": true}]),
        )
        .await,
    );
    assert!(
        e.message
            .contains("spec: Forbidden: pod updates may not change fields other than"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn a_pod_without_gates_may_not_be_narrowed_any_more() {
    let api = MockApi::new();
    api.put("api/v1/pods", gated(json!({}), json!({})));
    // With no required affinity yet, a gated pod may get any.
    json_patch(&api, json!([{"op": "add", "path": "/spec/affinity/nodeAffinity",
        "value": required(json!([term(json!([{"key": "k", "operator": "Exists"}]))]))["nodeAffinity"]}]))
    .await
    .unwrap();
    json_patch(
        &api,
        json!([{"op": "remove", "path": "/spec/schedulingGates"}]),
    )
    .await
    .unwrap();
    let e = err_of(
        json_patch(
            &api,
            json!([{"op": "add", "path": "/spec/nodeSelector/pool", "value": "p"}]),
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.starts_with(
            "Pod \"g\" is invalid: spec: Forbidden: pod updates may not change fields"
        ),
        "{}",
        e.message
    );
    // The image stays mutable.
    json_patch(
        &api,
        json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "r/a:2"}]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn leases_events_and_token_reviews_are_checked() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Event;
    let api = MockApi::new();
    let admin = api.client_as(Identity::admin());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "ns");
    let l: Lease = serde_json::from_value(
        json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 15}}),
    )
    .unwrap();
    leases.create(&PostParams::default(), &l).await.unwrap();
    let e = err_of(leases.create(&PostParams::default(), &l).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, "leases.coordination.k8s.io \"l\" already exists");
    let zero: Lease = serde_json::from_value(
        json!({"metadata": {"name": "z"}, "spec": {"leaseDurationSeconds": 0}}),
    )
    .unwrap();
    let e = err_of(leases.create(&PostParams::default(), &zero).await);
    assert_eq!(e.message, "Lease \"z\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0");

    let events: Api<Event> = Api::namespaced(admin.clone(), "ns");
    let ev: Event = serde_json::from_value(json!({"metadata": {"name": "e"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}}))
    .unwrap();
    let e = err_of(events.create(&PostParams::default(), &ev).await);
    assert!(
        e.message.ends_with(
            "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"
        ),
        "{}",
        e.message
    );

    api.issue_token(
        "t1",
        BoundToken {
            namespace: "prewarm-node".into(),
            service_account: "prewarm-agent".into(),
            pod: Some("prewarm-agent-x".into()),
            node: Some("n1".into()),
            audiences: vec!["prewarm.dev/coordinator".into()],
        },
    );
    let reviews: Api<TokenReview> = Api::all(api.coordinator_client());
    let review = |token: &str, aud: &str| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": [aud]}})).unwrap()
    };
    let ok = reviews
        .create(
            &PostParams::default(),
            &review("t1", "prewarm.dev/coordinator"),
        )
        .await
        .unwrap();
    let st = ok.status.unwrap();
    assert_eq!(st.authenticated, Some(true));
    let user = st.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:prewarm-node:prewarm-agent")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/node-name"],
        vec!["n1".to_string()]
    );
    for (token, aud) in [("t1", "kubernetes"), ("nope", "prewarm.dev/coordinator")] {
        let out = reviews
            .create(&PostParams::default(), &review(token, aud))
            .await
            .unwrap();
        assert_eq!(
            out.status.unwrap().authenticated,
            Some(false),
            "{token} for {aud}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn outages_refuse_or_stall_requests_until_they_end() {
    let api = MockApi::new();
    api.put("api/v1/pods", pod("a", json!({})));
    let pods: Api<Pod> = Api::namespaced(api.client_as(Identity::admin()), "ns");
    api.set_outage(Outage::Refuse);
    let e = err_of(pods.get("a").await);
    assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable"));
    api.set_outage(Outage::Stall);
    let stalled = tokio::time::timeout(Duration::from_secs(30), pods.get("a")).await;
    assert!(stalled.is_err(), "a stalled server answered");
    let p2 = pods.clone();
    let pending = tokio::spawn(async move { p2.get("a").await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!pending.is_finished());
    api.set_outage(Outage::None);
    assert!(
        pending.await.unwrap().is_ok(),
        "served once the outage ended"
    );
    assert!(pods.get("a").await.is_ok());
}

/// SubjectAccessReview evaluates the same RBAC for the user it names:
/// resource attributes by the rules' resources, non-resource paths by
/// `nonResourceURLs` (exact, or a prefix before a trailing `*`), granted by
/// ClusterRoleBindings only.
#[tokio::test]
async fn subject_access_reviews_evaluate_the_policy() {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let viewer = Identity::service_account("ops", "viewer");
    let api =
        MockApi::with_policy(Policy::shipped().with_cluster_role_binding("prewarm-view", &viewer));
    let reviews: Api<SubjectAccessReview> = Api::all(api.client_as(Identity::admin()));
    let ask = |who: &Identity, attrs: Value| {
        let mut spec = json!({"user": who.user, "groups": who.groups});
        spec.as_object_mut()
            .unwrap()
            .extend(attrs.as_object().unwrap().clone());
        let review: SubjectAccessReview = serde_json::from_value(json!({"spec": spec})).unwrap();
        let reviews = reviews.clone();
        async move {
            let out = reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap();
            out.status.unwrap().allowed
        }
    };
    let path = |p: &str| json!({"nonResourceAttributes": {"path": p, "verb": "get"}});
    assert!(ask(&viewer, path("/v1/nodes")).await);
    assert!(ask(&viewer, path("/v1/a/b")).await);
    for p in ["/v1", "/v1x", "/v2/nodes", "/metrics"] {
        assert!(!ask(&viewer, path(p)).await, "{p}");
    }
    let post = json!({"nonResourceAttributes": {"path": "/v1/nodes", "verb": "post"}});
    assert!(!ask(&viewer, post).await);
    assert!(
        !ask(
            &Identity::service_account("ops", "other"),
            path("/v1/nodes")
        )
        .await
    );
    // The coordinator's own rights, by resource.
    let coordinator = Identity::coordinator();
    let res = |verb: &str, resource: &str| json!({"resourceAttributes": {"verb": verb, "group": "", "resource": resource, "namespace": "erp"}});
    assert!(ask(&coordinator, res("list", "pods")).await);
    assert!(!ask(&coordinator, res("get", "secrets")).await);
    assert!(!ask(&viewer, res("list", "pods")).await);
}
