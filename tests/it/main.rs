//! Integration tests against real components: containerd 1.7 and 2.x
//! started per test (root required), the distribution registry on loopback,
//! and the fault-injecting proxy in front of it. Run with `scripts/test.sh`.

mod agent;
mod budget;
mod cli;
mod common;
mod crash;
mod disk;
mod faults;
mod gates;
mod keda;
mod learned;
mod link;
mod outage;
mod pins;
mod prometheus;
mod pull;
mod pull_secrets;
mod rbac;
mod reattach;
mod root;
mod shared_ingest;
mod snapshotter;
mod view;
mod windows;
