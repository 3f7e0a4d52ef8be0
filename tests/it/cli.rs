//! The binary's edge: exit codes and messages for bad input.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary; a run that does not end within 30 s is killed and fails.
fn prewarm(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prewarm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("prewarm {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_references_are_rejected_before_any_io() {
    for bad in [
        "Foo/Bar:1",
        "reg.io/app:",
        "reg.io/app@sha256:abc",
        "reg.io:99999/app:1",
        "",
    ] {
        let (code, _, err) = prewarm(&["pull", "--socket", "/nonexistent.sock", bad]);
        assert_ne!(code, 0, "{bad:?} accepted");
        assert!(err.contains("invalid image reference"), "{bad:?}: {err}");
    }
}

#[test]
fn missing_socket_names_the_path() {
    let (code, _, err) = prewarm(&[
        "pull",
        "--socket",
        "/nonexistent/containerd.sock",
        "reg.io/app:1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/containerd.sock"), "{err}");
}

#[test]
fn bad_flags_are_explained() {
    let (code, _, err) = prewarm(&["pull", "--bandwidth", "fast", "reg.io/app:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("--bandwidth"), "{err}");
    let (code, _, err) = prewarm(&["pull", "--disk-floor", "150%", "reg.io/app:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("--disk-floor"), "{err}");
}

#[test]
fn agent_with_invalid_config_exits_with_field_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, "images:\n  - image: reg.io/Team/app:1\n").unwrap();
    let (code, _, err) = prewarm(&[
        "agent",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("images[0].image") && err.contains("invalid image reference"),
        "{err}"
    );
}
