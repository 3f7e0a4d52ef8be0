//! `prewarm plan`: a dry run of the activation windows for one node. It
//! validates the config and prints, per window, the next activations, when
//! warming would start, and which images and bytes this node would pull.
//! With `--objects`, the windows the file's KEDA ScaledObjects imply for
//! this node are planned next to the config's (which win on conflict).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use prewarm::config::AgentConfig;
use prewarm::k8s::{parse_labels, Labels};
use prewarm::node::manifest::host_platform;
use prewarm::node::pull::{NoopObserver, PullOptions};
use prewarm::node::runtime::ImageStore;
use prewarm::node::setup;
use prewarm::node::state::{FileStateStore, StateError, StateStore};
use prewarm::plan::keda::{merge_windows, KedaDefaults};
use prewarm::plan::learned;
use prewarm::plan::windows::{activations, plan_windows, NodeView, Phase};

use super::pull::human;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Agent config file.
    #[arg(long, env = "PREWARM_CONFIG")]
    pub config: PathBuf,
    /// This node's labels, k=v,k2=v2 (e.g. kubernetes.azure.com/agentpool=integrations).
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub node_labels: Labels,
    /// Plan as of this time (RFC 3339); default now.
    #[arg(long)]
    pub at: Option<DateTime<Utc>>,
    /// Activations to list per window.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Ask the node's containerd and the registries how many bytes are missing.
    #[arg(long)]
    pub bytes: bool,
    /// Kubernetes objects (multi-document YAML): KEDA ScaledObjects and
    /// their target Deployments/StatefulSets give windows; DeployGroups are
    /// validated.
    #[arg(long)]
    pub objects: Option<PathBuf>,
    /// Lead time of ScaledObject windows without a prewarm.dev/lead-time
    /// annotation (the coordinator's --keda-lead-time).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub keda_lead_time: Duration,
}

pub async fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = AgentConfig::load(&args.config)?;
    let now = args.at.unwrap_or_else(Utc::now);
    let objects = match &args.objects {
        Some(file) => {
            let defaults = KedaDefaults {
                lead_time: args.keda_lead_time,
                ..KedaDefaults::default()
            };
            let objects = super::plan_objects::load(file, &args.node_labels, &defaults)?;
            println!("{}: {} object(s) read", file.display(), objects.count);
            for line in &objects.summary {
                println!("  {line}");
            }
            let (windows, dropped) =
                merge_windows(&cfg.windows, &objects.windows, &args.node_labels, now);
            for d in dropped {
                println!(
                    "  window {} ({}) not planned: {}",
                    d.name, d.source, d.reason
                );
            }
            cfg.windows = windows;
            println!();
            Some(objects)
        }
        None => None,
    };
    let _ = objects;
    let (missing, warm, note) = if args.bytes {
        measure(&cfg).await
    } else {
        (
            BTreeMap::new(),
            BTreeSet::new(),
            Some(
                "bytes not measured (pass --bytes to ask containerd and the registries)"
                    .to_string(),
            ),
        )
    };
    let (throughput, throughput_note) = learned_throughput(&cfg, now);
    let node = NodeView {
        labels: &args.node_labels,
        missing_bytes: &missing,
        warm: &warm,
        throughput,
    };
    let plan = plan_windows(&cfg.windows, &cfg.scheduling, &node, now);
    println!(
        "{}: {} window(s), planned at {}",
        args.config.display(),
        cfg.windows.len(),
        now.to_rfc3339()
    );
    if let Some(n) = &note {
        println!("note: {n}");
    }
    println!("throughput: {throughput_note}");
    for (w, st) in cfg.windows.iter().zip(&plan.windows) {
        let tz = w.timezone;
        let local = |t: DateTime<Utc>| {
            t.with_timezone(&tz)
                .format("%a %Y-%m-%d %H:%M:%S %Z")
                .to_string()
        };
        println!();
        println!(
            "window {}  from {}  priority {}  {}",
            w.name,
            w.source_name(),
            w.priority,
            if st.applies {
                format!("applies to this node, {}", phase_name(st.phase))
            } else {
                "does not apply to this node (nodeSelector)".to_string()
            }
        );
        let lasts = match (&w.end, w.duration) {
            (Some(end), _) => format!("until the next {:?}", end.to_string()),
            (None, Some(d)) => format!("for {}", fmt_dur(d)),
            (None, None) => "for no time".to_string(),
        };
        println!(
            "  schedule   {:?} in {}, {lasts}, lead time at least {}",
            w.schedule.to_string(),
            tz,
            fmt_dur(w.lead_time)
        );
        let next: Vec<String> = activations(w, now, args.count)
            .into_iter()
            .map(local)
            .collect();
        println!("  next       {}", next.join(" | "));
        if let Some((start, end)) = st.occurrence {
            println!("  current    {} until {}", local(start), local(end));
        }
        if st.applies {
            let why = match st.missing_bytes {
                Some(_) => format!("estimated pull {}", fmt_dur(st.estimated_pull)),
                None => "lead time only: bytes not measured".to_string(),
            };
            println!("  warm from  {} ({why})", local(st.warm_start));
        }
        for entry in w.image_entries() {
            let name = entry.image.cri_name();
            let bytes = if warm.contains(&name) {
                "warm".to_string()
            } else {
                missing
                    .get(&name)
                    .map(|b| format!("{} to pull", human(*b)))
                    .unwrap_or_else(|| "? bytes".to_string())
            };
            let unpinned = if entry.pin { "" } else { "  (not pinned)" };
            println!("  image      {name}  {bytes}{unpinned}");
        }
        if st.applies {
            let total = st
                .missing_bytes
                .map(human)
                .unwrap_or_else(|| "unknown".into());
            println!("  this node would pull {total}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The throughput the agent learned on this node (its `state.path`), as
/// the agent would plan with it, and a line saying where it came from.
fn learned_throughput(cfg: &AgentConfig, now: DateTime<Utc>) -> (Option<f64>, String) {
    let default = format!(
        "{}/s (scheduling.defaultThroughput)",
        human(cfg.scheduling.default_throughput.as_u64())
    );
    let Some(path) = cfg.state.path.clone() else {
        return (None, format!("{default}; state.path is null"));
    };
    let store = FileStateStore::new(path);
    let checked = store.load().map_err(|e| match e {
        StateError::Missing { path } => format!("no learned state at {path}"),
        other => other.to_string(),
    });
    // Planned for the node the state was written on: plan runs there.
    let checked = checked.and_then(|s| {
        let node = s.node.clone();
        learned::check(s, &node, Duration::ZERO, now).map_err(|e| e.to_string())
    });
    match checked {
        Ok(s) => match s.throughput_bytes_per_second {
            Some(bps) => (
                Some(bps),
                format!(
                    "{}/s learned on node {:?} ({})",
                    human(bps as u64),
                    s.node,
                    store.location()
                ),
            ),
            None => (
                None,
                format!("{default}; {} holds no measured pull yet", store.location()),
            ),
        },
        Err(why) => (None, format!("{default}; {why}")),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Warming => "warming now",
        Phase::Active => "active now",
        Phase::Late => "active and LATE (images not warm)",
        Phase::Grace => "in its grace period",
    }
}

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Missing bytes per window image, from the node's containerd and the registries.
async fn measure(cfg: &AgentConfig) -> (BTreeMap<String, u64>, BTreeSet<String>, Option<String>) {
    let mut missing = BTreeMap::new();
    let mut warm = BTreeSet::new();
    let stack = match setup::connect(cfg, Arc::new(NoopObserver)).await {
        Ok(s) => s,
        Err(e) => return (missing, warm, Some(format!("bytes unknown: {e}"))),
    };
    let opts = PullOptions {
        pin: false,
        platform: cfg.registry.platform.clone().unwrap_or_else(host_platform),
        cri_timeout: Duration::from_secs(60),
        priority: 0,
        bandwidth: None,
    };
    let cancel = CancellationToken::new();
    let mut problems = Vec::new();
    let images: BTreeSet<_> = cfg
        .windows
        .iter()
        .flat_map(|w| w.images.iter().map(|i| i.image.clone()))
        .collect();
    for img in images {
        let name = img.cri_name();
        if let Ok(Some(_)) = stack.containerd.image_status(&name).await {
            warm.insert(name);
            continue;
        }
        match tokio::time::timeout(
            Duration::from_secs(20),
            stack.engine.missing_bytes(&img, &opts, &cancel),
        )
        .await
        {
            Ok(Ok(b)) => {
                missing.insert(name, b);
            }
            Ok(Err(e)) => problems.push(e.to_string()),
            Err(_) => problems.push(format!("{name}: registry did not answer in 20s")),
        }
    }
    let note =
        (!problems.is_empty()).then(|| format!("some sizes unknown: {}", problems.join("; ")));
    (missing, warm, note)
}
