//! This node's pull throughput, learned from its own past pulls: an
//! exponentially weighted mean of bytes per second of wall time (fetch and
//! unpack), so estimates follow the node as its network or disk changes.

/// Pulls smaller than this say more about latency than throughput.
const MIN_SAMPLE_BYTES: u64 = 4 << 20;
/// Weight of the newest sample.
const ALPHA: f64 = 0.3;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    estimate: Option<f64>,
}

impl Throughput {
    /// Records a pull of `bytes` that took `secs`; small or instant pulls are ignored.
    pub fn record(&mut self, bytes: u64, secs: f64) {
        if bytes < MIN_SAMPLE_BYTES || secs <= 0.0 || !secs.is_finite() {
            return;
        }
        let sample = bytes as f64 / secs;
        self.estimate = Some(match self.estimate {
            None => sample,
            Some(prev) => ALPHA * sample + (1.0 - ALPHA) * prev,
        });
    }

    /// A throughput learned earlier (by this node's previous agent).
    pub fn learned(bytes_per_second: f64) -> Self {
        Self {
            estimate: Some(bytes_per_second),
        }
    }

    /// Bytes per second, None until a pull was measured.
    pub fn bytes_per_second(&self) -> Option<f64> {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_and_smooths() {
        let mut t = Throughput::default();
        assert_eq!(t.bytes_per_second(), None);
        t.record(1 << 10, 1.0);
        assert_eq!(t.bytes_per_second(), None, "tiny pulls are ignored");
        t.record(100 << 20, 10.0);
        assert_eq!(t.bytes_per_second(), Some((10 << 20) as f64));
        t.record(100 << 20, 5.0);
        let v = t.bytes_per_second().unwrap();
        assert!(v > (10 << 20) as f64 && v < (20 << 20) as f64, "{v}");
        t.record(100 << 20, 0.0);
        assert_eq!(t.bytes_per_second(), Some(v), "zero durations are ignored");
    }
}
