//! Uniform random choice among the instances of non-zero weight.
//!
//! The random source is injectable ([`RandomSource`]); the default draws from a per-thread
//! generator, so concurrent picks share nothing. An unusable draw is redrawn a few times, then the
//! candidates are scanned from the last draw, so a mostly-unhealthy set still answers in bounded time.

use std::sync::Arc;

use super::{RandomSource, Request, Select, ThreadRandom, accepts, bounded, eligible, scan_from};
use crate::instance::Instance;

/// Redraws before falling back to a scan.
const REDRAWS: usize = 3;

/// Uniform random choice.
#[derive(Debug)]
pub struct Random {
    candidates: Box<[u32]>,
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
            candidates: eligible(instances).into(),
            rng,
        }
    }
}

impl Select for Random {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let mut draw = 0;
        for _ in 0..REDRAWS {
            draw = bounded(self.rng.next_u64(), n);
            let idx = self.candidates[draw] as usize;
            if accepts(instances, request, idx) {
                return Some(idx);
            }
        }
        scan_from(&self.candidates, instances, request, draw + 1)
    }
}
