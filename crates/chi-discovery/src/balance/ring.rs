//! Plain ring hash, ketama-style (Karger et al., *Consistent Hashing and Random Trees*, 1997; the
//! `libketama` layout used by memcached clients and Envoy's `RING_HASH`).
//!
//! Each instance gets a number of points on a 64-bit ring proportional to its weight (about 160 per
//! instance of average weight, at least 1,024 points in all, at most 2^20); a key goes to the first
//! point clockwise from its hash. Removing an instance moves only the keys of its own points (1/n
//! of the keys), but the load is only balanced statistically, which [`ConsistentHash`] bounds.
//! A lookup reads a bucket index over the top bits of the hash (one bucket per point, built with
//! the ring) and searches the one or two points of its bucket: O(1) expected instead of a binary
//! search over the whole ring, which costs a cache miss per step on large rings. An unusable instance passes the key to
//! the next point clockwise, i.e. to the instance that would own it were the first one gone.
//!
//! [`ConsistentHash`]: super::ConsistentHash

use std::sync::Arc;

use super::hash::hash_with_suffix;
use super::{
    KeyHasher, RandomSource, Request, Select, ThreadRandom, accepts, default_hash, eligible,
    scan_from,
};
use crate::instance::Instance;

const POINTS_PER_INSTANCE: u64 = 160;
const MIN_RING: u64 = 1024;
const MAX_RING: u64 = 1 << 20;
const WALK: usize = 64;

/// Ketama-style weighted ring hash.
#[derive(Debug)]
pub struct RingHash {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
    /// `index[b]`: first point whose hash is >= the start of bucket `b` (`2^bits + 1` entries).
    index: Box<[u32]>,
    bits: u32,
    candidates: Box<[u32]>,
    hasher: KeyHasher,
    rng: Arc<dyn RandomSource>,
}

impl RingHash {
    /// The ring for `instances` with the default hasher.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(instances, default_hash, Arc::new(ThreadRandom))
    }

    /// The ring for `instances`.
    pub fn build(instances: &[Instance], hasher: KeyHasher, rng: Arc<dyn RandomSource>) -> Self {
        let candidates = eligible(instances);
        let weights: Vec<u64> = candidates
            .iter()
            .map(|&i| u64::from(instances[i as usize].effective_weight()))
            .collect();
        let total: u64 = weights.iter().sum();
        let n = candidates.len() as u64;
        let target = (POINTS_PER_INSTANCE * n).clamp(MIN_RING, MAX_RING);
        let mut ring: Vec<(u64, u32)> = Vec::new();
        let mut buf = Vec::with_capacity(64);
        for (&idx, &w) in candidates.iter().zip(&weights) {
            let points = ((target as f64 * w as f64 / total.max(1) as f64).ceil() as u64).max(1);
            let id = instances[idx as usize].id.as_bytes();
            for p in 0..points.min(u64::from(u32::MAX)) {
                ring.push((hash_with_suffix(hasher, &mut buf, id, p as u32), idx));
            }
        }
        ring.sort_unstable();
        let (hashes, owners) = ring.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        let bits = (hashes.len().max(2).next_power_of_two().trailing_zeros()).clamp(1, 24);
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            let start = (b as u64) << (64 - bits);
            while at < hashes.len() && hashes[at] < start {
                at += 1;
            }
            index.push(at as u32);
        }
        index.push(hashes.len() as u32);
        RingHash {
            hashes: hashes.into(),
            owners: owners.into(),
            index: index.into(),
            bits,
            candidates: candidates.into(),
            hasher,
            rng,
        }
    }

    /// The owner of `hash` by plain binary search (the reference the bucket index must agree with).
    #[cfg(test)]
    pub(crate) fn owner_by_search(&self, hash: u64) -> usize {
        let at = self.hashes.partition_point(|&x| x < hash);
        self.owners[if at == self.hashes.len() { 0 } else { at }] as usize
    }

    /// Number of points on the ring.
    pub fn points(&self) -> usize {
        self.hashes.len()
    }
}

impl Select for RingHash {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let len = self.hashes.len();
        if len == 0 {
            return None;
        }
        let h = match request.key {
            Some(key) => (self.hasher)(key),
            None => self.rng.next_u64(),
        };
        let b = (h >> (64 - self.bits)) as usize;
        let (lo, hi) = match (self.index.get(b), self.index.get(b + 1)) {
            (Some(&lo), Some(&hi)) => (lo as usize, (hi as usize).min(len)),
            _ => (0, len),
        };
        let mut at = lo + self.hashes[lo.min(hi)..hi].partition_point(|&x| x < h);
        if at >= len {
            at = 0;
        }
        for step in 0..WALK.min(len) {
            let j = at + step;
            let idx = self.owners[if j >= len { j - len } else { j }] as usize;
            if accepts(instances, request, idx) {
                return Some(idx);
            }
        }
        scan_from(&self.candidates, instances, request, at)
    }
}
