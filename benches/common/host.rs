//! What the benches report about the machine and read from `/proc`;
//! included by each bench with `#[path]`, which uses only some of it.
#![allow(dead_code)]

use anyhow::{Context, Result};
use tokio::process::Command;

/// "met" or a bold "missed", for a target column.
pub fn verdict(ok: bool) -> &'static str {
    ["**missed**", "met"][ok as usize]
}

pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'));
    model.map_or("unknown CPU".into(), |(_, v)| v.trim().to_string())
}

/// 1-minute load average: other work on the box skews CPU-bound steps.
pub fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_string()
}

/// utime + stime in clock ticks from a `/proc/<pid>/stat` text (fields 14
/// and 15; `comm` may hold spaces).
pub fn stat_ticks(text: &str) -> Result<u64> {
    let rest = text.rsplit_once(')').context("stat")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    Ok(f.get(11).context("utime")? + f.get(12).context("stime")?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if it cannot say).
pub async fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().await;
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
