//! `prewarm pull` leaves the node exactly as a kubelet pull would, on
//! containerd 1.7 and 2.x, for every image shape, public and private.

use std::collections::BTreeSet;

use crate::on_both;
use base64::Engine as _;
use prewarm::config::reference::ImageRef;
use prewarm::config::CredentialProviderRef;
use prewarm::testkit::containerd::Version;
use prewarm::testkit::corpus::Built;
use tokio_util::sync::CancellationToken;

use crate::common::{chain_id, opts, Node, Upstream, MIB};

async fn every_shape_is_kubelet_identical(v: Version) {
    let up = Upstream::start(None, 16 * MIB).await;
    let node = Node::start(v, |_| {}).await;
    let cancel = CancellationToken::new();
    let mut distinct_blobs = BTreeSet::new();
    for (repo, _, built) in &up.corpus {
        let image: ImageRef = up.image(repo).parse().unwrap();
        let out = node
            .stack
            .engine
            .warm(&image, &opts(true), &cancel)
            .await
            .unwrap_or_else(|e| panic!("{image}: {e}"));
        assert!(!out.already_present);
        assert!(out.pinned, "{image} not pinned on {}", v.label());
        assert_eq!(out.digest, built.digest());

        // CRI finds it by tag and by digest, pinned.
        let by_tag = node
            .status(&image.to_string())
            .await
            .unwrap_or_else(|| panic!("{image}: no CRI image by tag"));
        let by_digest = format!("{}@{}", image.name(), built.digest());
        let st = node
            .status(&by_digest)
            .await
            .unwrap_or_else(|| panic!("{by_digest}: no CRI image by digest"));
        assert_eq!(st.id, by_tag.id);
        assert!(st.pinned && by_tag.pinned);

        // Unpacked for the CRI snapshotter: the top layer's chain exists.
        let platform_image = match built {
            Built::Image(i) => i,
            Built::Index(x) => x
                .images
                .iter()
                .find(|i| i.config.as_ref().windows(5).any(|w| w == b"amd64"))
                .expect("amd64 image"),
        };
        let chain = chain_id(&platform_image.diff_ids);
        assert!(
            node.stack
                .containerd
                .snapshot_exists("overlayfs", &chain)
                .await
                .unwrap(),
            "{image}: snapshot {chain} missing (not unpacked)"
        );
        for b in platform_image.blobs() {
            distinct_blobs.insert(b.digest);
        }
    }
    assert!(node.our_leases().await.is_empty(), "leases leaked");
    // Phase 2 found every blob present: only prewarm fetched blobs, once each.
    let blob_gets = up
        .proxy
        .request_log()
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains("/blobs/"))
        .count();
    assert_eq!(
        blob_gets,
        distinct_blobs.len(),
        "{:#?}",
        up.proxy.request_log()
    );

    // A second pull moves no bytes at all.
    up.proxy.reset_counters();
    for (repo, _, _) in &up.corpus {
        let image: ImageRef = up.image(repo).parse().unwrap();
        let out = node
            .stack
            .engine
            .warm(&image, &opts(true), &cancel)
            .await
            .unwrap();
        assert!(
            out.already_present && out.fetched_bytes == 0,
            "{image}: {out:?}"
        );
    }
    assert_eq!(
        up.proxy.bytes_sent(),
        0,
        "second run moved bytes: {:?}",
        up.proxy.request_log()
    );
}
on_both!(every_shape_is_kubelet_identical);

fn write_docker_config(
    dir: &std::path::Path,
    host: &str,
    user: &str,
    pass: &str,
) -> std::path::PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}

async fn private_registry_with_pull_secret(v: Version) {
    let up = Upstream::start(Some(("prewarm", "s3cret")), 4 * MIB).await;
    let tmp = tempfile::tempdir().unwrap();
    let good = write_docker_config(tmp.path(), &up.proxy.host(), "prewarm", "s3cret");
    let node = Node::start(v, |c| c.registry.docker_config = vec![good]).await;
    let image: ImageRef = up.image("shapes/zstd").parse().unwrap();
    let out = node
        .stack
        .engine
        .warm(&image, &opts(true), &CancellationToken::new())
        .await
        .unwrap();
    assert!(out.pinned && out.fetched_bytes > 0);
    assert!(node.status(&image.to_string()).await.is_some());

    // Wrong password: a clear, unretried error.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = write_docker_config(bad_dir.path(), &up.proxy.host(), "prewarm", "wrong");
    let node2 = Node::start(v, |c| c.registry.docker_config = vec![bad]).await;
    up.proxy.reset_counters();
    let err = node2
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unauthorized", "{err}");
    assert!(err.to_string().contains("access denied"), "{err}");
    assert!(
        up.proxy.requests() <= 4,
        "auth failures must not be retried: {:?}",
        up.proxy.request_log()
    );
}
on_both!(private_registry_with_pull_secret);

async fn private_registry_with_credential_provider(v: Version) {
    let up = Upstream::start(Some(("acr-user", "acr-token")), 4 * MIB).await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("calls.log");
    let host = up.proxy.host();
    let cfg = tmp.path().join("credential-provider-config.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: fake-acr-provider
    matchImages: ["{host}"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {{name: FAKE_PROVIDER_USER, value: acr-user}}
      - {{name: FAKE_PROVIDER_PASS, value: acr-token}}
      - {{name: FAKE_PROVIDER_KEY, value: "{host}"}}
      - {{name: FAKE_PROVIDER_LOG, value: "{}"}}
"#,
            log.display()
        ),
    )
    .unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    let node = Node::start(v, |c| {
        c.registry.credential_provider = Some(CredentialProviderRef {
            config: cfg.clone(),
            bin_dir: bin_dir.clone(),
        })
    })
    .await;
    for repo in ["shapes/docker", "shapes/multiarch"] {
        let image: ImageRef = up.image(repo).parse().unwrap();
        node.stack
            .engine
            .warm(&image, &opts(true), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(node.status(&image.to_string()).await.is_some());
    }
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !calls.is_empty(),
        "the credential provider plugin was never executed"
    );
}
on_both!(private_registry_with_credential_provider);

async fn mirror_from_hosts_toml(v: Version) {
    let up = Upstream::start(None, 4 * MIB).await;
    let node = Node::start(v, |_| {}).await;
    // The upstream host does not resolve; only the mirror can serve it.
    node.ctd
        .add_mirror("upstream.invalid", &up.proxy.url())
        .unwrap();
    let image: ImageRef = "upstream.invalid/shapes/docker:v1".parse().unwrap();
    let out = node
        .stack
        .engine
        .warm(&image, &opts(false), &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.fetched_bytes > 0);
    assert!(node
        .status("upstream.invalid/shapes/docker:v1")
        .await
        .is_some());
    assert!(
        up.proxy
            .request_log()
            .iter()
            .any(|l| l.contains("ns=upstream.invalid")),
        "{:?}",
        up.proxy.request_log()
    );
}
on_both!(mirror_from_hosts_toml);
