//! Tests of `node::containerd` (a child module: they reach its private parts).

use super::*;
use std::collections::HashMap;

fn info(config: &str) -> HashMap<String, String> {
    HashMap::from([("config".to_owned(), config.to_owned())])
}

/// Shapes of CRI `Status` verbose info seen from containerd 1.7.24 and
/// 2.1.9 (trimmed); tests/it/root.rs asks the real daemons.
#[test]
fn root_from_cri_status_info() {
    let v17 = r#"{"containerd":{"snapshotter":"overlayfs"},"containerdRootDir":"/var/lib/containerd","containerdEndpoint":"/run/containerd/containerd.sock","rootDir":"/var/lib/containerd/io.containerd.grpc.v1.cri","stateDir":"/run/containerd/io.containerd.grpc.v1.cri"}"#;
    let v2 = r#"{"containerd":{"defaultRuntimeName":"runc"},"containerdRootDir":"/mnt/ctd","rootDir":"/mnt/ctd/io.containerd.grpc.v1.cri"}"#;
    assert_eq!(
        root_from_status_info(&info(v17)),
        Some("/var/lib/containerd".into())
    );
    assert_eq!(root_from_status_info(&info(v2)), Some("/mnt/ctd".into()));
    let plugin_only = r#"{"containerdRootDir":"","rootDir":"/r/io.containerd.grpc.v1.cri"}"#;
    assert_eq!(
        root_from_status_info(&info(plugin_only)),
        Some("/r/io.containerd.grpc.v1.cri".into())
    );
    for silent in [
        r#"{"containerd":{}}"#,
        "not json",
        r#"{"containerdRootDir":7}"#,
    ] {
        assert_eq!(root_from_status_info(&info(silent)), None, "{silent}");
    }
    assert_eq!(root_from_status_info(&HashMap::new()), None);
    assert_eq!(
        snapshotter_from_status_info(&info(v17)),
        Some("overlayfs".into())
    );
    assert_eq!(snapshotter_from_status_info(&info(v2)), None);
}

/// CRI ImageStatus verbose info (containerd 1.7 and 2.x, trimmed).
#[test]
fn chain_from_cri_image_info() {
    let info = HashMap::from([(
        "info".to_owned(),
        r#"{"chainID":"sha256:abc","imageSpec":{"os":"linux"}}"#.to_owned(),
    )]);
    assert_eq!(chain_from_image_info(&info), Some("sha256:abc".into()));
    assert_eq!(chain_from_image_info(&HashMap::new()), None);
}
