//! Uniform random choice among the instances of non-zero weight.
//!
//! The random source is injectable ([`RandomSource`]); the default draws from a per-thread
//! generator, so concurrent picks share nothing. Instances known to be unhealthy are left out when
//! the selector is built (see `usable.rs`), so a pick is one draw and one slot read. A request with
//! its own predicate draws among every candidate: a refused draw is redrawn a few times, then the
//! candidates are scanned from the last draw, so a mostly-refused set still answers in bounded time.

use std::sync::Arc;

use super::usable::Pools;
use super::{RandomSource, Request, Select, ThreadRandom, accepts, bounded, scan_from};
use crate::instance::Instance;

/// Redraws before falling back to a scan.
const REDRAWS: usize = 3;

/// Uniform random choice.
#[derive(Debug)]
pub struct Random {
    pools: Pools,
    rng: Arc<dyn RandomSource>,
}

impl Random {
    /// Random choice over `instances` with the default per-thread source.
    pub fn new(instances: &[Instance]) -> Self {
        Self::with_rng(instances, Arc::new(ThreadRandom))
    }

    /// Random choice over `instances` with `rng`.
    pub fn with_rng(instances: &[Instance], rng: Arc<dyn RandomSource>) -> Self {
        Random {
            pools: Pools::new(instances),
            rng,
        }
    }
}

impl Select for Random {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        if let Some(pool) = self.pools.for_request(request) {
            if pool.len() == 0 {
                return None;
            }
            let idx = pool.slots()[bounded(self.rng.next_u64(), pool.len())] as usize;
            return (idx < instances.len()).then_some(idx);
        }
        let candidates = self.pools.all().slots();
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let mut draw = 0;
        for _ in 0..REDRAWS {
            draw = bounded(self.rng.next_u64(), n);
            let idx = candidates[draw] as usize;
            if accepts(instances, request, idx) {
                return Some(idx);
            }
        }
        scan_from(candidates, instances, request, draw + 1)
    }
}
