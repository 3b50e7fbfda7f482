//! Smooth weighted round robin (nginx, `ngx_http_upstream_get_peer`), precomputed.
//!
//! nginx's smooth WRR adds every peer's weight to its current weight, picks the largest current
//! weight and subtracts the total from the winner: weights 5, 1, 1 give `a a b a c a a`, spreading
//! the light peers through the period instead of bunching them. Done per pick, as in the Go sketch's
//! sketch, that is a mutex and an O(n) scan per request. Here the sequence is computed once per
//! membership change into a schedule, and a pick is one `fetch_add` and one slot read, whatever the
//! instance count.
//!
//! The period of the exact sequence is the sum of the (gcd-reduced) weights. When that sum times the
//! instance count is small (the common case: a few dozen instances, weights up to ~100) the schedule
//! is nginx's exact sequence. Beyond that budget the schedule is an earliest-deadline-first
//! sequence (as Envoy builds its weighted schedules) over a window of at most `max(65,536, 64 n)`
//! slots (capped at 2^21): the k-th pick of instance i is due at `(k + ½) / w_i`, computed with a
//! heap in O(L log n). Every instance then gets its share within one pick per window; an instance
//! whose share is below half a slot of the window is rounded away (documented, not silent:
//! [`WeightedRoundRobin::period`] tells the window).
//!
//! Weights come from [`Instance::effective_weight`] (the `weight` meta key, else the field);
//! instances of weight 0 are not scheduled. An unusable instance passes its slot to the next
//! usable slot of the schedule, and the schedule moves past that slot too (the counter takes the
//! skipped steps), so the others keep their shares: weights 5, 1, 1 with `b` down give `a` five
//! picks and `c` one per period, not six and one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{FastMod, Request, Select, accepts, eligible, pass_turn, scan_from};
use crate::instance::Instance;

/// Largest `period * n` computed with nginx's exact O(n)-per-step algorithm.
const EXACT_BUDGET: u64 = 1 << 22;
/// Smallest EDF window.
const MIN_WINDOW: u64 = 1 << 16;
/// Largest schedule (4 bytes a slot: 8 MiB).
const MAX_WINDOW: u64 = 1 << 21;
/// Slots walked past unusable instances before scanning the candidates.
pub(crate) const WALK: usize = 32;

/// Smooth weighted round robin over a precomputed schedule.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Box<[u32]>,
    modulo: FastMod,
    candidates: Box<[u32]>,
    next: AtomicUsize,
    exact: bool,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    /// Builds the schedule for `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        let candidates = eligible(instances);
        let weights: Vec<u64> = candidates
            .iter()
            .map(|&i| u64::from(instances[i as usize].effective_weight()))
            .collect();
        let (schedule, exact) = schedule(&candidates, &weights, EXACT_BUDGET);
        WeightedRoundRobin {
            modulo: FastMod::new(schedule.len()),
            schedule: schedule.into(),
            candidates: candidates.into(),
            next: AtomicUsize::new(0),
            exact,
        }
    }

    /// The length of the schedule (one period of the sequence).
    pub fn period(&self) -> usize {
        self.schedule.len()
    }

    /// True when the schedule is nginx's exact sequence (false: the EDF approximation).
    pub fn is_exact(&self) -> bool {
        self.exact
    }
}

/// One period of the smooth sequence of `weights` (index-aligned with `candidates`, each at least
/// 1), as instance indices: nginx's exact sequence when `period * n` is within `budget`, else the
/// EDF window (see the module docs). True when exact. Also the table of
/// `orca_weighted_round_robin`, whose weights come from load reports instead of the instances
/// (with a smaller budget: it is rebuilt every update period).
pub(crate) fn schedule(candidates: &[u32], weights: &[u64], budget: u64) -> (Vec<u32>, bool) {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<u64> = weights.iter().map(|w| (w / g).max(1)).collect();
    let total: u64 = weights.iter().sum();
    let n = candidates.len() as u64;
    if n == 0 {
        (Vec::new(), true)
    } else if total.saturating_mul(n) <= budget {
        (nginx_sequence(candidates, &weights, total), true)
    } else {
        let window = total.min(MIN_WINDOW.max(64 * n)).min(MAX_WINDOW);
        (edf_sequence(candidates, &weights, window), false)
    }
}

/// nginx's smooth weighted round robin, one full period.
fn nginx_sequence(candidates: &[u32], weights: &[u64], total: u64) -> Vec<u32> {
    let total_i = total as i64;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        let mut best_value = i64::MIN;
        for (k, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
            *c += w as i64;
            if *c > best_value {
                best = k;
                best_value = *c;
            }
        }
        out.push(best);
        current[best] -= total_i;
    }
    out.into_iter().map(|k| candidates[k]).collect()
}

/// Earliest deadline first over a window: the k-th pick of `i` is due at `(k + 0.5) / w_i`.
fn edf_sequence(candidates: &[u32], weights: &[u64], window: u64) -> Vec<u32> {
    let due = |k: u64, w: u64| ((k as f64 + 0.5) / w as f64).to_bits();
    let mut heap: BinaryHeap<Reverse<(u64, u32, u64)>> = weights
        .iter()
        .enumerate()
        .map(|(k, &w)| Reverse((due(0, w), k as u32, 0)))
        .collect();
    let mut out = Vec::with_capacity(window as usize);
    while (out.len() as u64) < window {
        let Some(Reverse((_, k, picks))) = heap.pop() else {
            break;
        };
        out.push(candidates[k as usize]);
        heap.push(Reverse((due(picks + 1, weights[k as usize]), k, picks + 1)));
    }
    out
}

impl Select for WeightedRoundRobin {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let turn = self
            .modulo
            .reduce(self.next.fetch_add(1, Ordering::Relaxed));
        let idx = self.schedule[turn] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        pass_turn(&self.next, &self.schedule, instances, request, turn, WALK)
            .or_else(|| scan_from(&self.candidates, instances, request, turn))
    }
}
