//! Limits on what a coordinator's intents can make this node do: how long
//! an intent may last and how much it may pin. A coordinator is trusted
//! to name images, not to fill the node's disk with pins that kubelet GC
//! cannot reclaim.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError};

/// The `intents:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping of intent limits"
)]
pub struct IntentLimits {
    /// An intent ends at the latest this long after the agent received its
    /// deadline (a deadline of 0, "none", ends then too). A coordinator that
    /// is alive renews its deadlines well before.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// At most this many images are pulled and pinned for intents at once;
    /// the highest priority ones are kept.
    pub max_images: usize,
    /// At most this many bytes (as CRI reports image sizes) are pinned for
    /// intents at once; 0 means no byte limit (the disk floor still holds).
    pub max_bytes: ByteSize,
}

impl Default for IntentLimits {
    fn default() -> Self {
        Self {
            max_deadline: Duration::from_secs(6 * 3600),
            max_images: 32,
            max_bytes: ByteSize(64 << 30),
        }
    }
}

impl IntentLimits {
    /// Whether every field has its default (the section is then not written out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if self.max_deadline < Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                field("maxDeadline"),
                "must be at least 1m",
            ));
        }
        if self.max_deadline > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::invalid(
                field("maxDeadline"),
                "must be at most 7d (an intent must not pin an image for good)",
            ));
        }
        if self.max_images == 0 {
            return Err(ConfigError::invalid(
                field("maxImages"),
                "must be at least 1 (without a coordinator: section intents are not received at all)",
            ));
        }
        Ok(())
    }
}
