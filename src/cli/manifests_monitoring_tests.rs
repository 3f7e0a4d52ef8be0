//! The optional monitoring component (`daemonset/components/monitoring`)
//! rendered on the base: its PodMonitors select the pods and ports that
//! exist and that the NetworkPolicies admit, its dashboard ConfigMap is the
//! JSON file for Grafana's sidecar, and every alert names a runbook.

use super::*;
use serde_json::json;

fn admitted_ports(r: &Rendered, policy: &str) -> Vec<i64> {
    items(&r.find("NetworkPolicy", policy)["spec"]["ingress"])
        .iter()
        .filter(|rule| rule["from"].is_null())
        .flat_map(|rule| items(&rule["ports"]))
        .filter_map(|p| p["port"].as_i64())
        .collect()
}

/// The PodMonitor `name` selects `workload`'s pods in their namespace, on a
/// named port of `container`; returns that port's number.
fn scraped_port(r: &Rendered, name: &str, workload: &Value, container_name: &str) -> i64 {
    let pm = r.find("PodMonitor", name);
    let ns = &workload["metadata"]["namespace"];
    assert_eq!(&pm["metadata"]["namespace"], ns, "{name}");
    assert_eq!(pm["spec"]["namespaceSelector"]["matchNames"], json!([ns]));
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "{name}: selector {k}");
    }
    let endpoints = items(&pm["spec"]["podMetricsEndpoints"]);
    assert_eq!(endpoints.len(), 1, "{name}");
    assert_eq!(endpoints[0]["path"], "/metrics");
    // The dashboard and the alerts group by the pod's node.
    let relabel = items(&endpoints[0]["relabelings"]);
    assert!(
        relabel.iter().any(|r| r["targetLabel"] == "node"
            && r["sourceLabels"] == json!(["__meta_kubernetes_pod_node_name"])),
        "{name}: no node label"
    );
    let pod = &workload["spec"]["template"]["spec"];
    let port = endpoints[0]["port"].as_str().expect("a named port");
    named_port(&container(pod, container_name)["ports"], port)
}

#[test]
fn the_monitoring_component_scrapes_the_metrics_ports_the_policies_admit() {
    let r = Rendered(overlay(&["monitoring"]));
    let ds = r.find("DaemonSet", "prewarm-agent");
    let agent = scraped_port(&r, "prewarm-agent", ds, "agent");
    assert_eq!(agent, 9464);
    assert!(admitted_ports(&r, "prewarm-agent").contains(&agent));
    let deploy = r.find("Deployment", "prewarm-coordinator");
    let coord = scraped_port(&r, "prewarm-coordinator", deploy, "coordinator");
    assert_eq!(coord, i64::from(coordinator_args(&r).http_listen.port()));
    assert!(admitted_ports(&r, "prewarm-coordinator").contains(&coord));
    // Deploy-group series carry the group's own `namespace` label.
    let pm = r.find("PodMonitor", "prewarm-coordinator");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["honorLabels"], true);
}

#[test]
fn the_dashboard_configmap_is_the_json_file_for_grafanas_sidecar() {
    let r = Rendered(overlay(&["monitoring"]));
    let cm = r.find("ConfigMap", "prewarm-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = root().join("daemonset/components/monitoring/dashboards/prewarm.json");
    let json_text = std::fs::read_to_string(file).unwrap();
    assert_eq!(
        cm["data"]["prewarm.json"].as_str(),
        Some(json_text.as_str())
    );
    let d: Value = serde_json::from_str(&json_text).unwrap();
    let vars: Vec<&Value> = items(&d["templating"]["list"]).iter().collect();
    let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    for name in ["pool", "node"] {
        assert!(vars.iter().any(|v| v["name"] == name), "no variable {name}");
    }
}

#[test]
fn every_alert_has_a_severity_and_a_runbook_in_the_readme() {
    let r = Rendered(overlay(&["monitoring"]));
    let rule = r.find("PrometheusRule", "prewarm");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut alerts = 0;
    for g in items(&rule["spec"]["groups"]) {
        for a in items(&g["rules"]) {
            let name = a["alert"].as_str().expect("alerting rules only");
            assert!(
                ["warning", "critical"].contains(&a["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            let url = a["annotations"]["runbook_url"].as_str().unwrap();
            assert!(
                url.ends_with(&format!("#{}", name.to_lowercase())),
                "{name}: {url}"
            );
            assert!(
                readme.contains(&format!("\n#### {name}\n")),
                "{name}: no runbook"
            );
            alerts += 1;
        }
    }
    assert_eq!(alerts, 9);
}
