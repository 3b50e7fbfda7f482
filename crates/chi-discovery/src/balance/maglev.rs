//! Maglev hashing (Eisenbud et al., *Maglev: A Fast and Reliable Software Network Load Balancer*,
//! NSDI 2016, §3.4), with Envoy's weighted population.
//!
//! Each instance derives a permutation of the `M` slots of a lookup table from the hash of its id
//! (`offset`, `skip`); the instances take turns claiming their next free preferred slot until the
//! table is full. A lookup hashes the key and reads one slot. Every instance owns `M / n` slots up to
//! one (near-perfect balance), and removing one instance moves few keys besides its own. `M` is a
//! prime: 65,537 for up to 655 instances, else the first prime above `100 n`, so each instance has
//! at least ~100 slots (the paper's rule of thumb for balance within 1%).
//!
//! Weighted: in each round an instance earns `weight / max weight` of a turn and claims a slot per
//! whole turn earned, so slots are proportional to weights.
//!
//! An unusable owner passes the key to the owner of the next slot.

use std::sync::Arc;

use super::{
    KeyHasher, RandomSource, Request, Select, ThreadRandom, accepts, bounded, default_hash,
    eligible, scan_from,
};
use crate::instance::Instance;

const SMALL_TABLE: u64 = 65_537;
const WALK: usize = 64;
const EMPTY: u32 = u32::MAX;

/// Maglev lookup table.
#[derive(Debug)]
pub struct Maglev {
    table: Box<[u32]>,
    candidates: Box<[u32]>,
    hasher: KeyHasher,
    rng: Arc<dyn RandomSource>,
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The table size for `n` instances.
fn table_size(n: u64) -> u64 {
    if n * 100 <= SMALL_TABLE {
        return SMALL_TABLE;
    }
    let mut m = n * 100 + 1;
    while !is_prime(m) {
        m += 1;
    }
    m
}

impl Maglev {
    /// The table for `instances` with the default hasher.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(instances, default_hash, Arc::new(ThreadRandom))
    }

    /// The table for `instances`.
    pub fn build(instances: &[Instance], hasher: KeyHasher, rng: Arc<dyn RandomSource>) -> Self {
        let candidates = eligible(instances);
        let n = candidates.len();
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                candidates: Box::new([]),
                hasher,
                rng,
            };
        }
        let m = table_size(n as u64);
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&i| f64::from(instances[i as usize].effective_weight()))
            .collect();
        let max_w = weights.iter().copied().fold(1.0, f64::max);
        // Permutation of each instance: slot_j = (offset + j * skip) mod M.
        let mut pos: Vec<u64> = Vec::with_capacity(n);
        let mut skip: Vec<u64> = Vec::with_capacity(n);
        for &idx in &candidates {
            let h = hasher(instances[idx as usize].id.as_bytes());
            pos.push((h >> 32) % m);
            skip.push((h & 0xffff_ffff) % (m - 1) + 1);
        }
        let mut credit = vec![0.0f64; n];
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for k in 0..n {
                credit[k] += weights[k] / max_w;
                while credit[k] >= 1.0 {
                    credit[k] -= 1.0;
                    loop {
                        let c = pos[k] as usize;
                        pos[k] = (pos[k] + skip[k]) % m;
                        if table[c] == EMPTY {
                            table[c] = candidates[k];
                            break;
                        }
                    }
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev {
            table: table.into(),
            candidates: candidates.into(),
            hasher,
            rng,
        }
    }

    /// The table: the instance index of each slot.
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl Select for Maglev {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let h = match request.key {
            Some(key) => (self.hasher)(key),
            None => self.rng.next_u64(),
        };
        let slot = bounded(h, m);
        for step in 0..WALK.min(m) {
            let j = slot + step;
            let idx = self.table[if j >= m { j - m } else { j }] as usize;
            if accepts(instances, request, idx) {
                return Some(idx);
            }
        }
        scan_from(&self.candidates, instances, request, slot)
    }
}
