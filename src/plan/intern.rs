//! One shared copy of each string that repeats across node records (image
//! names, pool names): 5,000 nodes reporting the same 50 images hold 50
//! strings, not 250,000.

use std::collections::HashSet;
use std::sync::Arc;

/// Hands out shared copies; forgets those no record holds any more, so it
/// grows with the distinct names in use, not with every name ever seen.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    set: HashSet<Arc<str>>,
    /// Size after the last sweep; the next one runs when the set doubles.
    swept_at: usize,
}

impl Interner {
    /// The shared copy of `s` (made on first use).
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= 2 * self.swept_at.max(64) {
            self.sweep();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// Drops the copies only the interner still holds.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.swept_at = self.set.len();
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::default();
        let a = i.intern("r.example/a:1");
        let b = i.intern(&String::from("r.example/a:1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn unused_copies_go_on_sweep_and_growth_stays_bounded() {
        let mut i = Interner::default();
        let kept = i.intern("kept");
        for n in 0..10_000 {
            drop(i.intern(&format!("gone-{n}")));
        }
        // Sweeps ran as the set doubled: never more than twice the floor.
        assert!(i.len() <= 128, "{} entries", i.len());
        i.sweep();
        assert_eq!(i.len(), 1);
        assert!(Arc::ptr_eq(&kept, &i.intern("kept")));
    }
}
