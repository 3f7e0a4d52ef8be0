//! Pacing: a node-wide byte-rate limiter and the free-disk floor.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::units::DiskFloor;

/// Shares one bytes/s budget among every concurrent blob download.
pub struct Bandwidth {
    limiter: Option<DefaultDirectRateLimiter>,
    burst: u32,
}

impl Bandwidth {
    /// `bytes_per_sec == 0` means unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        let Some(rate) = NonZeroU32::new(bytes_per_sec.min(u32::MAX as u64) as u32) else {
            return Self {
                limiter: None,
                burst: 0,
            };
        };
        // A tenth of a second of burst keeps the rate smooth while letting
        // whole network chunks through.
        let burst = (rate.get() / 10).max(16 * 1024).min(rate.get());
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
        Self {
            limiter: Some(RateLimiter::direct(quota)),
            burst,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.limiter.is_some()
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let Some(limiter) = &self.limiter else { return };
        let mut left = n as u64;
        while left > 0 {
            let piece = left.min(self.burst as u64) as u32;
            if let Some(piece) = NonZeroU32::new(piece) {
                // Cannot fail: piece never exceeds the burst size.
                let _ = limiter.until_n_ready(piece).await;
            }
            left -= piece as u64;
        }
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
    use std::time::Instant;

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

    #[tokio::test]
    async fn unlimited_does_not_wait() {
        let b = Bandwidth::new(0);
        assert!(!b.is_limited());
        let t = Instant::now();
        b.take(1 << 30).await;
        assert!(t.elapsed().as_millis() < 50);
    }

    #[tokio::test]
    async fn limit_holds_rate() {
        // 2 MiB at 4 MiB/s cannot pass faster than ~0.4 s (one 0.1 s burst
        // is free). Only the lower bound is asserted: slowness is not a bug.
        let b = Bandwidth::new(4 << 20);
        let t = Instant::now();
        for _ in 0..64 {
            b.take(32 << 10).await;
        }
        let secs = t.elapsed().as_secs_f64();
        assert!(secs >= 0.35, "2 MiB passed a 4 MiB/s limit in {secs}s");
    }
}
