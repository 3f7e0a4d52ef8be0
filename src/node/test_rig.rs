//! An engine over the in-memory registry, runtime and disk, for the
//! engine's unit tests.

use std::sync::{Arc, Mutex};

use crate::config::Pacing;
use crate::node::fake::{FakeDisk, FakeRegistry, FakeRuntime};
use crate::node::pace::DiskUsage;
use crate::node::pull::{Engine, PullObserver};

pub struct Fakes {
    pub reg: FakeRegistry,
    pub rt: FakeRuntime,
    /// 1 TiB free of 2.
    pub disk: Arc<FakeDisk>,
}

impl Fakes {
    pub fn new(version: &str) -> Self {
        Fakes {
            reg: FakeRegistry::default(),
            rt: FakeRuntime::new(version),
            disk: Arc::new(FakeDisk(Mutex::new(DiskUsage {
                free: 1 << 40,
                total: 2 << 40,
            }))),
        }
    }

    /// An engine pulling from these fakes.
    pub fn engine(&self, pacing: Pacing, observer: Arc<dyn PullObserver>) -> Engine {
        Engine::new(
            Arc::new(self.reg.clone()),
            Arc::new(self.rt.clone()),
            Arc::new(self.rt.clone()),
            self.disk.clone(),
            pacing,
            observer,
        )
    }
}
