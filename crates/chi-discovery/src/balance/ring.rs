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

use super::hash::splitmix;

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
    /// Fewest points a ring has, however few its instances (Envoy's `minimum_ring_size` default).
    pub const MIN_SIZE: u64 = MIN_RING;
    /// Most points a ring has, however many its instances.
    pub const MAX_SIZE: u64 = MAX_RING;

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
        let points: Vec<u32> = weights
            .iter()
            .map(|&w| {
                let p = (target as f64 * w as f64 / total.max(1) as f64).ceil() as u64;
                p.clamp(1, u64::from(u32::MAX)) as u32
            })
            .collect();
        let len: usize = points.iter().map(|&p| p as usize).sum();
        // The points are uniform 64-bit hashes, so they are sorted by a counting sort on their top
        // `bits` (about one point per bucket), then an insertion sort within each bucket: O(n),
        // where a comparison sort of 160,000 points cost several milliseconds. The bucket
        // starts are the lookup index.
        let bits = (len.max(2).next_power_of_two().trailing_zeros()).clamp(1, 24);
        let bucket = |h: u64| (h >> (64 - bits)) as usize;
        let buckets = 1usize << bits;
        let bases: Vec<u64> = candidates
            .iter()
            .map(|&idx| hasher(instances[idx as usize].id.as_bytes()))
            .collect();
        // Two passes over the points (they are cheaper to compute again than to store): count
        // per bucket, then place each point at its bucket's next free slot.
        let mut index = vec![0u32; buckets + 1];
        for (&base, &p) in bases.iter().zip(&points) {
            for k in 0..p {
                index[bucket(splitmix(base, u64::from(k))) + 1] += 1;
            }
        }
        for b in 0..buckets {
            index[b + 1] += index[b];
        }
        // The bucket starts serve as the placing cursors: each stops at the next one's start.
        let mut hashes = vec![0u64; len];
        let mut owners = vec![0u32; len];
        for ((&base, &p), &idx) in bases.iter().zip(&points).zip(&candidates) {
            for k in 0..p {
                let h = splitmix(base, u64::from(k));
                let at = &mut index[bucket(h)];
                hashes[*at as usize] = h;
                owners[*at as usize] = idx;
                *at += 1;
            }
        }
        index.copy_within(0..buckets, 1);
        index[0] = 0;
        // Within a bucket (about one point each), by hash then owner: the buckets are in order,
        // so an insertion sort over the whole ring only ever moves a point within its bucket,
        // and reads it front to back.
        for i in 1..len {
            let (h, o) = (hashes[i], owners[i]);
            let mut j = i;
            while j > 0 && (hashes[j - 1], owners[j - 1]) > (h, o) {
                hashes[j] = hashes[j - 1];
                owners[j] = owners[j - 1];
                j -= 1;
            }
            if j != i {
                hashes[j] = h;
                owners[j] = o;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring's points sorted by a comparison sort: what the counting sort must have built.
    fn reference(instances: &[Instance]) -> Vec<(u64, u32)> {
        let ring = RingHash::new(instances);
        let mut points: Vec<(u64, u32)> = ring
            .hashes
            .iter()
            .copied()
            .zip(ring.owners.iter().copied())
            .collect();
        points.sort_unstable();
        points
    }

    #[test]
    fn the_counting_sort_builds_the_sorted_ring_and_its_index() {
        for n in [0usize, 1, 2, 3, 10, 100, 1_000] {
            let list: Vec<Instance> = (0..n)
                .map(|i| {
                    Instance::new("s", format!("10.0.{}.{}", i / 250, i % 250), 80)
                        .with_weight(1 + (i % 7) as u32)
                })
                .collect();
            let ring = RingHash::new(&list);
            let built: Vec<(u64, u32)> = ring
                .hashes
                .iter()
                .copied()
                .zip(ring.owners.iter().copied())
                .collect();
            assert_eq!(built, reference(&list), "n = {n}");
            let buckets = 1usize << ring.bits;
            assert_eq!(ring.index.len(), buckets + 1);
            for b in 0..buckets {
                let start = (b as u64) << (64 - ring.bits);
                let first = ring.hashes.partition_point(|&h| h < start);
                assert_eq!(ring.index[b] as usize, first, "n = {n}, bucket {b}");
            }
            assert_eq!(ring.index[buckets] as usize, ring.hashes.len());
        }
    }
}
