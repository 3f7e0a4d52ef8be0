//! The binary's edge: exit codes and messages for bad input.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the binary; a run that does not end within 30 s is killed and fails.
fn prewarm(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prewarm"));
    cmd.args(args);
    let out = run_to_exit(cmd, &format!("prewarm {args:?} did not exit"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` with its output collected, waiting for its exit; one still
/// running after 30 s is killed and the test fails with `stuck`.
fn run_to_exit(cmd: Command, stuck: &str) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let child = cmd.spawn().expect("run prewarm");
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{stuck}"))
            .expect("collect output")
    })
}

/// The agent with `config` as its config file: (exit code, stdout, stderr).
fn agent_with_config(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    prewarm(&[
        "agent",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
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
    let (code, _, err) = agent_with_config("images:\n  - image: reg.io/Team/app:1\n");
    assert_ne!(code, 0);
    assert!(
        err.contains("images[0].image") && err.contains("invalid image reference"),
        "{err}"
    );
}

/// A plain http:// coordinator endpoint is refused at start unless the
/// config says `insecure: true`.
#[test]
fn agent_refuses_a_plaintext_coordinator_without_insecure() {
    let (code, _, err) = agent_with_config("coordinator: {endpoint: \"http://127.0.0.1:1\"}\n");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("coordinator.endpoint") && err.contains("coordinator.insecure: true"),
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

/// `prewarm coordinator` outside a cluster (static tokens, no watch) on
/// loopback ports, with the TLS and insecure settings taken from `args`
/// and `env` only.
fn coordinator_command(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "tok-a node-a\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prewarm"));
    cmd.args(["--log-format", "json", "coordinator", "--no-watch"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--static-tokens")
        .arg(&tokens)
        .args(args);
    for var in [
        "PREWARM_INSECURE",
        "PREWARM_TLS_CERT",
        "PREWARM_TLS_KEY",
        "PREWARM_HTTPS_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env("RUST_LOG", "info");
    cmd
}

/// Without a serving certificate the coordinator exits at once with an
/// error naming the certificate flags and the opt-out.
#[test]
fn the_coordinator_refuses_plaintext_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        coordinator_command(dir.path(), &[], &[]),
        "a coordinator without a certificate and without --insecure kept running",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for flag in ["--tls-cert", "--tls-key", "--insecure"] {
        assert!(err.contains(flag), "{flag} not named: {err}");
    }
}

/// With `--insecure` (or PREWARM_INSECURE) and no certificate the
/// coordinator serves in plain text and says so at WARN before serving.
#[test]
fn an_insecure_coordinator_serves_plaintext_and_warns() {
    for (args, env) in [
        (&["--insecure"][..], &[][..]),
        (&[][..], &[("PREWARM_INSECURE", "true")][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = coordinator_command(dir.path(), args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run prewarm");
        let log = log_until(&mut child, "coordinator serving");
        let what = format!("{args:?} {env:?}");
        let Some(serving) = log.last().filter(|l| l["message"] == "coordinator serving") else {
            let _ = child.kill();
            panic!("{what}: never served:\n{log:#?}");
        };
        let http = serving["http_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let healthy = http_get_status(&http, "/healthz").is_some_and(|s| s.contains(" 200 "));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            log.iter().any(|l| warns(l, &["plain text", "--insecure"])),
            "{what}: no WARN about plain text before serving:\n{log:#?}"
        );
        assert!(healthy, "{what}: /healthz on {http} did not answer");
    }
}

/// The agent with `coordinator.insecure: true` and an http:// endpoint
/// starts, and warns that its token travels in clear text.
#[test]
fn an_insecure_agent_link_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "coordinator: {endpoint: \"http://127.0.0.1:1\", tokenFile: /nonexistent/token, insecure: true}\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "--log-format",
            "json",
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prewarm");
    let log = log_until(
        &mut child,
        "coordinator link configured; prewarm_coordinator_linked shows when it is up",
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.iter().any(|l| l["message"] == "agent started"),
        "the agent did not start:\n{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| warns(l, &["coordinator.insecure", "clear text"])),
        "no WARN about the plaintext link:\n{log:#?}"
    );
}

/// Whether a JSON log line is a WARN whose message holds every word.
fn warns(line: &serde_json::Value, words: &[&str]) -> bool {
    let msg = line["message"].as_str().unwrap_or_default();
    line["level"] == "WARN" && words.iter().all(|w| msg.contains(w))
}

/// The JSON log lines of a running `child` up to and including the first
/// whose message is `last` (or all of them, if it exits or 60 s pass first:
/// then it is killed).
fn log_until(child: &mut std::process::Child, last: &str) -> Vec<serde_json::Value> {
    use std::io::BufRead as _;
    let pid = child.id().to_string();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // A safety net only: the wait is on the log line itself.
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg(&pid).status();
        }
    });
    let mut log = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
        let end = v["message"] == last;
        log.push(v);
        if end {
            break;
        }
    }
    let _ = done_tx.send(());
    let _ = watchdog.join();
    log
}

/// The status line of a plain HTTP/1.0 GET, if the server answered.
fn http_get_status(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.lines().next().map(str::to_string)
}

/// Every example in config/ passes `prewarm plan`: agent configs with
/// --config, Kubernetes object files (any document with an apiVersion)
/// with --config config/agent.example.yaml --objects FILE.
#[test]
fn every_example_in_config_passes_plan() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let agent = dir.join("agent.example.yaml");
    let labels = "kubernetes.azure.com/agentpool=integrations";
    let mut objects = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let is_objects = text.lines().any(|l| l.starts_with("apiVersion:"));
        let file = f.to_str().unwrap();
        let args: Vec<&str> = if is_objects {
            objects += 1;
            let config = agent.to_str().unwrap();
            vec![
                "plan",
                "--config",
                config,
                "--objects",
                file,
                "--node-labels",
                labels,
            ]
        } else {
            vec!["plan", "--config", file, "--node-labels", labels]
        };
        let (code, out, err) = prewarm(&args);
        assert_eq!(code, 0, "prewarm {args:?}\n{out}\n{err}");
    }
    assert!(objects >= 2, "the object examples were found");
}

/// The KEDA example's ScaledObject gives one window for an integrations
/// node (the desiredReplicas 0 trigger none), planned with its source.
#[test]
fn plan_objects_lists_the_windows_a_scaled_object_implies() {
    let root = env!("CARGO_MANIFEST_DIR");
    let agent = format!("{root}/config/agent.example.yaml");
    let objects = format!("{root}/config/keda-orders-sync.yaml");
    let at = "2026-03-27T06:00:00Z"; // Friday 07:00 in Amsterdam
    let args = |labels: &'static str| {
        let mut a = vec![
            "plan",
            "--config",
            &agent,
            "--objects",
            &objects,
            "--at",
            at,
        ];
        a.extend(["--node-labels", labels]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| prewarm(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, out, err) = run(args("kubernetes.azure.com/agentpool=integrations"));
    assert_eq!(code, 0, "{out}\n{err}");
    for want in [
        "ScaledObject erp/orders-sync: window keda-erp-orders-sync-0 (keda:erp/orders-sync#0)",
        "ScaledObject erp/orders-sync triggers[1]: skipped: metadata.desiredReplicas is 0: it scales nothing up",
        "window keda-erp-orders-sync-0  from keda:erp/orders-sync#0  priority 10  applies to this node",
        "\"0 8 * * MON-FRI\" in Europe/Amsterdam, until the next \"0 18 * * MON-FRI\", lead time at least 20m",
        "warm from  Fri 2026-03-27 07:40:00 CET",
        "image      myregistry.azurecr.io/erp/orders-sync-migrate:1.4.2",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // Another pool: the Deployment's nodeSelector keeps the window away.
    let (code, out, _) = run(args("kubernetes.azure.com/agentpool=batch"));
    assert_eq!(code, 0);
    assert!(
        out.contains("window keda-erp-orders-sync-0 does not apply to this node (node does not match nodeSelector kubernetes.azure.com/agentpool=integrations)"),
        "{out}"
    );
}

/// A bad objects file is an error naming the file and the document.
#[test]
fn plan_objects_rejects_a_bad_file_with_its_document() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("objects.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, namespace: a}\nspec: {replicas: many}\n",
    )
    .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let agent = format!("{root}/config/agent.example.yaml");
    let (code, _, err) = prewarm(&["plan", "--config", &agent, "--objects", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}: document 2: Deployment a/x: ", f.display())),
        "{err}"
    );
}
