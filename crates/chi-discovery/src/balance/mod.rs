//! Client-side load balancing: pick one instance of a service per request.
//!
//! # Shape
//!
//! Every algorithm is a *selector*: a small immutable table built once per membership change from
//! the instance list, then asked for one instance per request through the [`Select`] trait.
//! Picking only reads: no lock, no allocation, at most a few atomics. This is the
//! shape of pingora's `selection` module (build per backend set, select per key) and of tower's
//! balancers (a tiny trait, load tracked by an RAII handle, an injectable RNG).
//!
//! - [`RoundRobin`]: one `AtomicUsize`.
//! - [`Random`]: uniform, with an injectable [`RandomSource`] so tests are deterministic.
//! - [`WeightedRandom`]: random in proportion to the weights (the Nacos client's default), an
//!   alias table: one draw and two slot reads.
//! - [`WeightedRoundRobin`]: nginx's *smooth* weighted round robin, precomputed into a schedule,
//!   so a pick is one atomic and one slot read whatever the instance count.
//! - [`LeastConnections`]: fewest in-flight requests (weighted, like nginx `least_conn`); the count
//!   is held by an [`InFlight`] guard that decrements on drop, and the least loaded instance is
//!   found through a tournament tree the guards keep up to date, O(log n) when all are busy.
//! - [`ConsistentHash`]: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
//!   *Consistent Hashing with Bounded Loads*, 2017), configured like the Go sketch (271 partitions,
//!   replication factor 20, load 1.25): a partition table, one slot read per lookup.
//! - [`RingHash`]: plain ketama-style ring hash (Karger et al. 1997), weighted by virtual nodes.
//! - [`Maglev`]: Maglev hashing (Eisenbud et al., *Maglev: A Fast and Reliable Software Network
//!   Load Balancer*, NSDI 2016), weighted.
//! - [`P2c`]: power of two choices (Mitzenmacher 2001) over in-flight requests, and the same with
//!   Finagle's / linkerd's *peak EWMA* latency cost.
//! - [`OrcaWeightedRoundRobin`]: weighted round robin by the load the servers report (ORCA, gRPC's
//!   gRFC A58 `weighted_round_robin`): reports feed a service's [`LoadReports`], and the table is
//!   rebuilt from them every update period (see [`orca`]).
//!
//! Every selector:
//! - returns `None` on an empty set (never panics); [`Balancer::pick_or_err`] turns that into
//!   [`Error::NoInstance`](crate::Error::NoInstance);
//! - excludes instances of [`effective_weight`](Instance::effective_weight) 0 at build time;
//! - skips instances refused by the request's predicate ([`Request::usable`], by default "not known
//!   unhealthy") at pick time, without a rebuild, falling through to another instance.
//!
//! The two predicates nearly every pick uses, "not known unhealthy" ([`Request::new`],
//! [`Request::with_key`], [`Balancer::pick`] with health checking on) and "any instance"
//! ([`Request::any`], health checking off), depend only on the list, so round robin, random, P2C
//! and least connections precompute the instances each accepts when they are built (health
//! lives in the list, so a health transition is a new list and a rebuild) and their picks read
//! no predicate at all. A request with any other predicate takes the general path, which asks
//! the predicate per candidate. The two are recognised by identity: those constructors hand out
//! one `'static` reference each (see `usable.rs`).
//!
//! # Keys, and no key
//!
//! The hashing strategies route by the request's key ([`Request::key`]): [`Chi::http`],
//! [`Chi::balance`], [`Chi::grpc`] and `chi proxy` read it from the `X-Hash-Key` header (or the
//! header the config's `load_balancer.hash_key_header` names), and take an explicit one too
//! ([`HttpRouter::get_with_key`], the [`HashKey`] request extension). A request without a key
//! is hashed as if it carried a fresh random one, so it sticks to nothing:
//!
//! - [`ConsistentHash`]: a random partition; no member owns more than `load` times the mean
//!   number of partitions, so keyless picks spread roughly evenly, weights aside;
//! - [`RingHash`]: a random point of the ring; an instance gets keyless picks in proportion to
//!   its points, i.e. to its weight, within the ring's statistical spread;
//! - [`Maglev`]: a random slot of the table; in proportion to its slots, i.e. to its weight.
//!
//! In all three an unusable owner passes the pick on as it passes a key on (the next partition,
//! point or slot), so keyless picks also skip unhealthy instances.
//!
//! [`Chi::http`]: crate::Chi::http
//! [`Chi::balance`]: crate::Chi::balance
//! [`Chi::grpc`]: crate::Chi::grpc
//! [`HttpRouter::get_with_key`]: crate::integration::HttpRouter::get_with_key
//! [`HashKey`]: crate::integration::HashKey
//!
//! # Usage
//!
//! A [`Balancer`] holds one strategy for one service. Hand it the current [`Snapshot`](crate::Snapshot) of the
//! service on every request: it rebuilds its table only when the snapshot's revision moved, and
//! returns the instance plus, for load-aware strategies, a guard that counts the request in flight.
//!
//! ```
//! use chi_discovery::Instance;
//! use chi_discovery::balance::{Balancer, Request, Strategy};
//!
//! let instances = vec![
//!     Instance::new("user-service", "10.0.0.1", 8080).with_weight(5),
//!     Instance::new("user-service", "10.0.0.2", 8080),
//! ];
//! let strategy: Strategy = "least_connections".parse().expect("a known name");
//! let balancer = Balancer::new(strategy);
//!
//! // With a `Snapshot` from the discovery client: `balancer.pick(&snapshot, None)`.
//! // Here, a plain list and its revision:
//! let pick = balancer
//!     .pick_in(&instances, 1, &Request::new())
//!     .expect("two instances");
//! println!("calling {}", pick.instance().authority());
//! // ... the call ...
//! pick.observe(std::time::Duration::from_millis(3)); // or just drop it: the count goes down
//!
//! // Consistent hashing: the same key goes to the same instance.
//! let sticky = Balancer::new(Strategy::ConsistentHash);
//! let a = sticky.pick_in(&instances, 1, &Request::with_key(b"user-42")).expect("picked");
//! let b = sticky.pick_in(&instances, 1, &Request::with_key(b"user-42")).expect("picked");
//! assert_eq!(a.instance().id, b.instance().id);
//!
//! // Unknown names are refused with the list of valid ones.
//! assert!("fastest".parse::<Strategy>().unwrap_err().contains("round_robin"));
//! ```
//!
//! # Performance
//!
//! A round-robin or random pick through a [`Balancer`] costs two to three bare atomic
//! `fetch_add`s: one for round robin's counter, the rest for reading the thread's copy of the table
//! (see `table_cache.rs`) and the pick itself; a hashing pick about twice the key hash. Least
//! connections with every instance busy walks a tree, O(log n), instead of scanning. The figures,
//! measured beside their baselines in the same run, are in the README's performance section
//! (`cargo bench -p chi-discovery --bench balance`).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::instance::Instance;

mod balancer;
mod consistent;
mod hash;
mod least_conn;
mod load;
mod maglev;
mod min_tree;
pub mod orca;
mod p2c;
mod random;
mod ring;
mod rng;
mod round_robin;
mod table_cache;
mod usable;
mod weighted;
mod weighted_random;

#[cfg(test)]
mod tests;

pub use balancer::{Balancer, BalancerConfig, Pick};
pub use consistent::{ConsistentHash, ConsistentHashConfig};
pub(crate) use hash::splitmix;
pub use hash::{KeyHasher, default_hash};
pub use least_conn::LeastConnections;
pub use load::{InFlight, Load, Loads, PeakEwmaConfig};
pub use maglev::Maglev;
pub use orca::{
    LoadReporter, LoadReports, LoadSink, OobHandle, OrcaConfig, OrcaWeightedRoundRobin, OutOfBand,
    ReportedLoad,
};
pub use p2c::{P2c, P2cCost};
pub use random::Random;
pub use ring::RingHash;
pub use rng::{RandomSource, SeededRandom, ThreadRandom};
pub use round_robin::RoundRobin;
pub use weighted::WeightedRoundRobin;
pub use weighted_random::WeightedRandom;

/// The default predicate: an instance is usable unless it is known to be unhealthy.
pub fn usable_by_health(instance: &Instance) -> bool {
    instance.health.is_usable()
}

fn accept_all(_: &Instance) -> bool {
    true
}

/// The one reference to [`usable_by_health`] that [`Request`]'s constructors hand out: reading it
/// from one static gives every request the same fat pointer, which selectors compare to
/// recognise the predicate (see `usable.rs`).
static BY_HEALTH: &(dyn Fn(&Instance) -> bool + Sync) = &usable_by_health;

/// The same for "every instance" ([`Request::any`]).
static ANY: &(dyn Fn(&Instance) -> bool + Sync) = &accept_all;

/// What one pick may depend on: the request's key (for hashing strategies) and which instances
/// may be chosen right now. Cheap to build on the stack per request.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The key of hashing strategies (user id, session id...). Without one, they pick at random
    /// (see the module docs, *Keys, and no key*).
    pub key: Option<&'a [u8]>,
    /// Which instances may be picked now. Selectors skip the others without rebuilding.
    pub usable: &'a (dyn Fn(&Instance) -> bool + Sync),
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request").field("key", &self.key).finish()
    }
}

impl Default for Request<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Request<'a> {
    /// No key; instances known to be unhealthy are skipped.
    pub fn new() -> Self {
        Request {
            key: None,
            usable: BY_HEALTH,
        }
    }

    /// A key for hashing strategies; instances known to be unhealthy are skipped.
    pub fn with_key(key: &'a [u8]) -> Self {
        Request {
            key: Some(key),
            usable: BY_HEALTH,
        }
    }

    /// Every instance may be picked, whatever its health.
    pub fn any() -> Self {
        Request {
            key: None,
            usable: ANY,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the predicate.
    pub fn filter(mut self, usable: &'a (dyn Fn(&Instance) -> bool + Sync)) -> Self {
        self.usable = usable;
        self
    }
}

/// A load-balancing algorithm, built once per membership change.
///
/// `select` returns the index, in `instances`, of the instance to call. `instances` must be the
/// list the selector was built from (a [`Balancer`] guarantees it by comparing revisions); given
/// another list, a selector returns some in-range index or `None`, never panics.
///
/// Implementations take no lock and allocate nothing in `select`.
pub trait Select: Send + Sync {
    /// Picks an instance, or `None` when none is usable.
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize>;

    /// Per-instance load cells (index-aligned with `instances`) of load-aware strategies, so the
    /// caller can take an [`InFlight`] guard on the picked instance. `None` for the others.
    fn loads(&self) -> Option<&Loads> {
        None
    }

    /// [`select`](Select::select), plus an [`InFlight`] guard on the picked instance when the
    /// strategy tracks load: the request counts until the guard drops.
    fn pick(
        &self,
        instances: &[Instance],
        request: &Request<'_>,
    ) -> Option<(usize, Option<InFlight>)> {
        let idx = self.select(instances, request)?;
        Some((idx, self.loads().and_then(|l| l.get(idx)).map(Load::start)))
    }
}

/// Indices (as `u32`) of the instances of non-zero weight: the candidates of every strategy.
pub(crate) fn eligible(instances: &[Instance]) -> Vec<u32> {
    instances
        .iter()
        .enumerate()
        .take(u32::MAX as usize)
        .filter(|(_, i)| i.effective_weight() > 0)
        .map(|(n, _)| n as u32)
        .collect()
}

/// The first usable instance among `candidates`, scanning from `start` (wrapping). The fallback of
/// every strategy when its own choice is unusable: bounded by the candidate count.
pub(crate) fn scan_from(
    candidates: &[u32],
    instances: &[Instance],
    request: &Request<'_>,
    start: usize,
) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = start % n;
    (0..n)
        .map(|k| {
            let j = start + k;
            candidates[if j >= n { j - n } else { j }] as usize
        })
        .find(|&idx| instances.get(idx).is_some_and(|i| (request.usable)(i)))
}

/// A rotation's turn `turn` of `slots` fell on an instance the request does not accept: the
/// first accepted one within `limit` slots after it takes the turn, and the rotation's counter
/// `next` moves past it too (by the steps walked), so the skipped instance's share spreads over
/// the others instead of doubling its neighbour's. `None` when none within `limit`.
pub(crate) fn pass_turn(
    next: &AtomicUsize,
    slots: &[u32],
    instances: &[Instance],
    request: &Request<'_>,
    turn: usize,
    limit: usize,
) -> Option<usize> {
    let n = slots.len();
    (1..limit.min(n)).find_map(|step| {
        let idx = slots[(turn + step) % n] as usize;
        accepts(instances, request, idx).then(|| {
            next.fetch_add(step, Ordering::Relaxed);
            idx
        })
    })
}

/// True when `idx` names an instance of `instances` that the request accepts.
#[inline]
pub(crate) fn accepts(instances: &[Instance], request: &Request<'_>, idx: usize) -> bool {
    instances.get(idx).is_some_and(|i| (request.usable)(i))
}

/// `x mod d` without a division (Lemire, Kaser, Kurz, *Faster Remainder by Direct Computation*,
/// 2019): exact for 32-bit `x` and `d`. The round-robin counters are reduced with it, since a
/// 64-bit division costs more than the rest of a pick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastMod {
    m: u64,
    d: u64,
}

impl FastMod {
    /// Reduction modulo `d` (`1..=u32::MAX`; 0 is treated as 1).
    pub(crate) fn new(d: usize) -> Self {
        let d = (d.clamp(1, u32::MAX as usize)) as u64;
        FastMod {
            m: (u64::MAX / d).wrapping_add(1),
            d,
        }
    }

    /// `x mod d` of the low 32 bits of `x`.
    #[inline]
    pub(crate) fn reduce(&self, x: usize) -> usize {
        let low = self.m.wrapping_mul(u64::from(x as u32));
        ((u128::from(low) * u128::from(self.d)) >> 64) as usize
    }
}

/// Maps a random `u64` onto `0..n` (Lemire's multiply-shift; `n > 0`).
#[inline]
pub(crate) fn bounded(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

/// The strategies, chosen by name (`service_discovery.load_balancer.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// [`RoundRobin`].
    #[default]
    RoundRobin,
    /// [`Random`].
    Random,
    /// [`WeightedRoundRobin`].
    WeightedRoundRobin,
    /// [`WeightedRandom`].
    WeightedRandom,
    /// [`LeastConnections`].
    LeastConnections,
    /// [`ConsistentHash`] with bounded loads.
    ConsistentHash,
    /// [`RingHash`].
    RingHash,
    /// [`Maglev`].
    Maglev,
    /// [`P2c`] over in-flight requests.
    P2c,
    /// [`P2c`] over peak-EWMA latency cost.
    PeakEwma,
    /// [`OrcaWeightedRoundRobin`]: weights from the servers' load reports.
    OrcaWeightedRoundRobin,
}

impl Strategy {
    /// Every strategy, in the order of the docs.
    pub const ALL: [Strategy; 11] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::WeightedRoundRobin,
        Strategy::WeightedRandom,
        Strategy::LeastConnections,
        Strategy::ConsistentHash,
        Strategy::RingHash,
        Strategy::Maglev,
        Strategy::P2c,
        Strategy::PeakEwma,
        Strategy::OrcaWeightedRoundRobin,
    ];

    /// The config name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::WeightedRandom => "weighted_random",
            Strategy::LeastConnections => "least_connections",
            Strategy::ConsistentHash => "consistent_hash",
            Strategy::RingHash => "ring_hash",
            Strategy::Maglev => "maglev",
            Strategy::P2c => "p2c",
            Strategy::PeakEwma => "peak_ewma",
            Strategy::OrcaWeightedRoundRobin => "orca_weighted_round_robin",
        }
    }

    /// True for the strategies that route by the request key.
    pub fn uses_key(&self) -> bool {
        matches!(
            self,
            Strategy::ConsistentHash | Strategy::RingHash | Strategy::Maglev
        )
    }

    /// True for the strategies weighed by the servers' load reports (their balancers take
    /// reports through [`Balancer::load_reports`]).
    pub fn uses_load_reports(&self) -> bool {
        matches!(self, Strategy::OrcaWeightedRoundRobin)
    }

    /// True for the strategies that count requests in flight (their picks carry an [`InFlight`]).
    pub fn tracks_load(&self) -> bool {
        matches!(
            self,
            Strategy::LeastConnections | Strategy::P2c | Strategy::PeakEwma
        )
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// Parses a config name (case-insensitive, `-` accepted for `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(Strategy::as_str).collect();
                format!(
                    "unknown load-balancing strategy `{s}`, expected one of: {}",
                    names.join(", ")
                )
            })
    }
}
