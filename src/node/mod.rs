//! Node I/O: the registry, containerd and CRI, the disk; and the warm
//! engine that drives them. Each boundary is a small trait with one real
//! implementation and an in-memory fake.

pub mod auth;
pub mod containerd;
pub mod fake;
pub mod hosts;
pub mod leases;
pub mod manifest;
pub mod pace;
pub mod pin;
pub mod pull;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod setup;
pub mod slots;
pub mod state;

#[cfg(test)]
mod pull_pace_tests;
#[cfg(test)]
mod pull_tests;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod unpack_tests;
