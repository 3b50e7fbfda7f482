//! Round robin: one atomic counter over the instances of non-zero weight.
//!
//! The Go sketch (docs/DESIGN.md §12) guarded its counter with a mutex *and* an atomic; one `fetch_add` is enough.
//! The counter lives in the selector, so a membership change restarts the rotation on the new list
//! (a rotation over a changed list has no meaningful "next" anyway).
//!
//! Instances known to be unhealthy are left out of the rotation when it is built (see `usable.rs`):
//! with `a b c` and `b` down the picks go `a c a c`, an even share as Envoy and nginx give over
//! the healthy hosts, and a pick is the `fetch_add`, a reduction and one slot read, whatever the
//! instance count. A request with its own predicate rotates over every candidate instead: an
//! instance it refuses passes its turn to the next accepted one, and the rotation moves past that
//! one too (the counter takes the skipped steps), which gives the same even share, not
//! `a c c a c c`, which would double `b`'s neighbour. The counter is reduced modulo the count
//! without a division ([`FastMod`](super::FastMod) over its low 32 bits: one uneven turn every
//! 2^32 picks).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::usable::Pools;
use super::{Request, Select, accepts, pass_turn};
use crate::instance::Instance;

/// Round robin over the instances of non-zero weight.
#[derive(Debug)]
pub struct RoundRobin {
    pools: Pools,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the rotation over `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        RoundRobin {
            pools: Pools::new(instances),
            next: AtomicUsize::new(0),
        }
    }
}

impl Select for RoundRobin {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        if let Some(pool) = self.pools.for_request(request) {
            if pool.len() == 0 {
                return None;
            }
            let turn = pool.turn(self.next.fetch_add(1, Ordering::Relaxed));
            let idx = pool.slots()[turn] as usize;
            return (idx < instances.len()).then_some(idx);
        }
        let all = self.pools.all();
        let n = all.len();
        if n == 0 {
            return None;
        }
        let turn = all.turn(self.next.fetch_add(1, Ordering::Relaxed));
        let idx = all.slots()[turn] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        pass_turn(&self.next, all.slots(), instances, request, turn, n)
    }
}
