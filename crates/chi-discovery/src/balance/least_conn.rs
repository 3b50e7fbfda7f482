//! Least connections: the instance with the fewest requests in flight, relative to its weight
//! (nginx `least_conn`: compare `in_flight / weight`).
//!
//! Counts are held by [`InFlight`](super::InFlight) guards taken with the pick; the
//! Go sketch (docs/DESIGN.md §12) changed its map under a read lock and leaked counts on errors. Finding the minimum
//! is an exact scan of the candidates, O(n) atomic loads per pick: right for the tens of instances a
//! service usually has. For large sets, [`P2c`](super::P2c) approximates it in O(1) with provably
//! small imbalance. Ties are broken by starting the scan at a random candidate, so an idle set does
//! not send every request to the first instance.

use std::sync::Arc;

use super::usable::Pools;
use super::{Loads, PeakEwmaConfig, RandomSource, Request, Select, ThreadRandom, accepts, bounded};
use crate::instance::Instance;

/// Fewest in-flight requests per unit of weight.
#[derive(Debug)]
pub struct LeastConnections {
    pools: Pools,
    /// Effective weight of each instance, index-aligned with the list.
    weights: Box<[u32]>,
    loads: Loads,
    rng: Arc<dyn RandomSource>,
}

impl LeastConnections {
    /// Builds the selector for `instances`, with fresh counters.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(
            instances,
            None,
            Arc::new(ThreadRandom),
            PeakEwmaConfig::default(),
        )
    }

    /// Builds the selector for `instances`, keeping the counters (by instance id) of `previous`
    /// so requests in flight across a membership change stay counted.
    pub fn build(
        instances: &[Instance],
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
    ) -> Self {
        LeastConnections {
            pools: Pools::new(instances),
            weights: instances.iter().map(Instance::effective_weight).collect(),
            loads: Loads::carry_over(instances, previous, config),
            rng,
        }
    }
}

/// True when `a / wa < b / wb`, without division.
#[inline]
pub(crate) fn lighter(a: u64, wa: u32, b: u64, wb: u32) -> bool {
    u128::from(a) * u128::from(wb) < u128::from(b) * u128::from(wa)
}

impl LeastConnections {
    /// The lightest of `candidates` that `request` accepts (all of them when `check` is false),
    /// scanning from a random one so that ties spread.
    fn scan(
        &self,
        candidates: &[u32],
        instances: &[Instance],
        request: &Request<'_>,
        check: bool,
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = if n == 1 {
            0
        } else {
            bounded(self.rng.next_u64(), n)
        };
        let mut best: Option<(usize, u64, u32)> = None;
        for k in 0..n {
            let j = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            let idx = candidates[j] as usize;
            let load = self.loads.get(idx).map_or(0, |l| l.in_flight());
            let w = self.weights.get(idx).copied().unwrap_or(1);
            if let Some((_, bl, bw)) = best
                && !lighter(load, w, bl, bw)
            {
                continue;
            }
            // The predicate only for an instance that would win: most of a scan is loads.
            if check && !accepts(instances, request, idx) {
                continue;
            }
            if load == 0 {
                return Some(idx);
            }
            best = Some((idx, load, w));
        }
        best.map(|(idx, _, _)| idx)
    }
}

impl Select for LeastConnections {
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        match self.pools.for_request(request) {
            Some(pool) => self.scan(pool.slots(), instances, request, false),
            None => self.scan(self.pools.all().slots(), instances, request, true),
        }
        .filter(|&idx| idx < instances.len())
    }

    fn loads(&self) -> Option<&Loads> {
        Some(&self.loads)
    }
}
