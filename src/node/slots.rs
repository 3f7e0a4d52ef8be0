//! Download slots granted by priority instead of arrival: the waiter with
//! the smallest key goes first. The engine keys blobs by (image priority,
//! image start order), so one image finishes downloading and unpacks while
//! the next downloads, and a late window's images jump the queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Smaller keys are served first.
pub type SlotKey = (i64, u64);

struct Waiter {
    key: SlotKey,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        (self.key, self.seq) == (o.key, o.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.key, self.seq).cmp(&(o.key, o.seq))
    }
}

struct State {
    free: usize,
    seq: u64,
    waiters: BinaryHeap<Reverse<Waiter>>,
}

pub struct PrioritySlots {
    state: Arc<Mutex<State>>,
}

/// Holds a slot; dropping it hands the slot to the best waiter.
pub struct Slot {
    state: Arc<Mutex<State>>,
}

impl PrioritySlots {
    pub fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                seq: 0,
                waiters: BinaryHeap::new(),
            })),
        }
    }

    pub async fn acquire(&self, key: SlotKey) -> Slot {
        let rx = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.free > 0 && st.waiters.is_empty() {
                st.free -= 1;
                return Slot {
                    state: self.state.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let seq = st.seq;
            st.waiters.push(Reverse(Waiter { key, seq, tx }));
            rx
        };
        // The sender is only dropped after a slot was handed over to us, or
        // with the whole pool; either way we now own a slot.
        let _ = rx.await;
        Slot {
            state: self.state.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Hand the slot to the best waiter still waiting; cancelled ones
        // (receiver gone) are skipped.
        while let Some(Reverse(w)) = st.waiters.pop() {
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        st.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn serves_smallest_key_first() {
        let pool = Arc::new(PrioritySlots::new(1));
        let held = pool.acquire((0, 0)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for key in [(5, 1), (1, 9), (5, 0), (-3, 2)] {
            let (pool, order) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _s = pool.acquire(key).await;
                order.lock().unwrap().push(key);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![(-3, 2), (1, 9), (5, 0), (5, 1)]
        );
    }

    #[tokio::test]
    async fn cancelled_waiters_do_not_leak_slots() {
        let pool = Arc::new(PrioritySlots::new(1));
        let held = pool.acquire((0, 0)).await;
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire((1, 0)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        // The slot came back to the pool: this must not hang.
        tokio::time::timeout(Duration::from_secs(1), pool.acquire((2, 0)))
            .await
            .expect("slot leaked");
    }
}
