//! Power of two choices: draw two instances at random, send the request to the lighter one.
//!
//! Mitzenmacher, *The Power of Two Choices in Randomized Load Balancing* (2001): compared with one
//! random choice, a second choice drops the maximum load from Θ(log n / log log n) to
//! Θ(log log n), at O(1) cost per pick and with no shared state but the per-instance counters.
//! This is tower's `p2c::Balance`, Finagle's and linkerd's default. The load is either
//!
//! - [`P2cCost::LeastRequest`]: requests in flight (Envoy's least-request), or
//! - [`P2cCost::PeakEwma`]: Finagle's peak EWMA, `latency estimate * (in flight + 1)` (see
//!   [`Load`](super::Load)), which steers away from slow instances before their queues grow.
//!
//! Costs are divided by the instance weight. Ties go to the first draw, itself random, so equal
//! instances share evenly (peak EWMA's instances without a latency sample tie: see
//! [`Load`](super::Load)). The two
//! draws come from the candidates the request accepts, precomputed at build for the library's own
//! predicates (see `usable.rs`), so a pick reads two load cells and nothing else. With a request's
//! own predicate they come from every candidate: refused draws are redrawn a few times, then the
//! candidates are scanned.

use std::sync::Arc;

use super::least_conn::lighter;
use super::load::{COLD, now_ns};
use super::usable::{Pool, Pools};
use super::{
    Loads, PeakEwmaConfig, RandomSource, Request, Select, ThreadRandom, accepts, bounded, scan_from,
};
use crate::instance::Instance;

/// What P2C compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum P2cCost {
    /// Requests in flight.
    #[default]
    LeastRequest,
    /// Peak-EWMA latency times requests in flight plus one.
    PeakEwma,
}

const REDRAWS: usize = 3;

/// Power of two choices.
#[derive(Debug)]
pub struct P2c {
    pools: Pools,
    /// Effective weight of each instance, index-aligned with the list.
    weights: Box<[u32]>,
    loads: Loads,
    rng: Arc<dyn RandomSource>,
    cost: P2cCost,
    decay_ns: f64,
}

impl P2c {
    /// P2C least-request over `instances`, fresh counters, per-thread RNG.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(
            instances,
            P2cCost::LeastRequest,
            None,
            Arc::new(ThreadRandom),
            PeakEwmaConfig::default(),
        )
    }

    /// P2C with `cost`, keeping the load cells (by instance id) of `previous`.
    pub fn build(
        instances: &[Instance],
        cost: P2cCost,
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
    ) -> Self {
        P2c {
            pools: Pools::new(instances),
            weights: instances.iter().map(Instance::effective_weight).collect(),
            loads: Loads::carry_over(instances, previous, config),
            rng,
            cost,
            decay_ns: config.decay.as_nanos().max(1) as f64,
        }
    }

    /// True when instance `ia` is strictly heavier than instance `ib`.
    #[inline]
    fn heavier(&self, ia: usize, ib: usize) -> bool {
        let (Some(la), Some(lb)) = (self.loads.get(ia), self.loads.get(ib)) else {
            return false;
        };
        let (Some(&wa), Some(&wb)) = (self.weights.get(ia), self.weights.get(ib)) else {
            return false;
        };
        match self.cost {
            P2cCost::LeastRequest => lighter(lb.in_flight(), wb, la.in_flight(), wa),
            P2cCost::PeakEwma => {
                // cost_x = e_x * exp(-(now - s_x) / tau) * (in_flight_x + 1) / w_x. Both decay by
                // the same clock, so cost_b < cost_a compares without reading it and with one exp.
                // A cold cell does not decay (its estimate is the default as of now): two cold
                // ones compare undecayed, and only a cold one against a sampled one reads the
                // clock.
                let (ea, sa) = la.raw_estimate();
                let (eb, sb) = lb.raw_estimate();
                let ka = ea * (la.in_flight() + 1) as f64 / f64::from(wa);
                let kb = eb * (lb.in_flight() + 1) as f64 / f64::from(wb);
                let (sa, sb) = match (sa == COLD, sb == COLD) {
                    (false, false) => (sa, sb),
                    (true, true) => return kb < ka,
                    _ => {
                        let now = now_ns();
                        (sa.min(now), sb.min(now))
                    }
                };
                let shift = ((sb as f64 - sa as f64) / self.decay_ns).clamp(-700.0, 700.0);
                kb * shift.exp() < ka
            }
        }
    }
}

impl P2c {
    /// Two distinct draws from `pool`, every one accepted: the lighter.
    #[inline]
    fn choose(&self, pool: &Pool, instances: &[Instance]) -> Option<usize> {
        let slots = pool.slots();
        let n = slots.len();
        let idx = match n {
            0 => return None,
            1 => slots[0] as usize,
            _ => {
                let (a, b) = self.two(n);
                let (ia, ib) = (slots[a] as usize, slots[b] as usize);
                if self.heavier(ia, ib) { ib } else { ia }
            }
        };
        (idx < instances.len()).then_some(idx)
    }

    /// Two distinct positions in `0..n` (`n >= 2`), uniformly (Floyd's sampling for k = 2).
    #[inline]
    fn two(&self, n: usize) -> (usize, usize) {
        let a = bounded(self.rng.next_u64(), n);
        let mut b = bounded(self.rng.next_u64(), n - 1);
        if b >= a {
            b += 1;
        }
        (a, b)
    }
}

impl Select for P2c {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        if let Some(pool) = self.pools.for_request(request) {
            return self.choose(pool, instances);
        }
        let candidates = self.pools.all().slots();
        let n = candidates.len();
        match n {
            0 => return None,
            1 => return scan_from(candidates, instances, request, 0),
            _ => {}
        }
        let mut a = 0;
        for _ in 0..REDRAWS {
            let b;
            (a, b) = self.two(n);
            let (ia, ib) = (candidates[a] as usize, candidates[b] as usize);
            let chosen = match (
                accepts(instances, request, ia),
                accepts(instances, request, ib),
            ) {
                (true, true) => {
                    if self.heavier(ia, ib) {
                        ib
                    } else {
                        ia
                    }
                }
                (true, false) => ia,
                (false, true) => ib,
                (false, false) => continue,
            };
            return Some(chosen);
        }
        scan_from(candidates, instances, request, a + 1)
    }

    fn loads(&self) -> Option<&Loads> {
        Some(&self.loads)
    }
}
