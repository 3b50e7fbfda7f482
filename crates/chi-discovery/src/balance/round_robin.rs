//! Round robin: one atomic counter over the instances of non-zero weight.
//!
//! The Go sketch (docs/DESIGN.md §12) guarded its counter with a mutex *and* an atomic; one `fetch_add` is enough.
//! The counter lives in the selector, so a membership change restarts the rotation on the new list
//! (a rotation over a changed list has no meaningful "next" anyway). An unusable instance passes
//! its turn to the next usable one, and the rotation moves past that one too (the counter takes
//! the skipped steps): with `a b c` and `b` down the picks go `a c a c`, an even share as Envoy
//! and nginx give over the healthy hosts, not `a c c a c c`, which would double `b`'s neighbour.
//! The counter is reduced modulo the count without a division ([`FastMod`](super::FastMod) over
//! its low 32 bits: one uneven turn every 2^32 picks).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{FastMod, Request, Select, accepts, eligible, pass_turn};
use crate::instance::Instance;

/// Round robin over the instances of non-zero weight.
#[derive(Debug)]
pub struct RoundRobin {
    candidates: Box<[u32]>,
    modulo: FastMod,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the rotation over `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        let candidates = eligible(instances);
        RoundRobin {
            modulo: FastMod::new(candidates.len()),
            candidates: candidates.into(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Select for RoundRobin {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let turn = self
            .modulo
            .reduce(self.next.fetch_add(1, Ordering::Relaxed));
        let idx = self.candidates[turn] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        pass_turn(&self.next, &self.candidates, instances, request, turn, n)
    }
}
