#![forbid(unsafe_code)]
//! prewarm: warms container images on Kubernetes nodes before they are needed.
//!
//! Layers, in dependency order: `config` (typed config and wire types),
//! `plan` (pure decisions: warm plan, window scheduler), `node` (registry,
//! containerd/CRI, disk I/O and the warm engine), `k8s` (Kubernetes API),
//! then `agent`, which only wires them together. `testkit` builds test
//! images and throwaway registries for tests, benches and the demo.

pub mod agent;
pub mod config;
pub mod coordinator;
pub mod k8s;
pub mod node;
pub mod plan;
pub mod testkit;
pub mod wire;
