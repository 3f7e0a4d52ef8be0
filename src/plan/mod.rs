//! Pure planning: (desired, observed, now) → actions. No I/O and no clock in
//! here; callers pass observations and time in, so tests are exact.

pub mod deploy;
pub mod eligibility;
pub mod forget;
pub mod gate;
pub mod intents;
pub mod intern;
pub mod keda;
pub mod learned;
pub mod pull_secrets;
pub mod pull_start;
pub mod registry_budget;
pub mod rollout;
pub mod throughput;
pub mod view;
pub mod warm;
pub mod window_pools;
pub mod windows;
