//! Fixtures shared with the pod-write-guard component's test.

use k8s_openapi::api::core::v1::Pod;

use super::*;

/// The release patches that scripts/test-pod-write-guard.py applies to the
/// same pod when it checks the pod-write-guard component: if the gate's
/// patches change, these fixtures (and so the guard's test) must follow.
/// `PREWARM_BLESS=1` rewrites them.
#[test]
fn the_pod_write_guard_fixtures_are_the_gates_own_patches() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pod-write-guard");
    let text = std::fs::read_to_string(dir.join("gated-pod.json")).expect("gated-pod.json");
    let pod: Pod = serde_json::from_str(&text).expect("a Pod");
    let gated = GatedPod::from_pod(&pod).expect("valid").expect("gated");
    let hosts = ["aks-integrations-0".to_string()];
    for (file, patch) in [
        ("release.json", release_patch(&gated, &hosts)),
        ("avoid.json", avoid_patch(&gated, &hosts)),
        ("ungate.json", ungate_patch(&gated)),
    ] {
        let path = dir.join(file);
        let want = serde_json::to_string_pretty(&patch).unwrap() + "\n";
        if std::env::var_os("PREWARM_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            have, want,
            "{file} differs from the gate's patch (PREWARM_BLESS=1 rewrites it)"
        );
    }
}
