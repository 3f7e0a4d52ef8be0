use super::*;

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_malformed_group_names_the_field() {
    let obj = dynamic(json!({
        "apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {"members": [{"deployment": "a", "httpCheck": {"url": "http://x", "interval": "soon"}}]}
    }));
    let err = parse_group(&obj).unwrap_err();
    assert!(
        err.starts_with("spec.members[0].httpCheck.interval: "),
        "{err}"
    );
    assert!(err.contains("invalid duration \"soon\""), "{err}");
}
