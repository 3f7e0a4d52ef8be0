//! Test kit: generates OCI/Docker images, runs throwaway registries, injects faults.
//! Used by tests, benches and the demo.
//!
//! - [`layer`]: deterministic layer blobs (same spec ⇒ same digest).
//! - [`image`]: configs, manifests and indexes over those layers; re-exports
//!   the layer types.
//! - [`corpus`]: ready-made image sets (shapes for tests, bench and demo corpora);
//!   re-exported from [`image`].
//! - [`push`]: pushes generated images over the OCI distribution API.
//! - [`registry`]: a throwaway `docker-registry` (distribution v2) process.
//! - [`faultproxy`]: an HTTP proxy in front of a registry that injects faults.
//! - [`apiserver`]: an in-memory Kubernetes API server (tower-test) that
//!   records requests.
//! - [`cluster`]: that server over HTTPS with the cluster demo's objects
//!   and simulated controllers (`prewarm testkit apiserver`).

pub mod apiserver;
pub mod cluster;
pub mod containerd;
pub mod corpus;
pub mod faultproxy;
pub mod image;
pub mod layer;
mod proxyio;
pub mod push;
pub mod registry;
