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
            let mut st = lock(&self.state);
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
        // Dropped before the slot arrives (cancelled), it gives back a slot
        // already handed over and leaves the queue.
        let mut waiting = Waiting {
            state: self.state.clone(),
            rx: Some(rx),
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender is only dropped after sending, or with the whole
            // pool; either way we now own a slot.
            let _ = rx.await;
        }
        waiting.rx = None;
        Slot {
            state: self.state.clone(),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands a free slot to the best waiter still waiting, or back to the pool.
fn release(st: &mut State) {
    // Cancelled waiters (receiver gone) are skipped.
    while let Some(Reverse(w)) = st.waiters.pop() {
        if w.tx.send(()).is_ok() {
            return;
        }
    }
    st.free += 1;
}

/// A waiter's place in the queue while its acquire future is alive.
struct Waiting {
    state: Arc<Mutex<State>>,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = lock(&self.state);
        // Under the lock no slot can be sent any more once closed, so a
        // slot either arrived already (pass it on) or never will.
        rx.close();
        if rx.try_recv().is_ok() {
            release(&mut st);
        }
        st.waiters.retain(|Reverse(w)| !w.tx.is_closed());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        release(&mut lock(&self.state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::future::Future;
    use std::pin::Pin;

    type Acquire = Pin<Box<dyn Future<Output = Slot> + Send>>;

    /// An acquire future polled once, so it waits in the queue.
    fn queued(pool: &Arc<PrioritySlots>, key: SlotKey) -> Acquire {
        let pool = pool.clone();
        let mut fut: Acquire = Box::pin(async move { pool.acquire(key).await });
        assert!(poll(&mut fut).is_none(), "{key:?} got a slot at once");
        fut
    }

    fn poll(fut: &mut Acquire) -> Option<Slot> {
        fut.as_mut().now_or_never()
    }

    /// How many slots can be taken right now without waiting.
    fn free_now(pool: &PrioritySlots) -> usize {
        let mut held = Vec::new();
        while let Some(s) = pool.acquire((i64::MAX, 0)).now_or_never() {
            held.push(s);
        }
        held.len()
    }

    #[test]
    fn serves_smallest_key_first() {
        let pool = Arc::new(PrioritySlots::new(1));
        let mut slot = pool.acquire((0, 0)).now_or_never();
        assert!(slot.is_some(), "a free slot");
        let mut waiting: Vec<(SlotKey, Acquire)> = [(5, 1), (1, 9), (5, 0), (-3, 2)]
            .into_iter()
            .map(|k| (k, queued(&pool, k)))
            .collect();
        let mut order = Vec::new();
        while !waiting.is_empty() {
            drop(slot.take());
            // The released slot went to exactly one waiter: the smallest key.
            let mut ready: Vec<(usize, Slot)> = waiting
                .iter_mut()
                .enumerate()
                .filter_map(|(i, (_, f))| poll(f).map(|s| (i, s)))
                .collect();
            assert_eq!(ready.len(), 1, "after {order:?}");
            let (i, s) = ready.pop().unwrap();
            order.push(waiting.remove(i).0);
            slot = Some(s);
        }
        assert_eq!(order, vec![(-3, 2), (1, 9), (5, 0), (5, 1)]);
        drop(slot);
        assert_eq!(free_now(&pool), 1);
    }

    /// A waiter cancelled before any slot was free leaves the queue.
    #[test]
    fn cancelled_waiter_does_not_leak_slots() {
        let pool = Arc::new(PrioritySlots::new(1));
        let held = pool.acquire((0, 0)).now_or_never().expect("a free slot");
        drop(queued(&pool, (1, 0)));
        drop(held);
        assert_eq!(free_now(&pool), 1, "slot leaked");
    }

    /// The slot was handed to the waiter through its channel, then its
    /// future was dropped before it ran again: the slot must come back.
    #[test]
    fn slot_handed_to_a_dropped_waiter_comes_back() {
        let pool = Arc::new(PrioritySlots::new(1));
        let held = pool.acquire((0, 0)).now_or_never().expect("a free slot");
        let waiter = queued(&pool, (1, 0));
        drop(held); // handed to `waiter`
        drop(waiter); // ... which never ran again
        assert_eq!(free_now(&pool), 1, "the handed-over slot was lost");
    }

    /// One blob fails for good and all its siblings are cancelled, some of
    /// them after slots were handed to them: every slot comes back, and a
    /// waiter still queued behind them gets one.
    #[test]
    fn cancelled_sibling_chain_keeps_capacity() {
        let pool = Arc::new(PrioritySlots::new(3));
        let mut held: Vec<Slot> = (0..3)
            .map(|i| pool.acquire((0, i)).now_or_never().expect("free slot"))
            .collect();
        let siblings: Vec<Acquire> = (0..5).map(|i| queued(&pool, (1, i))).collect();
        let mut later = queued(&pool, (2, 0));
        // Two slots go to the first two siblings, which are then cancelled
        // with the rest before running.
        held.truncate(1);
        drop(siblings);
        let got = poll(&mut later).expect("the later waiter gets a handed-back slot");
        assert_eq!(free_now(&pool), 1);
        drop((got, held));
        assert_eq!(free_now(&pool), 3, "capacity shrank");
    }
}
