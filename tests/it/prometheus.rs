//! The monitoring component against a real Prometheus (Debian's, from
//! scripts/setup.sh): it scrapes a real agent on containerd, after real
//! pulls from the test registry, and the coordinator that agent links to,
//! whose gate has released a pod and whose deploy group has finished a
//! step. Every query of the shipped dashboard must return data, every
//! template variable must have values, and every alert of the shipped
//! PrometheusRule must parse and evaluate (Prometheus loads the rules too).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use prewarm::coordinator::deploys::{self, DeployOptions};
use prewarm::coordinator::gate::{self, GateOptions};
use prewarm::node::containerd::Containerd;
use prewarm::plan::deploy::HttpCheckPolicy;
use prewarm::testkit::apiserver::{Identity, MockApi, Policy};
use prewarm::testkit::containerd::{TestContainerd, Version};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common::{wait_until, Upstream, MIB};
use crate::gates::{
    deployment, gated_pod, healthy_endpoint, roll_unpaused, DEPLOYMENTS, GROUPS, PODS,
};
use crate::link::{coordinator, real_agent, wait_present};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn component(file: &str) -> PathBuf {
    root().join("daemonset/components/monitoring").join(file)
}

/// A Prometheus server process, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `config`, its data
    /// under `dir`; returns once it said where it listens.
    fn start(dir: &Path, config: &Path) -> Prometheus {
        let bin = root().join(".tools/prometheus-trixie/usr/bin/prometheus");
        assert!(
            bin.is_file(),
            "{} missing: run scripts/setup.sh",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        // Drains stderr for as long as the process lives; the "Listening
        // on" line carries the port the kernel picked.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("msg=\"Listening on\"") {
                    if let Some(addr) = line.split("address=").nth(1) {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "prometheus never listened:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        Prometheus {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// An instant query; the answer's `data.result`, or the error.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.get("/api/v1/query", &[("query", expr)]).await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PrometheusRule's groups as a plain rules file (the rule is the only
/// copy; Prometheus and promtool read this form).
fn rules_file(dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    let text = std::fs::read_to_string(component("prometheusrule.yaml")).unwrap();
    let rule: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups = &rule["spec"]["groups"];
    let alerts = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let path = dir.join("rules.yaml");
    let plain = serde_yaml_ng::to_string(&json!({ "groups": groups })).unwrap();
    std::fs::write(&path, plain).unwrap();
    (path, alerts)
}

/// A dashboard query as Grafana sends it with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "5m")
        .replace("${pool}", ".*")
        .replace("$pool", ".*")
        .replace("${node}", ".*")
        .replace("$node", ".*")
}

struct Query {
    panel: String,
    expr: String,
}

/// Every query of every panel (rows included), and the template variables
/// as (label, metric) of their `label_values(metric, label)`.
fn dashboard() -> (Vec<Query>, Vec<(String, String)>) {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(component("dashboards/prewarm.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    let nested: Vec<&Value> = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten())
        .collect();
    panels.extend(nested);
    for p in panels {
        let title = p["title"].as_str().unwrap().to_string();
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .expect("a target without expr")
                .to_string();
            queries.push(Query {
                panel: title.clone(),
                expr: substitute(&expr),
            });
        }
    }
    let vars = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
            let (metric, label) = inner.split_once(',').unwrap();
            (label.trim().to_string(), metric.trim().to_string())
        })
        .collect();
    (queries, vars)
}

fn prometheus_config(dir: &Path, rules: &Path, agent: &str, coordinator: &str) -> PathBuf {
    // The labels the component's PodMonitors give (namespace, pod, node),
    // and honor_labels on the coordinator as its PodMonitor sets it.
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [
            {"job_name": "prewarm-agent", "static_configs": [{"targets": [agent],
              "labels": {"namespace": "prewarm-node", "pod": "prewarm-agent-test", "node": "node-a"}}]},
            {"job_name": "prewarm-coordinator", "honor_labels": true, "static_configs": [{"targets": [coordinator],
              "labels": {"namespace": "prewarm-system", "pod": "prewarm-coordinator-test"}}]}
        ]
    });
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}

/// Runs the gate and a deploy group against `api` on the coordinator; the
/// caller waits for a release and a finished step.
async fn gate_and_deploy_group(
    api: &MockApi,
    state: &Arc<prewarm::coordinator::link::LinkState>,
    image: &str,
    cancel: &CancellationToken,
) -> watch::Sender<bool> {
    api.put(PODS, gated_pod("orders-sync-0", image));
    api.put(
        DEPLOYMENTS,
        deployment("orders-api", "reg.invalid/orders-api:1"),
    );
    let url = healthy_endpoint().await;
    api.put(
        GROUPS,
        json!({"apiVersion": "prewarm.dev/v1alpha1", "kind": "DeployGroup",
               "metadata": {"name": "integrations", "namespace": "integrations", "generation": 1},
               "spec": {"members": [{"deployment": "orders-api", "httpCheck": {"url": url, "interval": "1s"}}],
                        "quiesce": "1s", "warmTimeout": "2m"}}),
    );
    roll_unpaused(api, cancel);
    let (leader_tx, leader) = watch::channel(true);
    let gate_opts = GateOptions {
        tick: Duration::from_millis(200),
        reevaluate: Duration::from_millis(100),
        ..Default::default()
    };
    tokio::spawn(gate::run(
        api.coordinator_client(),
        state.clone(),
        gate_opts,
        leader.clone(),
        cancel.clone(),
    ));
    let deploy_opts = DeployOptions {
        resync: Duration::from_millis(200),
        http_checks: HttpCheckPolicy::new("cluster.local", vec!["localhost".parse().unwrap()])
            .unwrap(),
        ..Default::default()
    };
    tokio::spawn(deploys::run(
        api.coordinator_client(),
        state.clone(),
        deploy_opts,
        leader,
        cancel.clone(),
    ));
    leader_tx
}

fn group_status(api: &MockApi) -> Value {
    api.object(GROUPS, "integrations", "integrations")
        .map(|g| g["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_every_alert_evaluates() {
    let (queries, vars) = dashboard();
    let up = Upstream::start(None, 4 * MIB).await;
    let ctd = TestContainerd::start(Version::V2).await.unwrap();
    let cancel = CancellationToken::new();
    let coord = coordinator("127.0.0.1:0", &cancel).await;
    let endpoint = format!("http://{}", coord.grpc_addr);
    let dir = tempfile::tempdir().unwrap();
    // A config image and a window (warming for the next minute all the
    // time, so its leads are set), and an image the registry does not have
    // (pull failures by reason).
    let image = up.image("shapes/docker");
    let absent = format!("{}/prewarm-test/absent:1", up.proxy.host());
    let extra = format!(
        "images: [\"{image}\", \"{absent}\"]\nwindows:\n  - name: erp-sync\n    schedule: \"* * * * *\"\n    duration: 20s\n    leadTime: 10m\n    images: [\"{image}\"]\n"
    );
    let agent = real_agent(
        &ctd,
        dir.path(),
        &endpoint,
        "node-a",
        "tok-a",
        &extra,
        &cancel,
    )
    .await;
    let store = Containerd::connect(&ctd.socket, "k8s.io").await.unwrap();
    wait_present(&store, &image, "the agent never pulled its config image").await;

    // The namespace grants the deploy-group rights, as the walkthrough does.
    let policy = Policy::shipped().with_role_binding(
        "integrations",
        deploys::DEPLOYGROUP_ROLE,
        &Identity::coordinator(),
    );
    let api = MockApi::with_policy(policy);
    let _leader = gate_and_deploy_group(&api, &coord.state, &image, &cancel).await;
    assert!(
        api.wait_for(Duration::from_secs(20), |_| group_status(&api)["deployed"]
            .as_object()
            .is_some_and(|d| d.len() == 1))
            .await,
        "the member was never adopted: {}",
        group_status(&api)
    );
    api.update(DEPLOYMENTS, "integrations", "orders-api", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        d["metadata"]["generation"] = json!(2);
    });
    assert!(
        api.wait_for(Duration::from_secs(60), |_| group_status(&api)["results"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["result"] == "Succeeded")))
            .await,
        "the deploy step never succeeded: {}",
        group_status(&api)
    );
    let released = |api: &MockApi| {
        api.writes()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/pods/orders-sync-0"))
    };
    assert!(
        api.wait_for(Duration::from_secs(30), |_| released(&api))
            .await,
        "the gated pod was never released"
    );

    let (rules, alerts) = rules_file(dir.path());
    let config = prometheus_config(
        dir.path(),
        &rules,
        &agent.addr.to_string(),
        &coord.http_addr.to_string(),
    );
    let prom = Prometheus::start(dir.path(), &config);

    // Ready (its API answers 503 while the TSDB opens), then both targets
    // scraped successfully.
    wait_until("prometheus ready", Duration::from_secs(60), async || {
        reqwest::get(format!("{}/-/ready", prom.url))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_until("both targets up", Duration::from_secs(60), async || {
        let t = prom.get("/api/v1/targets", &[]).await;
        let active = t["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        active.len() == 2 && active.iter().all(|t| t["health"] == "up")
    })
    .await;
    wait_until(
        "up == 1 for both jobs",
        Duration::from_secs(30),
        async || prom.query("up == 1").await.is_ok_and(|r| r.len() == 2),
    )
    .await;

    // Every query evaluates and returns data.
    let mut empty: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        empty.clear();
        for q in &queries {
            match prom.query(&q.expr).await {
                Err(e) => panic!("panel {:?}: {} does not evaluate: {e}", q.panel, q.expr),
                Ok(r) if r.is_empty() => empty.push(format!("{:?}: {}", q.panel, q.expr)),
                Ok(_) => {}
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data after 90 s:\n{}",
        empty.join("\n")
    );
    for (label, metric) in &vars {
        let v = prom
            .get(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", metric)],
            )
            .await;
        let values = v["data"].as_array().cloned().unwrap_or_default();
        assert!(
            v["status"] == "success" && !values.is_empty(),
            "template variable {label} (label_values({metric}, {label})): {v}"
        );
    }

    // Every alert expression parses and evaluates, on its own and as the
    // rule Prometheus loaded and evaluated.
    for (alert, expr) in &alerts {
        if let Err(e) = prom.query(expr).await {
            panic!("alert {alert}: {e}");
        }
    }
    wait_until(
        "every rule evaluated",
        Duration::from_secs(30),
        async || {
            let r = prom.get("/api/v1/rules", &[]).await;
            let rules: Vec<Value> = r["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules.len() == alerts.len()
                && rules.iter().all(|r| {
                    r["health"] == "ok"
                        && !r["lastEvaluation"]
                            .as_str()
                            .unwrap_or("0001")
                            .starts_with("0001")
                })
        },
    )
    .await;
    // The agent's failing pull and the finished step are what the alerts
    // would page on: Prometheus sees them.
    let failing = prom
        .query(r#"prewarm_pull_failures_total{reason="not_found"} > 0"#)
        .await
        .unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    let last = prom
        .query(r#"prewarm_coordinator_deploy_group_last_result{namespace="integrations",group="integrations",result="succeeded"} == 1"#)
        .await
        .unwrap();
    assert_eq!(
        last.len(),
        1,
        "honor_labels kept the group's namespace: {last:?}"
    );
    assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    if std::env::var_os("PREWARM_PROMETHEUS_LOG").is_some() {
        eprintln!("{}", prom.log.lock().unwrap().join("\n"));
    }
    drop(prom);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
}
