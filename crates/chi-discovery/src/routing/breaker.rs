//! Per-instance circuit breaking: at most `max_requests` requests in flight to one instance.
//!
//! Envoy's circuit breakers (`circuit_breakers.thresholds.max_requests`, per host with
//! `per_host_thresholds`) bound what one caller sends to an instance that slows down: without a
//! bound, every request piles onto it and waits. Here a pick skips an instance at its bound
//! (the router's `usable` predicate, so the balancer goes to another one), and when every
//! instance of the routed leaf is at its bound the pick fails fast with
//! [`Error::Overloaded`](crate::Error::Overloaded) instead of queueing; each such refusal is
//! counted ([`Breaker::overflows`]).
//!
//! A request holds a [`Slot`] while it runs; dropping it frees the slot. Counters are kept per
//! instance id across membership changes (a request that outlives a change still frees its own
//! counter). The check on the pick path is one map lookup and one atomic load per candidate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::instance::Instance;

/// The in-flight bound of one service's instances; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    max: u32,
    slots: ArcSwap<FxHashMap<Box<str>, Arc<AtomicU32>>>,
    overflows: AtomicU64,
}

/// One request's place under an instance's bound, freed on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// At most `max_requests` in flight per instance (at least 1).
    pub fn new(max_requests: u32) -> Self {
        Breaker {
            max: max_requests.max(1),
            slots: ArcSwap::from_pointee(FxHashMap::default()),
            overflows: AtomicU64::new(0),
        }
    }

    /// The bound.
    pub fn max_requests(&self) -> u32 {
        self.max
    }

    /// Follows the service's instances (counters of the ones that stay are kept).
    pub fn observe(&self, instances: &[Instance]) {
        let current = self.slots.load();
        let next: FxHashMap<Box<str>, Arc<AtomicU32>> = instances
            .iter()
            .map(|i| {
                let slot = current
                    .get(i.id.as_str())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AtomicU32::new(0)));
                (i.id.as_str().into(), slot)
            })
            .collect();
        self.slots.store(Arc::new(next));
    }

    /// True when instance `id` is below its bound (an unknown id is: it has no requests here).
    #[inline]
    pub fn has_room(&self, id: &str) -> bool {
        self.slots
            .load()
            .get(id)
            .is_none_or(|s| s.load(Ordering::Acquire) < self.max)
    }

    /// Takes a slot of instance `id`, or `None` (counted as an overflow) when it is at its bound.
    pub fn try_acquire(&self, id: &str) -> Option<Slot> {
        let slot = {
            let slots = self.slots.load();
            match slots.get(id) {
                Some(s) => s.clone(),
                None => return Some(Slot(Arc::new(AtomicU32::new(1)))),
            }
        };
        let max = self.max;
        let taken = slot
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            Some(Slot(slot))
        } else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Requests in flight to instance `id`.
    pub fn in_flight(&self, id: &str) -> u32 {
        self.slots
            .load()
            .get(id)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Picks refused because every candidate was at its bound, since the start.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_and_free() {
        let b = Breaker::new(2);
        b.observe(&[Instance::new("s", "h", 1).with_id("a")]);
        let one = b.try_acquire("a").expect("first");
        let two = b.try_acquire("a").expect("second");
        assert!(!b.has_room("a"));
        assert!(b.try_acquire("a").is_none());
        assert_eq!(b.overflows(), 1);
        drop(one);
        assert!(b.has_room("a"));
        assert_eq!(b.in_flight("a"), 1);
        // A membership change keeps the counter of an instance that stays.
        b.observe(&[
            Instance::new("s", "h", 1).with_id("a"),
            Instance::new("s", "h", 2).with_id("b"),
        ]);
        assert_eq!(b.in_flight("a"), 1);
        drop(two);
        assert_eq!(b.in_flight("a"), 0);
    }
}
