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
    let (code, _, err) = prewarm(&["coordinator", "--gate-policy", "sometimes"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown gate policy \"sometimes\" (use fail-open or fail-closed)"),
        "{err}"
    );
    let (code, _, err) = prewarm(&["coordinator", "--gate-timeout", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--gate-timeout"), "{err}");
    let (code, _, err) = prewarm(&["coordinator", "--gate-hold-margin", "1.5"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--gate-hold-margin")
            && err.contains("\"1.5\" is not a fraction from 0 to 0.9 (e.g. 0.2)"),
        "{err}"
    );
    let (code, _, err) = prewarm(&["coordinator", "--gate-default-throughput", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--gate-default-throughput")
            && err.contains("must be more than 0 bytes per second"),
        "{err}"
    );
    let (code, _, err) = prewarm(&["coordinator", "--gate-stall-after", "a while"]);
    assert_ne!(code, 0);
    assert!(err.contains("--gate-stall-after"), "{err}");
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

#[test]
fn plan_shows_the_aks_example() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/aks-integrations.yaml");
    let (code, out, err) = prewarm(&[
        "plan",
        "--config",
        cfg,
        "--node-labels",
        "kubernetes.azure.com/agentpool=integrations",
        "--at",
        "2026-11-23T06:30:00Z",
    ]);
    assert_eq!(code, 0, "{err}");
    // Monday 08:00 Amsterdam is 07:00 UTC; warming starts 10 minutes before.
    assert!(out.contains("window erp-sync"), "{out}");
    assert!(out.contains("Mon 2026-11-23 08:00:00 CET"), "{out}");
    assert!(
        out.contains("warm from  Mon 2026-11-23 07:50:00 CET"),
        "{out}"
    );
    assert!(
        out.contains("myregistry.azurecr.io/erp/orders-sync:1.4.2"),
        "{out}"
    );

    // Another pool: the windows do not apply.
    let (code, out, _) = prewarm(&[
        "plan",
        "--config",
        cfg,
        "--node-labels",
        "kubernetes.azure.com/agentpool=system",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("does not apply to this node"), "{out}");
}

#[test]
fn plan_errors_name_file_window_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("windows:\n  - name: a\n    schedule: \"0 8 * *\"\n    duration: 1h\n    images: [x.io/a:1]\n", "windows[0].schedule: expected 5 or 6 fields, got 4"),
        ("windows:\n  - name: a\n    schedule: \"0 8 * * *\"\n    timezone: Europe/Amsterdm\n    duration: 1h\n    images: [x.io/a:1]\n", "windows[0].timezone"),
        ("windows:\n  - name: a\n    schedule: \"0 8 * * *\"\n    duration: 1h\n    images: [x.io/a:1]\n  - name: b\n    schedule: \"0 8 * * *\"\n    duration: 0s\n    images: [x.io/a:1]\n", "windows[1].duration"),
        ("windows:\n  - name: a\n    schedule: \"0 8 * * *\"\n    duration: 1h\n    images: [\"X/Y:1\"]\n", "windows[0].images[0]"),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("w{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = prewarm(&["plan", "--config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{yaml}");
        assert!(
            err.contains(&format!("w{i}.yaml: {want}")),
            "want {want:?} in {err}"
        );
    }
}
