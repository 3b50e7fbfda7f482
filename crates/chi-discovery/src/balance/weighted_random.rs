//! Weighted random: each pick draws an instance with probability proportional to its weight.
//!
//! The Nacos client's default choice (`getHostByRandomWeight`), and what `random` becomes while
//! slow start ramps an instance (see `routing::slow_start`). Built per membership change as an
//! alias table (Walker, *An Efficient Method for Generating Discrete Random Variables with
//! General Distributions*, 1977; Vose's O(n) construction, 1991): `n` columns, each holding one
//! instance up to a threshold and another above it. A pick is one random draw, whose high bits
//! choose the column and low 32 bits the side: two slot reads whatever the instance count, where
//! a search of cumulative weights would be `O(log n)`.
//!
//! As with [`Random`](super::Random), the healthy instances get their own table when some are
//! known unhealthy, so the two library predicates read no instance; any other predicate is asked
//! per draw, redrawn a few times, then the candidates are scanned from the last draw.

use std::sync::Arc;

use super::usable::{Pools, Predicate};
use super::{RandomSource, Request, Select, ThreadRandom, accepts, bounded, scan_from};
use crate::instance::Instance;

/// Redraws before falling back to a scan.
const REDRAWS: usize = 3;

/// An alias table over some instances.
#[derive(Debug, Default)]
struct Alias {
    /// Per column: the instance kept when the draw's low bits are below `keep`, else `other`.
    keep: Box<[u64]>,
    first: Box<[u32]>,
    other: Box<[u32]>,
}

impl Alias {
    /// The table of `members` (indices into `instances`) by effective weight.
    fn new(instances: &[Instance], members: &[u32]) -> Self {
        let n = members.len();
        if n == 0 {
            return Alias::default();
        }
        let weights: Vec<f64> = members
            .iter()
            .map(|&i| f64::from(instances[i as usize].effective_weight()))
            .collect();
        let total: f64 = weights.iter().sum();
        // Each column holds 1.0; a member's scaled weight is what it needs over all columns.
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&c| scaled[c] < 1.0);
        let mut keep = vec![1.0; n];
        let mut other: Vec<usize> = (0..n).collect();
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = scaled[s];
            other[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Left over (rounding): full columns.
        Alias {
            keep: keep
                .iter()
                .map(|k| (k.clamp(0.0, 1.0) * 4_294_967_296.0) as u64)
                .collect(),
            first: members.into(),
            other: other.iter().map(|&c| members[c]).collect(),
        }
    }

    fn len(&self) -> usize {
        self.first.len()
    }

    /// The instance of the draw `x` (`len() > 0`).
    #[inline]
    fn draw(&self, x: u64) -> u32 {
        let column = bounded(x, self.first.len());
        if (x & 0xffff_ffff) < self.keep[column] {
            self.first[column]
        } else {
            self.other[column]
        }
    }
}

/// Weighted random choice.
#[derive(Debug)]
pub struct WeightedRandom {
    all: Alias,
    /// `None` when every candidate is healthy (then `all` serves both).
    healthy: Option<Alias>,
    pools: Pools,
    rng: Arc<dyn RandomSource>,
}

impl WeightedRandom {
    /// Weighted random choice over `instances` with the default per-thread source.
    pub fn new(instances: &[Instance]) -> Self {
        Self::with_rng(instances, Arc::new(ThreadRandom))
    }

    /// Weighted random choice over `instances` with `rng`.
    pub fn with_rng(instances: &[Instance], rng: Arc<dyn RandomSource>) -> Self {
        let pools = Pools::new(instances);
        let (all, healthy) = (pools.all(), pools.healthy());
        WeightedRandom {
            all: Alias::new(instances, all.slots()),
            healthy: (!std::ptr::eq(all, healthy)).then(|| Alias::new(instances, healthy.slots())),
            pools,
            rng,
        }
    }
}

impl Select for WeightedRandom {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let table = match request.predicate() {
            Predicate::Healthy => Some(self.healthy.as_ref().unwrap_or(&self.all)),
            Predicate::All => Some(&self.all),
            Predicate::Custom => None,
        };
        if let Some(table) = table {
            if table.len() == 0 {
                return None;
            }
            let idx = table.draw(self.rng.next_u64()) as usize;
            return (idx < instances.len()).then_some(idx);
        }
        if self.all.len() == 0 {
            return None;
        }
        let mut last = 0;
        for _ in 0..REDRAWS {
            let idx = self.all.draw(self.rng.next_u64());
            last = idx as usize;
            if accepts(instances, request, last) {
                return Some(last);
            }
        }
        let candidates = self.pools.all().slots();
        let at = candidates.iter().position(|&c| c as usize == last);
        scan_from(candidates, instances, request, at.map_or(0, |p| p + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::SeededRandom;
    use crate::instance::HealthStatus;

    fn fleet(weights: &[u32]) -> Vec<Instance> {
        weights
            .iter()
            .enumerate()
            .map(|(p, &w)| {
                Instance::new("s", "10.0.0.1", 8000 + p as u16)
                    .with_weight(w)
                    .with_health(HealthStatus::Healthy)
            })
            .collect()
    }

    fn shares(b: &WeightedRandom, list: &[Instance], request: &Request<'_>, n: usize) -> Vec<f64> {
        let mut hits = vec![0usize; list.len()];
        for _ in 0..n {
            if let Some(i) = b.select(list, request) {
                hits[i] += 1;
            }
        }
        hits.iter().map(|&h| h as f64 / n as f64).collect()
    }

    #[test]
    fn shares_follow_the_weights() {
        let list = fleet(&[5, 1, 1, 0, 3]);
        let b = WeightedRandom::with_rng(&list, Arc::new(SeededRandom::new(7)));
        let got = shares(&b, &list, &Request::new(), 200_000);
        for (i, want) in [0.5, 0.1, 0.1, 0.0, 0.3].into_iter().enumerate() {
            assert!((got[i] - want).abs() < 0.01, "instance {i}: {got:?}");
        }
    }

    #[test]
    fn unhealthy_and_refused_instances_are_not_picked() {
        let mut list = fleet(&[5, 1, 4]);
        list[0].health = HealthStatus::Unhealthy;
        let b = WeightedRandom::with_rng(&list, Arc::new(SeededRandom::new(3)));
        let got = shares(&b, &list, &Request::new(), 100_000);
        assert_eq!(got[0], 0.0);
        assert!((got[1] - 0.2).abs() < 0.01, "{got:?}");
        let only_last = |i: &Instance| i.port == 8002;
        let request = Request {
            key: None,
            usable: &only_last,
        };
        let got = shares(&b, &list, &request, 1_000);
        assert_eq!(got[2], 1.0);
        let none = |_: &Instance| false;
        let request = Request {
            key: None,
            usable: &none,
        };
        assert_eq!(b.select(&list, &request), None);
        assert_eq!(WeightedRandom::new(&[]).select(&[], &Request::new()), None);
    }
}
