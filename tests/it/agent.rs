//! The agent keeps its configured images warm and pinned, follows config
//! changes in place, rejects bad files, and shuts down cleanly.

use std::time::Duration;

use prewarm::agent::{Agent, AgentOptions};
use prewarm::node::pin;
use prewarm::testkit::containerd::{TestContainerd, Version};
use tokio_util::sync::CancellationToken;

use crate::common::{metric, Upstream, MIB};

fn config_yaml(ctd: &TestContainerd, images: &[String]) -> String {
    config_with_secrets(ctd, images, &[])
}

fn config_with_secrets(
    ctd: &TestContainerd,
    images: &[String],
    docker_configs: &[std::path::PathBuf],
) -> String {
    let list: String = images.iter().map(|i| format!("  - image: {i}\n")).collect();
    let secrets: Vec<String> = docker_configs
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "runtime:\n  socket: {}\n  root: {}\nregistry:\n  dockerConfig: [{}]\n  hostsDir: {}\npacing:\n  diskFloor: 0\nresync: 1s\nimages:\n{list}",
        ctd.socket.display(),
        ctd.root.display(),
        secrets.join(", "),
        ctd.hosts_dir.display()
    )
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_warms_pins_reloads_and_unpins() {
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd = TestContainerd::start(Version::V17).await.unwrap();
    let a = up.image("shapes/docker");
    let b = up.image("shapes/zstd");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config_yaml(&ctd, &[a.clone(), b.clone()])).unwrap();

    let cancel = CancellationToken::new();
    let agent = crate::common::start_agent(path.clone(), "test-node", None, &cancel).await;
    let addr = agent.addr;
    wait_for("both images warm and pinned", async || {
        metric(addr, "prewarm_images_warm").await == Some(2.0)
            && metric(addr, "prewarm_images_pinned").await == Some(2.0)
    })
    .await;
    assert_eq!(
        metric(addr, "prewarm_runtime_pinning_supported").await,
        Some(1.0)
    );
    assert!(
        metric(addr, "prewarm_pulled_bytes_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Drop b from the config: its pin is released, a stays pinned.
    let store = prewarm::node::containerd::Containerd::connect(&ctd.socket, "k8s.io")
        .await
        .unwrap();
    std::fs::write(&path, config_yaml(&ctd, std::slice::from_ref(&a))).unwrap();
    let b_name = b.clone();
    wait_for("b unpinned", async || {
        let ours = pin::pinned_by_us(&store).await.unwrap();
        !ours.is_empty()
            && ours.iter().all(|r| {
                !r.name
                    .starts_with(b_name.split(':').next().unwrap_or_default())
                    || r.name.contains("shapes/docker")
            })
    })
    .await;
    let ours = pin::pinned_by_us(&store).await.unwrap();
    assert!(
        ours.iter().all(|r| !r.name.contains("shapes/zstd")),
        "{ours:?}"
    );
    assert!(
        ours.iter().any(|r| r.name.contains("shapes/docker")),
        "{ours:?}"
    );

    // A bad file is rejected and counted; the running config stays.
    std::fs::write(&path, "pacing:\n  maxConcurrentPulls: 0\n").unwrap();
    wait_for("reload failure counted", async || {
        metric(addr, "prewarm_config_reload_failures_total").await == Some(1.0)
    })
    .await;
    assert_eq!(metric(addr, "prewarm_images_desired").await, Some(1.0));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent.join())
        .await
        .expect("agent stops on cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_bad_config_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "pacing:\n  bandwidht: 10MiB\n").unwrap();
    let err = Agent::start(
        AgentOptions {
            config_path: path,
            listen: "127.0.0.1:0".parse().unwrap(),
            node_name: String::new(),
            node_labels: None,
        },
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("bad config must fail");
    let text = err.to_string();
    assert!(
        text.contains("pacing.bandwidht") && text.contains("unknown field"),
        "{text}"
    );
}

/// A pull secret file as a mounted Secret updates it: a new file renamed
/// over the old one.
fn write_pull_secret(path: &std::path::Path, host: &str, user: &str, pass: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let tmp = path.with_extension("new");
    std::fs::write(
        &tmp,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Basic auth against the registry itself: 200 or 401.
async fn registry_status(url: &str, user: &str, pass: &str) -> u16 {
    let resp = reqwest::Client::new()
        .get(format!("{url}/v2/"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// Issue 10: the registry password and the node's pull secret are rotated
/// while the agent runs; the next pull uses the new credentials, without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_uses_a_rotated_pull_secret() {
    let mut up = Upstream::start(Some(("prewarm", "old-pass")), 2 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let a = up.image("shapes/docker");
    let b = up.image("shapes/zstd");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("config.json");
    write_pull_secret(&secret, &up.proxy.host(), "prewarm", "old-pass");
    let path = dir.path().join("config.yaml");
    let secrets = [secret.clone()];
    std::fs::write(
        &path,
        config_with_secrets(&ctd, std::slice::from_ref(&a), &secrets),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let agent = crate::common::start_agent(path.clone(), "test-node", None, &cancel).await;
    let addr = agent.addr;
    wait_for("a warm with the old password", async || {
        metric(addr, "prewarm_images_warm").await == Some(1.0)
    })
    .await;

    // Rotate: the registry takes only the new password from now on...
    let url = up.registry.url();
    up.registry.rotate_password("new-pass").await.unwrap();
    wait_for("the registry to refuse the old password", async || {
        registry_status(&url, "prewarm", "old-pass").await == 401
    })
    .await;
    assert_eq!(registry_status(&url, "prewarm", "new-pass").await, 200);
    // ...and the node's pull secret follows. Then a config change asks
    // for an image not pulled before: that pull must use the new password.
    write_pull_secret(&secret, &up.proxy.host(), "prewarm", "new-pass");
    std::fs::write(
        &path,
        config_with_secrets(&ctd, &[a.clone(), b.clone()], &secrets),
    )
    .unwrap();
    let unauthorized = async || {
        metric(addr, "prewarm_pull_failures_total{reason=\"unauthorized\"}")
            .await
            .unwrap_or(0.0)
    };
    wait_for("b warm, or its pull refused", async || {
        metric(addr, "prewarm_images_warm").await == Some(2.0) || unauthorized().await > 0.0
    })
    .await;
    assert_eq!(unauthorized().await, 0.0, "a pull used the old password");
    assert_eq!(metric(addr, "prewarm_images_warm").await, Some(2.0));
    assert_eq!(
        metric(addr, "prewarm_credentials_reloads_total").await,
        Some(1.0)
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent.join())
        .await
        .expect("agent stops on cancel");
}
