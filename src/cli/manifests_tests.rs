//! The shipped manifests as `kubectl apply -k` installs them: `daemonset/`
//! and its components are rendered with kustomize (from `.tools/`, see
//! scripts/setup.sh; `kubectl kustomize` otherwise) and read with prewarm's
//! own parsers: the agent's config.yaml with `AgentConfig`, the containers'
//! args with the binary's flags. The agent config must point at what the
//! rendered Service, Deployment and DaemonSet really expose and mount.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::OnceLock;

use clap::Parser;
use serde::Deserialize;
use serde_json::Value;

use super::{Cli, Command};
use prewarm::config::AgentConfig;
use prewarm::coordinator::auth::AUDIENCE;
use prewarm::coordinator::ca::CA_CONFIGMAP;
use prewarm::coordinator::leader::LEADER_LABEL;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kustomize build dir` as JSON documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let tool = root().join(".tools/kustomize-trixie/usr/bin/kustomize");
    let out = if tool.is_file() {
        Process::new(&tool).arg("build").arg(dir).output()
    } else {
        Process::new("kubectl").arg("kustomize").arg(dir).output()
    }
    .unwrap_or_else(|e| {
        panic!(
            "neither {} nor kubectl runs ({e}); run scripts/setup.sh",
            tool.display()
        )
    });
    assert!(
        out.status.success(),
        "kustomize build {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The base with `components` (folders under daemonset/components), the
/// way a user's overlay includes them.
fn overlay(components: &[&str]) -> Vec<Value> {
    // kustomize takes only relative paths: the overlay lives two levels
    // below the repository root.
    let dir = tempfile::tempdir_in(root().join("target")).unwrap();
    let list: Vec<String> = components
        .iter()
        .map(|c| format!("  - ../../daemonset/components/{c}"))
        .collect();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../daemonset\ncomponents:\n{}\n",
            list.join("\n")
        ),
    )
    .unwrap();
    kustomize(dir.path())
}

struct Rendered(Vec<Value>);

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn all<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0.iter().filter(move |o| o["kind"] == kind)
    }

    fn agent_pod(&self) -> &Value {
        &self.find("DaemonSet", "prewarm-agent")["spec"]["template"]["spec"]
    }

    fn coordinator_pod(&self) -> &Value {
        &self.find("Deployment", "prewarm-coordinator")["spec"]["template"]["spec"]
    }

    fn agent_config(&self) -> AgentConfig {
        let text = self.find("ConfigMap", "prewarm-agent")["data"]["config.yaml"]
            .as_str()
            .expect("data.config.yaml");
        AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("shipped config.yaml: {e}"))
    }
}

fn base() -> &'static Rendered {
    static BASE: OnceLock<Rendered> = OnceLock::new();
    BASE.get_or_init(|| Rendered(kustomize(&root().join("daemonset"))))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The mount of `container` that holds `path` (the deepest one) and the
/// volume behind it, with `path` relative to the mount.
fn mount_of<'a>(pod: &'a Value, container: &Value, path: &Path) -> (&'a Value, PathBuf) {
    let (mount, rel) = items(&container["volumeMounts"])
        .iter()
        .filter_map(|m| {
            let at = Path::new(m["mountPath"].as_str()?);
            path.strip_prefix(at).ok().map(|rel| (m, rel.to_path_buf()))
        })
        .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
        .unwrap_or_else(|| panic!("{} is not on any mount", path.display()));
    let volume = items(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    (volume, rel)
}

fn named_port(ports: &Value, name: &str) -> i64 {
    items(ports)
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64().or(p["port"].as_i64()))
        .unwrap_or_else(|| panic!("no port {name}"))
}

fn parse_args(args: &Value) -> Command {
    let argv = std::iter::once("prewarm".to_string()).chain(
        items(args)
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string()),
    );
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("container args {args}: {e}"))
        .command
}

fn coordinator_args(r: &Rendered) -> super::coordinator::CoordinatorArgs {
    match parse_args(&container(r.coordinator_pod(), "coordinator")["args"]) {
        Command::Coordinator(a) => *a,
        other => panic!("the coordinator runs {other:?}"),
    }
}

#[test]
fn the_default_install_links_agents_to_the_coordinator() {
    let r = base();
    let link = r
        .agent_config()
        .coordinator
        .expect("the shipped agent config has a coordinator: section");

    // The endpoint is the Service's DNS name and gRPC port, and that port
    // reaches the port the coordinator listens on.
    let svc = r.find("Service", "prewarm-coordinator");
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    let port = items(&svc["spec"]["ports"])
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("Service port grpc");
    assert_eq!(
        link.endpoint,
        format!(
            "https://prewarm-coordinator.{ns}.svc:{}",
            port["port"].as_i64().unwrap()
        )
    );
    let target = port["targetPort"].as_str().expect("named targetPort");
    let coordinator = container(r.coordinator_pod(), "coordinator");
    let args = coordinator_args(r);
    // TLS only: the coordinator has its certificate and no opt-out, and
    // the agents do not accept plain text either.
    assert!(args.tls_cert.is_some() && args.tls_key.is_some());
    assert!(!args.insecure, "the shipped coordinator runs --insecure");
    assert!(!link.insecure, "the shipped agent config sets insecure");
    assert_eq!(
        named_port(&coordinator["ports"], target),
        i64::from(args.grpc_listen.port())
    );
    // The Service selects the leader among the Deployment's pods.
    let selector = svc["spec"]["selector"].as_object().unwrap();
    let pod_labels =
        &r.find("Deployment", "prewarm-coordinator")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        if k != LEADER_LABEL {
            assert_eq!(&pod_labels[k], v, "Service selector {k}");
        }
    }
    assert_eq!(selector[LEADER_LABEL], "true");

    // The token is the projected one with the audience the coordinator checks.
    let pod = r.agent_pod();
    let agent = container(pod, "agent");
    let (volume, file) = mount_of(pod, agent, &link.token_file);
    let sources = items(&volume["projected"]["sources"]);
    let token = sources
        .iter()
        .find(|s| s["serviceAccountToken"]["path"] == file.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} is not a projected token", link.token_file.display()));
    assert_eq!(token["serviceAccountToken"]["audience"], AUDIENCE);

    // The CA is the ConfigMap the coordinator publishes, optional so the
    // agent starts before it exists, outside the config mount.
    let ca = link.ca_file.expect("caFile");
    assert!(!ca.starts_with("/etc/prewarm"), "{}", ca.display());
    let (volume, file) = mount_of(pod, agent, &ca);
    assert_eq!(volume["configMap"]["name"], CA_CONFIGMAP);
    assert_eq!(volume["configMap"]["optional"], true);
    assert_eq!(file, Path::new("ca.crt"));
    let publishes = args.ca_configmap.as_str();
    assert_eq!(publishes, CA_CONFIGMAP);
    assert_eq!(
        ns,
        r.find("Deployment", "prewarm-coordinator")["metadata"]["namespace"]
    );
}

#[test]
fn the_agents_args_and_the_config_mount_agree() {
    let r = base();
    let pod = r.agent_pod();
    let agent = container(pod, "agent");
    let Command::Agent(args) = parse_args(&agent["args"]) else {
        panic!("the DaemonSet does not run the agent");
    };
    let (volume, file) = mount_of(pod, agent, &args.config);
    assert_eq!(volume["configMap"]["name"], "prewarm-agent");
    assert_eq!(file, Path::new("config.yaml"));
    // No mount nested inside the config mount (fragile with configMap volumes).
    let config_dir = args.config.parent().unwrap();
    for m in items(&agent["volumeMounts"]) {
        let at = Path::new(m["mountPath"].as_str().unwrap());
        assert!(
            at == config_dir || !at.starts_with(config_dir),
            "{} is nested in {}",
            at.display(),
            config_dir.display()
        );
    }
}

/// glibc's fixed mmap threshold (a `GLIBC_TUNABLES` entry), if set.
fn mmap_threshold(tunables: &str) -> Option<usize> {
    tunables
        .split(':')
        .find_map(|t| t.strip_prefix("glibc.malloc.mmap_threshold="))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("mmap_threshold {v:?}: {e}"))
        })
}

#[test]
fn the_agent_unmaps_its_write_buffers_when_freed() {
    let agent = container(base().agent_pod(), "agent");
    let tunables = items(&agent["env"])
        .iter()
        .find(|e| e["name"] == "GLIBC_TUNABLES")
        .and_then(|e| e["value"].as_str())
        .expect("the agent container sets GLIBC_TUNABLES");
    // A fixed threshold also turns off glibc's raising it as blocks are freed.
    let threshold = mmap_threshold(tunables).expect("glibc.malloc.mmap_threshold");
    assert!(
        threshold <= prewarm::node::containerd::WRITE_CHUNK,
        "threshold {threshold} is above the containerd write chunk"
    );
}

#[test]
fn the_coordinators_args_name_files_of_its_tls_secret() {
    let r = base();
    let args = coordinator_args(r);
    let pod = r.coordinator_pod();
    let c = container(pod, "coordinator");
    let files = [
        (args.tls_cert.clone().expect("--tls-cert"), "tls.crt"),
        (args.tls_key.clone().expect("--tls-key"), "tls.key"),
        (args.tls_ca.clone().expect("--tls-ca"), "ca.crt"),
    ];
    for (path, key) in files {
        let (volume, file) = mount_of(pod, c, &path);
        assert_eq!(volume["secret"]["secretName"], "prewarm-coordinator-tls");
        assert_eq!(file, Path::new(key), "{}", path.display());
        // Every key of the Secret is projected: no items list that would
        // fail the mount when a key (ca.crt) is missing.
        assert!(volume["secret"]["items"].is_null());
    }
    assert!(
        args.pod_name.is_empty(),
        "--pod-name comes from POD_NAME only"
    );
    let env = items(&c["env"]);
    assert!(env
        .iter()
        .any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
}

/// hostPath types that check and never create anything on the node.
const CHECKED: [&str; 3] = ["Directory", "File", "Socket"];

/// The one host path the agent writes, created if missing: prewarm's own
/// state directory, holding `state.path`.
const STATE_DIR: (&str, &str) = ("/var/lib/prewarm", "DirectoryOrCreate");

/// Whether a hostPath is checked, or is exactly the state directory.
fn allowed_host_path(path: &str, kind: &str) -> bool {
    CHECKED.contains(&kind) || (path, kind) == STATE_DIR
}

fn host_paths(pod: &Value) -> Vec<(String, String)> {
    items(&pod["volumes"])
        .iter()
        .filter(|v| v["hostPath"].is_object())
        .map(|v| {
            (
                v["hostPath"]["path"].as_str().unwrap().to_string(),
                v["hostPath"]["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn the_base_mounts_only_host_paths_every_containerd_node_has() {
    let got = host_paths(base().agent_pod());
    let want = [
        ("/run/containerd".to_string(), "Directory".to_string()),
        (
            "/var/lib/containerd/io.containerd.content.v1.content".to_string(),
            "Directory".to_string(),
        ),
        (STATE_DIR.0.to_string(), STATE_DIR.1.to_string()),
    ];
    assert_eq!(got, want);
    // containerd's root is not mounted (it holds every container's root
    // filesystem); its content store is, read-only, at the same path,
    // which is where the agent measures the disk floor.
    let pod = base().agent_pod();
    let mounts = items(&container(pod, "agent")["volumeMounts"]).to_vec();
    let content = mounts
        .iter()
        .find(|m| m["name"] == "containerd-content")
        .expect("content store mount");
    let want = Path::new(prewarm::config::DEFAULT_CONTAINERD_ROOT)
        .join(prewarm::node::setup::CONTENT_STORE_DIR);
    assert_eq!(content["mountPath"], want.display().to_string());
    assert_eq!(content["readOnly"], true);
    assert!(
        !mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/containerd"),
        "containerd's root is mounted"
    );
    // Host files the config names but the base does not mount are simply
    // absent in the pod, which the agent treats as "not configured".
    let cfg = base().agent_config();
    let pod = base().agent_pod();
    let agent = container(pod, "agent");
    let mounted = |p: &Path| {
        items(&agent["volumeMounts"])
            .iter()
            .any(|m| p.starts_with(m["mountPath"].as_str().unwrap()))
    };
    for p in cfg
        .registry
        .docker_config
        .iter()
        .chain(&cfg.registry.hosts_dir)
    {
        assert!(!mounted(p), "{} is mounted by the base", p.display());
    }
}

/// The shipped config's `state.path` lies in the writable state directory
/// mount, directly (nothing else of the host is writable).
#[test]
fn the_learned_state_file_is_on_the_state_directory_mount() {
    let cfg = base().agent_config();
    let path = cfg.state.path.expect("the shipped config keeps state");
    let pod = base().agent_pod();
    let agent = container(pod, "agent");
    let (volume, rel) = mount_of(pod, agent, &path);
    assert_eq!(volume["hostPath"]["path"], STATE_DIR.0);
    assert_eq!(volume["hostPath"]["type"], STATE_DIR.1);
    assert_eq!(rel, Path::new("learned.json"));
    let writable: Vec<&str> = items(&agent["volumeMounts"])
        .iter()
        .filter(|m| m["readOnly"] != true)
        .filter(|m| {
            let v = items(&pod["volumes"])
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap();
            v["hostPath"].is_object() && v["hostPath"]["path"] != "/run/containerd"
        })
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(writable, [STATE_DIR.0], "writable host mounts");
}

/// Every component renders on top of the base with checked hostPath types.
#[test]
fn every_component_renders_with_checked_host_paths() {
    let dir = root().join("daemonset/components");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "components: {names:?}");
    for name in &names {
        let r = Rendered(overlay(&[name.as_str()]));
        for (path, kind) in host_paths(r.agent_pod()) {
            assert!(
                allowed_host_path(&path, &kind),
                "{name}: {path} has type {kind:?}"
            );
        }
        r.agent_config();
    }
}

#[test]
fn the_aks_component_mounts_the_credential_provider_inputs() {
    let r = Rendered(overlay(&["aks"]));
    let cfg = r.agent_config();
    let cp = cfg
        .registry
        .credential_provider
        .expect("credentialProvider");
    let pod = r.agent_pod();
    let agent = container(pod, "agent");
    let host = |path: &Path| {
        let (volume, rel) = mount_of(pod, agent, path);
        let hp = &volume["hostPath"];
        (
            Path::new(hp["path"].as_str().expect("a hostPath")).join(rel),
            hp["type"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        host(&cp.config),
        (cp.config.clone(), "File".to_string()),
        "credentialProvider.config"
    );
    assert_eq!(
        host(&cp.bin_dir),
        (cp.bin_dir.clone(), "Directory".to_string()),
        "credentialProvider.binDir"
    );
    // acr-credential-provider's argument.
    let azure = Path::new("/etc/kubernetes/azure.json");
    assert_eq!(host(azure), (azure.to_path_buf(), "File".to_string()));
    // Read-only, all three.
    for path in [&cp.config, &cp.bin_dir, &azure.to_path_buf()] {
        let m = items(&agent["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"].as_str() == path.to_str())
            .unwrap_or_else(|| panic!("no mount at {}", path.display()));
        assert_eq!(m["readOnly"], true, "{m}");
    }
}

#[test]
fn the_node_file_components_mount_what_the_config_reads() {
    let r = Rendered(overlay(&["containerd-certs"]));
    let cfg = r.agent_config();
    let hosts = cfg.registry.hosts_dir.expect("hostsDir");
    let pod = r.agent_pod();
    let (volume, rel) = mount_of(pod, container(pod, "agent"), &hosts);
    assert_eq!(
        (
            volume["hostPath"]["path"].as_str(),
            rel.as_os_str().is_empty()
        ),
        (hosts.to_str(), true)
    );
    assert_eq!(volume["hostPath"]["type"], "Directory");

    let r = Rendered(overlay(&["kubelet-docker-config"]));
    let cfg = r.agent_config();
    let file = &cfg.registry.docker_config[0];
    let pod = r.agent_pod();
    let (volume, rel) = mount_of(pod, container(pod, "agent"), file);
    assert_eq!(
        (
            volume["hostPath"]["path"].as_str(),
            rel.as_os_str().is_empty()
        ),
        (file.to_str(), true)
    );
    assert_eq!(volume["hostPath"]["type"], "File");
}

#[test]
fn the_cert_manager_component_issues_the_coordinators_secret() {
    let r = Rendered(overlay(&["cert-manager"]));
    let link = r.agent_config().coordinator.expect("coordinator");
    let host = url::Url::parse(&link.endpoint)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let serving = r
        .all("Certificate")
        .find(|c| c["spec"]["secretName"] == "prewarm-coordinator-tls")
        .expect("a Certificate for Secret prewarm-coordinator-tls");
    let ns = serving["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(ns, "prewarm-system");
    let dns = items(&serving["spec"]["dnsNames"]);
    assert!(
        dns.iter().any(|d| d == host.as_str()),
        "{dns:?} lacks {host}"
    );
    // Webhook calls go to the same Service on its webhook port.
    let webhook = r.find("MutatingWebhookConfiguration", "prewarm-gate");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{ns}/{}", serving["metadata"]["name"].as_str().unwrap())
    );
    // Signed by a CA Issuer (so the Secret carries ca.crt), whose key pair
    // is a CA Certificate from a self-signed Issuer.
    let issuer = r.find(
        "Issuer",
        serving["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA Issuer");
    let ca = r
        .all("Certificate")
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    let root_issuer = r.find("Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert!(root_issuer["spec"]["selfSigned"].is_object());
    for o in [serving, ca, issuer, root_issuer] {
        assert_eq!(o["metadata"]["namespace"], ns, "{}", o["metadata"]["name"]);
    }
}

// ---- namespaces, RBAC and NetworkPolicies ----

fn labels_of(o: &Value) -> &serde_json::Map<String, Value> {
    o["metadata"]["labels"].as_object().expect("labels")
}

/// The agent alone in a `privileged` namespace, the coordinator in one
/// that enforces `restricted` (and its pod meets it).
#[test]
fn each_component_runs_in_its_own_pod_security_level() {
    let r = base();
    let node = labels_of(r.find("Namespace", "prewarm-node"));
    assert_eq!(node["pod-security.kubernetes.io/enforce"], "privileged");
    let system = labels_of(r.find("Namespace", "prewarm-system"));
    assert_eq!(system["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(
        system["pod-security.kubernetes.io/enforce-version"],
        "latest"
    );
    for ns in [node, system] {
        assert!(
            !ns.contains_key("pod-security.kubernetes.io/warn"),
            "{ns:?}"
        );
        assert!(
            !ns.contains_key("pod-security.kubernetes.io/audit"),
            "{ns:?}"
        );
    }
    assert_eq!(
        r.find("DaemonSet", "prewarm-agent")["metadata"]["namespace"],
        "prewarm-node"
    );
    assert_eq!(
        r.find("Deployment", "prewarm-coordinator")["metadata"]["namespace"],
        "prewarm-system"
    );
    // What `restricted` checks of the coordinator's pod.
    let pod = r.coordinator_pod();
    assert!(host_paths(pod).is_empty());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(pod, "coordinator");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    // The coordinator knows where the agents are.
    let env = items(&c["env"]);
    assert!(env
        .iter()
        .any(|e| e["name"] == "PREWARM_AGENT_NAMESPACE" && e["value"] == "prewarm-node"));
    // The gate webhook never gates prewarm's own pods.
    let webhook = r.find("MutatingWebhookConfiguration", "prewarm-gate");
    let excluded = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    for ns in ["prewarm-node", "prewarm-system"] {
        assert!(
            items(&excluded["values"]).iter().any(|v| v == ns),
            "{excluded}"
        );
    }
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"]["namespace"],
        "prewarm-system"
    );
}

/// No kustomize `namespace:` transformer (it would put both components in
/// one namespace): every namespaced object of daemonset/ states its own,
/// and every ServiceAccount subject names the namespace its account is in.
#[test]
fn every_namespaced_object_states_its_namespace() {
    let dir = root().join("daemonset");
    let k: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    assert!(
        k.get("namespace").is_none(),
        "kustomization.yaml sets namespace:"
    );
    const CLUSTER_SCOPED: [&str; 5] = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
    ];
    for file in items(&k["resources"]) {
        let file = file.as_str().unwrap();
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let o = Value::deserialize(doc).unwrap();
            let kind = o["kind"].as_str().unwrap_or_default();
            if o.is_null() || CLUSTER_SCOPED.contains(&kind) {
                continue;
            }
            let want = if file.starts_with("agent-") {
                "prewarm-node"
            } else {
                "prewarm-system"
            };
            let ns = o["metadata"]["namespace"].as_str();
            // The coordinator's Roles in the agents' namespace.
            let agents_ns_role = file == "coordinator-rbac.yaml" && ns == Some("prewarm-node");
            assert!(
                ns == Some(want) || agents_ns_role,
                "{file}: {kind} {} has namespace {ns:?}, not {want}",
                o["metadata"]["name"]
            );
        }
    }
    let r = base();
    let accounts: Vec<(String, String)> = r
        .all("ServiceAccount")
        .map(|sa| {
            let m = &sa["metadata"];
            (m["namespace"].to_string(), m["name"].to_string())
        })
        .collect();
    for b in r.all("RoleBinding").chain(r.all("ClusterRoleBinding")) {
        for s in items(&b["subjects"]) {
            let ours = (s["namespace"].to_string(), s["name"].to_string());
            assert!(
                accounts.contains(&ours),
                "{}: subject {s}",
                b["metadata"]["name"]
            );
        }
    }
}

/// The cluster-wide ClusterRole writes no Deployment, Job or ScaledObject;
/// those are in prewarm-deploygroup, which nothing in the install binds.
#[test]
fn the_cluster_wide_role_cannot_write_deploy_group_members() {
    let r = base();
    let role = r.find("ClusterRole", "prewarm-coordinator");
    let guarded = ["deployments", "jobs", "scaledobjects"];
    for rule in items(&role["rules"]) {
        let verbs: Vec<&str> = items(&rule["verbs"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for res in items(&rule["resources"]).iter().filter_map(Value::as_str) {
            if guarded.contains(&res) {
                assert!(
                    verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                    "ClusterRole prewarm-coordinator: {res} {verbs:?}"
                );
            }
            assert_ne!(res, "*", "{rule}");
        }
        assert!(!verbs.contains(&"*"), "{rule}");
    }
    // Pods: only what the gate needs cluster-wide (get is agents-only).
    let pods = items(&role["rules"])
        .iter()
        .find(|r| items(&r["resources"]).iter().any(|x| x == "pods"))
        .expect("a pods rule");
    assert_eq!(pods["verbs"], serde_json::json!(["list", "watch", "patch"]));
    r.find("ClusterRole", "prewarm-deploygroup");
    for b in r.all("ClusterRoleBinding").chain(r.all("RoleBinding")) {
        assert_ne!(b["roleRef"]["name"], "prewarm-deploygroup", "{b}");
    }
}

/// Secrets are readable by nothing the install binds: only through
/// prewarm-pull-secrets (get secrets and serviceaccounts, nothing else),
/// which a namespace binds for itself.
#[test]
fn only_the_unbound_pull_secret_role_reads_secrets() {
    let r = base();
    let role = r.find("ClusterRole", "prewarm-pull-secrets");
    let rules: Vec<(Value, Value)> = items(&role["rules"])
        .iter()
        .map(|r| (r["resources"].clone(), r["verbs"].clone()))
        .collect();
    assert_eq!(
        rules,
        vec![
            (serde_json::json!(["secrets"]), serde_json::json!(["get"])),
            (
                serde_json::json!(["serviceaccounts"]),
                serde_json::json!(["get"])
            ),
        ]
    );
    for b in r.all("ClusterRoleBinding").chain(r.all("RoleBinding")) {
        assert_ne!(b["roleRef"]["name"], "prewarm-pull-secrets", "{b}");
    }
    for kind in ["ClusterRole", "Role"] {
        for role in r.all(kind) {
            if role["metadata"]["name"] == "prewarm-pull-secrets" {
                continue;
            }
            for rule in items(&role["rules"]) {
                let res = items(&rule["resources"]);
                assert!(!res.iter().any(|x| x == "secrets"), "{role}");
            }
        }
    }
}

/// Both components ship a NetworkPolicy selecting their pods and opening
/// exactly the ports they listen on; the link only to agent pods.
#[test]
fn network_policies_open_only_the_listened_ports() {
    let r = base();
    let ports_of = |rule: &Value| -> Vec<i64> {
        items(&rule["ports"])
            .iter()
            .map(|p| {
                assert_eq!(p["protocol"], "TCP");
                p["port"].as_i64().expect("numeric port")
            })
            .collect()
    };
    let selects = |np: &Value, pod_labels: &Value| {
        let sel = np["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert!(!sel.is_empty());
        for (k, v) in sel {
            assert_eq!(&pod_labels[k], v, "{}: {k}", np["metadata"]["name"]);
        }
    };

    let agent = r.find("NetworkPolicy", "prewarm-agent");
    assert_eq!(agent["metadata"]["namespace"], "prewarm-node");
    let ds = r.find("DaemonSet", "prewarm-agent");
    selects(agent, &ds["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(agent["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = items(&agent["spec"]["ingress"]);
    assert_eq!(rules.len(), 1);
    let metrics = named_port(&container(r.agent_pod(), "agent")["ports"], "metrics");
    assert_eq!(ports_of(&rules[0]), vec![metrics]);

    let coord = r.find("NetworkPolicy", "prewarm-coordinator");
    assert_eq!(coord["metadata"]["namespace"], "prewarm-system");
    let deploy = r.find("Deployment", "prewarm-coordinator");
    selects(coord, &deploy["spec"]["template"]["metadata"]["labels"]);
    let rules = items(&coord["spec"]["ingress"]);
    assert_eq!(rules.len(), 2, "{rules:?}");
    let grpc = i64::from(coordinator_args(r).grpc_listen.port());
    assert_eq!(ports_of(&rules[0]), vec![grpc]);
    let from = items(&rules[0]["from"]);
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"],
        serde_json::json!({"kubernetes.io/metadata.name": "prewarm-node"})
    );
    let agent_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in from[0]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&agent_labels[k], v);
    }
    // Every other listened port, from anywhere (no `from`).
    let c = container(r.coordinator_pod(), "coordinator");
    let mut others: Vec<i64> = items(&c["ports"])
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .filter(|p| *p != grpc)
        .collect();
    others.sort();
    let mut open = ports_of(&rules[1]);
    open.sort();
    assert_eq!(open, others);
    assert!(rules[1]["from"].is_null());
}

/// The gate webhook and `prewarm status` reach the HTTPS listener through
/// the Service's `https` port; metrics stay on the `http` port.
#[test]
fn the_webhook_and_the_view_reach_the_https_listener() {
    let r = base();
    let svc = r.find("Service", "prewarm-coordinator");
    let port = |name: &str| {
        items(&svc["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("Service port {name}"))
    };
    let https = port("https");
    let webhook = r.find("MutatingWebhookConfiguration", "prewarm-gate");
    let client = &items(&webhook["webhooks"])[0]["clientConfig"]["service"];
    assert_eq!(client["port"], https["port"]);
    assert_eq!(client["path"], prewarm::coordinator::webhook::PATH);
    let coordinator = container(r.coordinator_pod(), "coordinator");
    let args = coordinator_args(r);
    let target = https["targetPort"].as_str().expect("named targetPort");
    assert_eq!(
        named_port(&coordinator["ports"], target),
        i64::from(args.https_listen.port())
    );
    // `prewarm status`'s default URL is that Service port.
    let status = match Cli::try_parse_from(["prewarm", "status"]).unwrap().command {
        Command::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(
        status.coordinator,
        format!(
            "https://prewarm-coordinator.{ns}.svc:{}",
            https["port"].as_i64().unwrap()
        )
    );
    let http = port("http");
    let annotations =
        &r.find("Deployment", "prewarm-coordinator")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        args.http_listen.port().to_string()
    );
    assert_eq!(
        named_port(&coordinator["ports"], http["targetPort"].as_str().unwrap()),
        i64::from(args.http_listen.port())
    );
}

#[path = "manifests_monitoring_tests.rs"]
mod monitoring;
