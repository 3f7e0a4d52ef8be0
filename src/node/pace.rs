//! Pacing: byte-rate limiters (the node's budget and windows' budgets
//! nested inside it) and the free-disk floor.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::units::DiskFloor;

/// One bytes/s budget shared by every download that passes it: a GCRA
/// limiter with a tenth of a second of burst, on tokio's clock (so tests
/// run it on paused time).
pub struct Bandwidth {
    /// Bytes/s; 0 means unlimited.
    rate: u64,
    /// How far ahead of real time the budget may be spent.
    tolerance: Duration,
    /// When the bytes granted so far would have passed at exactly `rate`.
    tat: Mutex<Option<Instant>>,
}

impl Bandwidth {
    /// `bytes_per_sec == 0` means unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        // A tenth of a second of burst keeps the rate smooth while letting
        // whole network chunks through.
        let burst = (bytes_per_sec / 10).max(16 * 1024).min(bytes_per_sec);
        Self {
            rate: bytes_per_sec,
            tolerance: nanos_for(burst, bytes_per_sec),
            tat: Mutex::new(None),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.rate > 0
    }

    /// Bytes/s; 0 when unlimited.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Bytes that may pass at once from idle.
    pub fn burst(&self) -> u64 {
        (self.tolerance.as_nanos() * self.rate as u128 / 1_000_000_000) as u64
    }

    /// Waits until `n` bytes may pass. The bytes are booked when the call
    /// starts, so concurrent callers are served in order; a call dropped
    /// while waiting leaves its share unused (never more than the budget).
    pub async fn take(&self, n: usize) {
        if self.rate == 0 || n == 0 {
            return;
        }
        let until = {
            let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = tat.map_or(now, |t| t.max(now));
            let next = start + nanos_for(n as u64, self.rate);
            *tat = Some(next);
            next.checked_sub(self.tolerance).filter(|t| *t > now)
        };
        if let Some(t) = until {
            tokio::time::sleep_until(t).await;
        }
    }
}

/// Time for `bytes` at `rate` bytes/s, rounded up.
fn nanos_for(bytes: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let ns = (bytes as u128 * 1_000_000_000).div_ceil(rate as u128);
    Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

/// The budgets one pull's bytes pass: its window's, if it has one, nested
/// inside the node's.
#[derive(Clone)]
pub struct Budget {
    node: Arc<Bandwidth>,
    window: Option<Arc<Bandwidth>>,
}

impl Budget {
    pub fn new(node: Arc<Bandwidth>, window: Option<Arc<Bandwidth>>) -> Self {
        Self { node, window }
    }

    /// The rate this pull can reach at most (0: unlimited).
    pub fn effective_rate(&self) -> u64 {
        let rates = [Some(self.node.rate), self.window.as_ref().map(|w| w.rate)];
        rates
            .into_iter()
            .flatten()
            .filter(|r| *r > 0)
            .min()
            .unwrap_or(0)
    }

    /// Waits until `n` bytes may pass both the window's and the node's budget.
    pub async fn take(&self, n: usize) {
        if let Some(w) = &self.window {
            w.take(n).await;
        }
        self.node.take(n).await;
    }
}

/// Free and total bytes of the filesystem holding containerd's root.
pub trait DiskProbe: Send + Sync {
    fn usage(&self) -> std::io::Result<DiskUsage>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub free: u64,
    pub total: u64,
}

/// statvfs(2) on one path. Its errors name the path, and what it is and
/// how to change it when [`StatvfsProbe::described`] says.
pub struct StatvfsProbe {
    path: PathBuf,
    what: String,
    hint: String,
}

impl StatvfsProbe {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            what: String::new(),
            hint: String::new(),
        }
    }

    /// Errors say what the path is (`what`) and how to change it (`hint`).
    pub fn described(mut self, what: &str, hint: &str) -> Self {
        self.what = what.to_owned();
        self.hint = hint.to_owned();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, err: nix::errno::Errno) -> std::io::Error {
        let err = std::io::Error::from(err);
        let mut msg = self.path.display().to_string();
        if !self.what.is_empty() {
            msg.push_str(&format!(" ({})", self.what));
        }
        msg.push_str(&format!(": {err}"));
        if !self.hint.is_empty() {
            msg.push_str(&format!("; {}", self.hint));
        }
        std::io::Error::new(err.kind(), msg)
    }
}

impl DiskProbe for StatvfsProbe {
    fn usage(&self) -> std::io::Result<DiskUsage> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|e| self.error(e))?;
        let frsize = st.fragment_size() as u64;
        Ok(DiskUsage {
            free: st.blocks_available() as u64 * frsize,
            total: st.blocks() as u64 * frsize,
        })
    }
}

/// Bytes the floor keeps free on a filesystem of `total` bytes.
pub fn floor_bytes(floor: &DiskFloor, total: u64) -> u64 {
    match floor {
        DiskFloor::Bytes(b) => *b,
        DiskFloor::Percent(p) => ((total as f64) * p / 100.0).ceil() as u64,
    }
}

/// Compressed bytes expand when unpacked; until the layer is unpacked we
/// only know its compressed size, so we reserve this multiple on top.
pub const UNPACK_FACTOR: u64 = 2;

/// Decides whether a pull that still needs `missing` compressed bytes keeps
/// the disk above its floor. Pure, for tests.
pub fn disk_check(usage: DiskUsage, floor: &DiskFloor, missing: u64) -> Result<(), DiskRefusal> {
    let floor = floor_bytes(floor, usage.total);
    let needed = missing.saturating_mul(1 + UNPACK_FACTOR);
    if usage.free < floor.saturating_add(needed) {
        return Err(DiskRefusal {
            free: usage.free,
            floor,
            needed,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("disk below floor: {free} bytes free, the floor keeps {floor} and the pull needs about {needed}")]
pub struct DiskRefusal {
    pub free: u64,
    pub floor: u64,
    pub needed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_floor_decisions() {
        let usage = DiskUsage {
            free: 10_000,
            total: 100_000,
        };
        assert!(disk_check(usage, &DiskFloor::Percent(5.0), 1_000).is_ok());
        // 5% floor = 5000, 2000 missing needs 6000 with unpacking.
        let err = disk_check(usage, &DiskFloor::Percent(5.0), 2_000).unwrap_err();
        assert_eq!(
            err,
            DiskRefusal {
                free: 10_000,
                floor: 5_000,
                needed: 6_000
            }
        );
        assert!(disk_check(usage, &DiskFloor::Bytes(10_001), 0).is_err());
        assert!(disk_check(usage, &DiskFloor::Bytes(10_000), 0).is_ok());
    }

    #[test]
    fn statvfs_reads_this_machine() {
        let u = StatvfsProbe::new(Path::new("/")).usage().unwrap();
        assert!(u.total > 0 && u.free <= u.total);
    }

    /// The bare OS error named neither the path nor how to change it.
    #[test]
    fn statvfs_errors_name_the_path_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-root");
        let err = StatvfsProbe::new(&missing).usage().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let shown = missing.display();
        assert!(err.to_string().starts_with(&format!("{shown}: ")), "{err}");
        let probe = StatvfsProbe::new(&missing).described("containerd's root", "pass --root");
        let err = probe.usage().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{shown} (containerd's root): No such file or directory (os error 2); pass --root"
            )
        );
    }

    /// tokio's timers fire on whole milliseconds.
    fn assert_near(got: Duration, want: Duration) {
        let ok = got >= want.saturating_sub(Duration::from_millis(1))
            && got <= want + Duration::from_millis(2);
        assert!(ok, "took {got:?}, expected {want:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_does_not_wait() {
        let b = Bandwidth::new(0);
        assert!(!b.is_limited());
        let t = Instant::now();
        b.take(1 << 30).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    /// 8 MiB at 4 MiB/s: the first 0.1 s of budget passes at once, the rest
    /// at exactly the rate.
    #[tokio::test(start_paused = true)]
    async fn limit_holds_rate() {
        let b = Bandwidth::new(4 << 20);
        assert_eq!(b.burst(), (4 << 20) / 10);
        let t = Instant::now();
        b.take((4 << 20) / 10).await;
        assert_eq!(t.elapsed(), Duration::ZERO, "the burst passes at once");
        for _ in 0..256 {
            b.take(32 << 10).await;
        }
        // 8 MiB booked in all; the last piece passed 0.1 s early.
        assert_near(t.elapsed(), Duration::from_secs(2));
    }

    /// Concurrent takers share one budget.
    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_share_the_budget() {
        let b = Arc::new(Bandwidth::new(1 << 20));
        let t = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    for _ in 0..64 {
                        b.take(4 << 10).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 1 MiB at 1 MiB/s, less the 0.1 s burst.
        assert_near(t.elapsed(), Duration::from_millis(900));
    }

    /// A window's budget nests inside the node's: bytes pay both.
    #[tokio::test(start_paused = true)]
    async fn window_budget_nests_in_the_node_budget() {
        let node = Arc::new(Bandwidth::new(1 << 20));
        let wide = Budget::new(node.clone(), Some(Arc::new(Bandwidth::new(2 << 20))));
        assert_eq!(wide.effective_rate(), 1 << 20);
        let t = Instant::now();
        for _ in 0..256 {
            wide.take(4 << 10).await;
        }
        assert_near(t.elapsed(), Duration::from_millis(900));

        let node = Arc::new(Bandwidth::new(2 << 20));
        let narrow = Budget::new(node, Some(Arc::new(Bandwidth::new(1 << 20))));
        assert_eq!(narrow.effective_rate(), 1 << 20);
        let t = Instant::now();
        for _ in 0..256 {
            narrow.take(4 << 10).await;
        }
        assert_near(t.elapsed(), Duration::from_millis(900));
    }
}
