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
//! Costs are divided by the instance weight. Ties go to the first draw, itself random. Unusable
//! draws are redrawn a few times, then the candidates are scanned.

use std::sync::Arc;

use super::least_conn::lighter;
use super::{
    Loads, PeakEwmaConfig, RandomSource, Request, Select, ThreadRandom, accepts, bounded, eligible,
    scan_from,
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
    candidates: Box<[u32]>,
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
        let candidates = eligible(instances);
        let weights = candidates
            .iter()
            .map(|&i| instances[i as usize].effective_weight())
            .collect();
        P2c {
            candidates: candidates.into(),
            weights,
            loads: Loads::carry_over(instances, previous, config),
            rng,
            cost,
            decay_ns: config.decay.as_nanos().max(1) as f64,
        }
    }

    /// True when candidate `a` is strictly heavier than candidate `b` (positions in `candidates`).
    #[inline]
    fn heavier(&self, a: usize, b: usize) -> bool {
        let (ia, ib) = (self.candidates[a] as usize, self.candidates[b] as usize);
        let (Some(la), Some(lb)) = (self.loads.get(ia), self.loads.get(ib)) else {
            return false;
        };
        let (wa, wb) = (self.weights[a], self.weights[b]);
        match self.cost {
            P2cCost::LeastRequest => lighter(lb.in_flight(), wb, la.in_flight(), wa),
            P2cCost::PeakEwma => {
                // cost_x = e_x * exp(-(now - s_x) / tau) * (in_flight_x + 1) / w_x. Both decay by
                // the same clock, so cost_b < cost_a compares without reading it and with one exp.
                let (ea, sa) = la.raw_estimate();
                let (eb, sb) = lb.raw_estimate();
                let ka = ea * (la.in_flight() + 1) as f64 / f64::from(wa);
                let kb = eb * (lb.in_flight() + 1) as f64 / f64::from(wb);
                let shift = ((sb as f64 - sa as f64) / self.decay_ns).clamp(-700.0, 700.0);
                kb * shift.exp() < ka
            }
        }
    }
}

impl Select for P2c {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let n = self.candidates.len();
        match n {
            0 => return None,
            1 => return scan_from(&self.candidates, instances, request, 0),
            _ => {}
        }
        let mut a = 0;
        for _ in 0..REDRAWS {
            // Two distinct positions, uniformly (Floyd's sampling for k = 2).
            a = bounded(self.rng.next_u64(), n);
            let mut b = bounded(self.rng.next_u64(), n - 1);
            if b >= a {
                b += 1;
            }
            let ok_a = accepts(instances, request, self.candidates[a] as usize);
            let ok_b = accepts(instances, request, self.candidates[b] as usize);
            let chosen = match (ok_a, ok_b) {
                (true, true) => {
                    if self.heavier(a, b) {
                        b
                    } else {
                        a
                    }
                }
                (true, false) => a,
                (false, true) => b,
                (false, false) => continue,
            };
            return Some(self.candidates[chosen] as usize);
        }
        scan_from(&self.candidates, instances, request, a + 1)
    }

    fn loads(&self) -> Option<&Loads> {
        Some(&self.loads)
    }
}
