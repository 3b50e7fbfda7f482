//! Consistent hashing with bounded loads, configured like the Go sketch (`partition_count` 271,
//! `replication_factor` 20, `load` 1.25).
//!
//! Mirrokni, Thorup, Zadimoghaddam, *Consistent Hashing with Bounded Loads* (SODA 2018), in the
//! partitioned form of `buraksezer/consistent`, the Go library the Go sketch (docs/DESIGN.md §12) used:
//!
//! 1. every instance is placed on a ring `replication_factor` times (the hash of its id, mixed
//!    with each replica number);
//! 2. keys are grouped into `partition_count` partitions (hash of the key, reduced to the count);
//! 3. each partition, in order, goes to the first instance clockwise from the hash of the partition
//!    number that still has room, where room means owning fewer than `ceil(partitions / n * load)`
//!    partitions. No instance ever owns more than that bound: the "bounded load".
//!
//! The table is built once per membership change (the Go sketch (docs/DESIGN.md §12) rebuilt the ring on every pick
//! under a mutex); a lookup hashes the key and reads one slot. Removing one of n instances moves its
//! partitions and, through the changed bound, a few more: the tests print the fraction and bound it
//! by a small multiple of 1/n. If the owner of a key's partition is unusable, the key goes to the
//! owner of the next partition with a usable owner, so a failed owner's keys spread over several
//! instances instead of piling onto one, and come back when it recovers.
//!
//! Weights only include or exclude (0): the bound is per instance, so every member gets an equal
//! share. Use [`Maglev`](super::Maglev) or [`RingHash`](super::RingHash) for weighted hashing.

use std::sync::Arc;

use super::hash::splitmix;
use super::{
    KeyHasher, RandomSource, Request, Select, ThreadRandom, accepts, bounded, default_hash,
    eligible, scan_from,
};
use crate::instance::Instance;

/// The Go sketch's `consistent_hash` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsistentHashConfig {
    /// Number of partitions the key space is cut into (a prime spreads better).
    pub partition_count: usize,
    /// Ring points per instance.
    pub replication_factor: usize,
    /// Bound on an instance's share, as a multiple of the mean: must be > 1.0.
    pub load: f64,
}

impl Default for ConsistentHashConfig {
    /// The Go sketch's values: 271 partitions, 20 replicas, load 1.25.
    fn default() -> Self {
        ConsistentHashConfig {
            partition_count: 271,
            replication_factor: 20,
            load: 1.25,
        }
    }
}

impl ConsistentHashConfig {
    /// Largest accepted partition count (the table holds one `u32` per partition).
    pub const MAX_PARTITIONS: usize = 1 << 24;
    /// Largest accepted replication factor.
    pub const MAX_REPLICATION: usize = 1 << 12;

    /// Checks the values; the message names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        if self.partition_count == 0 || self.partition_count > Self::MAX_PARTITIONS {
            return Err(format!(
                "partition_count: must be between 1 and {}, got {}",
                Self::MAX_PARTITIONS,
                self.partition_count
            ));
        }
        if self.replication_factor == 0 || self.replication_factor > Self::MAX_REPLICATION {
            return Err(format!(
                "replication_factor: must be between 1 and {}, got {}",
                Self::MAX_REPLICATION,
                self.replication_factor
            ));
        }
        if !(self.load.is_finite() && self.load > 1.0) {
            return Err(format!("load: must be > 1.0, got {}", self.load));
        }
        Ok(())
    }

    /// The most partitions one of `members` instances may own: `ceil(partitions / members * load)`.
    pub fn max_load(&self, members: usize) -> usize {
        if members == 0 {
            return 0;
        }
        (self.partition_count as f64 / members as f64 * self.load).ceil() as usize
    }
}

/// Consistent hashing with bounded loads.
#[derive(Debug)]
pub struct ConsistentHash {
    /// Instance index owning each partition.
    owners: Box<[u32]>,
    candidates: Box<[u32]>,
    hasher: KeyHasher,
    rng: Arc<dyn RandomSource>,
}

/// Partitions walked past unusable owners before scanning the candidates.
const WALK: usize = 64;

impl ConsistentHash {
    /// The table for `instances` with the Go sketch's settings and the default hasher.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(
            instances,
            &ConsistentHashConfig::default(),
            default_hash,
            Arc::new(ThreadRandom),
        )
    }

    /// The table for `instances`. An invalid config is clamped to the nearest valid values
    /// (validate it first with [`ConsistentHashConfig::validate`] to report it instead).
    pub fn build(
        instances: &[Instance],
        config: &ConsistentHashConfig,
        hasher: KeyHasher,
        rng: Arc<dyn RandomSource>,
    ) -> Self {
        let config = ConsistentHashConfig {
            partition_count: config
                .partition_count
                .clamp(1, ConsistentHashConfig::MAX_PARTITIONS),
            replication_factor: config
                .replication_factor
                .clamp(1, ConsistentHashConfig::MAX_REPLICATION),
            load: if config.load.is_finite() && config.load > 1.0 {
                config.load
            } else {
                1.0 + f64::EPSILON
            },
        };
        let candidates = eligible(instances);
        let owners = distribute(instances, &candidates, &config, hasher);
        ConsistentHash {
            owners: owners.into(),
            candidates: candidates.into(),
            hasher,
            rng,
        }
    }

    /// The instance index owning each partition (empty for an empty set).
    pub fn owners(&self) -> &[u32] {
        &self.owners
    }

    /// The partition of `key`.
    #[inline]
    pub fn partition(&self, key: &[u8]) -> usize {
        bounded((self.hasher)(key), self.owners.len())
    }
}

/// Assigns every partition to an instance, never exceeding the bound.
fn distribute(
    instances: &[Instance],
    candidates: &[u32],
    config: &ConsistentHashConfig,
    hasher: KeyHasher,
) -> Vec<u32> {
    let n = candidates.len();
    if n == 0 {
        return Vec::new();
    }
    let rf = config.replication_factor;
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(n * rf);
    // One call of the (pluggable) hasher per instance; its replicas are derived from that hash by
    // a splitmix64 finaliser of (hash + r * golden ratio): well spread, and 20x fewer hasher calls
    // than hashing `id + r` for each replica, which dominated the rebuild.
    for (member, &idx) in candidates.iter().enumerate() {
        let base = hasher(instances[idx as usize].id.as_bytes());
        for r in 0..rf {
            ring.push((splitmix(base, r as u64), member as u32));
        }
    }
    radix_sort(&mut ring);
    let cap = config.max_load(n);
    let mut load = vec![0usize; n];
    let mut owners = Vec::with_capacity(config.partition_count);
    for p in 0..config.partition_count {
        let h = hasher(&(p as u64).to_le_bytes());
        let mut at = ring.partition_point(|e| e.0 < h);
        let mut owner = None;
        for _ in 0..ring.len() {
            if at == ring.len() {
                at = 0;
            }
            let m = ring[at].1 as usize;
            if load[m] < cap {
                owner = Some(m);
                break;
            }
            at += 1;
        }
        // Unreachable with load > 1 (total room n * cap >= partitions), kept total: the least
        // loaded member.
        let m = owner.unwrap_or_else(|| (0..n).min_by_key(|&m| load[m]).unwrap_or_default());
        load[m] += 1;
        owners.push(candidates[m]);
    }
    owners
}

/// Sorts ring points by hash, stably (equal hashes keep member order): an LSD radix sort on 11-bit
/// digits, several times faster than a comparison sort on the 20,000 points of 1,000 instances,
/// which keeps a rebuild well under a millisecond.
fn radix_sort(ring: &mut Vec<(u64, u32)>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    if ring.len() < 256 {
        ring.sort_by_key(|e| e.0);
        return;
    }
    let mut from = std::mem::take(ring);
    let mut to = vec![(0u64, 0u32); from.len()];
    let mut shift = 0;
    while shift < 64 {
        let mut count = [0usize; BUCKETS + 1];
        for e in &from {
            count[((e.0 >> shift) as usize & (BUCKETS - 1)) + 1] += 1;
        }
        for b in 0..BUCKETS {
            count[b + 1] += count[b];
        }
        for e in &from {
            let d = (e.0 >> shift) as usize & (BUCKETS - 1);
            to[count[d]] = *e;
            count[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
        shift += BITS;
    }
    *ring = from;
}

#[cfg(test)]
pub(crate) fn radix_sort_for_test(ring: &mut Vec<(u64, u32)>) {
    radix_sort(ring);
}

impl Select for ConsistentHash {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let parts = self.owners.len();
        if parts == 0 {
            return None;
        }
        let p = match request.key {
            Some(key) => bounded((self.hasher)(key), parts),
            None => bounded(self.rng.next_u64(), parts),
        };
        let idx = self.owners[p] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        for step in 1..WALK.min(parts) {
            let q = (p + step) % parts;
            let idx = self.owners[q] as usize;
            if accepts(instances, request, idx) {
                return Some(idx);
            }
        }
        scan_from(&self.candidates, instances, request, p)
    }
}
