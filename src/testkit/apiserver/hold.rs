//! Hand-shakes for fault tests: hold the requests of one kind after the
//! first few went through, so a test can act (kill a coordinator, start
//! another) at a known point, e.g. after the server applied the first of
//! several gate patches and before it saw the rest.

use std::sync::Arc;

use tokio::sync::watch;

type Matches = dyn Fn(&str, &str) -> bool + Send + Sync;

/// Requests matching `matches(method, path)` after the first `pass` of them
/// wait, unapplied, until [`Hold::release`]. A held request whose client
/// goes away (its runtime shut down) is never applied, as when the process
/// died before the request reached the server.
pub struct Hold {
    pub(super) state: Arc<HoldState>,
}

pub(super) struct HoldState {
    matches: Box<Matches>,
    pass: usize,
    /// Matching requests that arrived so far (passed and held).
    arrived: watch::Sender<usize>,
    released: watch::Sender<bool>,
}

impl HoldState {
    pub(super) fn new(
        pass: usize,
        matches: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            matches: Box::new(matches),
            pass,
            arrived: watch::channel(0).0,
            released: watch::channel(false).0,
        })
    }

    /// Counts the request if it matches and waits while it is held.
    pub(super) async fn gate(&self, method: &str, path: &str) {
        if !(self.matches)(method, path) {
            return;
        }
        let mut n = 0;
        self.arrived.send_modify(|a| {
            *a += 1;
            n = *a;
        });
        if n <= self.pass {
            return;
        }
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
}

impl Hold {
    /// Waits until `n` matching requests have arrived (passed or held).
    pub async fn arrived(&self, n: usize) {
        let mut rx = self.state.arrived.subscribe();
        let _ = rx.wait_for(|a| *a >= n).await;
    }

    /// Matching requests that arrived so far.
    pub fn count(&self) -> usize {
        *self.state.arrived.borrow()
    }

    /// Serves the held requests and every later one.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}
