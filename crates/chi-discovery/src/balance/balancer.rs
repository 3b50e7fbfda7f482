//! [`Balancer`]: one strategy for one service, rebuilt only when the instance list changes.
//!
//! The selector lives in an [`ArcSwapOption`] tagged with the revision of the list it was built
//! from (pingora's `LoadBalancer` keeps its selector the same way). A pick loads it (no lock, no
//! reference-count write on arc-swap's fast path), compares revisions and selects. When the
//! revision moved, one thread rebuilds behind a mutex taken only on that path, carrying the load
//! counters over by instance id, and swaps the new selector in; pickers never wait on it. A picker
//! holding an *older* snapshot than the stored selector (a race around a swap) builds a throwaway
//! selector for its own list rather than swapping back: slower, rare, and never wrong.
//!
//! Each thread keeps its own reference to the current selector (`table_cache.rs`), checked
//! against a generation counter the balancer bumps after every swap, so a pick reads one counter
//! instead of taking arc-swap's two read-modify-writes.
//!
//! A selector may also replace itself for the same list through a [`Publisher`]: what
//! `orca_weighted_round_robin` does when its weights change, so that its picks, too, read an
//! immutable table through the per-thread cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::load::now_ns;
use super::table_cache::{self, next_id};
use super::{
    ANY, BY_HEALTH, ConsistentHash, ConsistentHashConfig, InFlight, KeyHasher, LeastConnections,
    LoadReports, Loads, Maglev, OrcaConfig, OrcaWeightedRoundRobin, P2c, P2cCost, PeakEwmaConfig,
    Random, RandomSource, Request, RingHash, RoundRobin, Select, Strategy, ThreadRandom,
    WeightedRandom, WeightedRoundRobin, default_hash,
};
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::snapshot::Snapshot;
use crate::util::lock;

/// Everything a [`Balancer`] needs to build its selectors.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// The algorithm.
    pub strategy: Strategy,
    /// Skip instances known to be unhealthy (`load_balancer.health_check_enabled`). Applies to
    /// [`Balancer::pick`]; [`Balancer::pick_in`] takes the caller's [`Request`] as is.
    pub health_check_enabled: bool,
    /// Settings of [`Strategy::ConsistentHash`].
    pub consistent_hash: ConsistentHashConfig,
    /// Key hasher of the hashing strategies.
    pub hasher: KeyHasher,
    /// Random source of [`Strategy::Random`], P2C, tie-breaks and keyless hashing picks.
    pub rng: Arc<dyn RandomSource>,
    /// Settings of [`Strategy::PeakEwma`].
    pub peak_ewma: PeakEwmaConfig,
    /// Settings of [`Strategy::OrcaWeightedRoundRobin`].
    pub orca: OrcaConfig,
    /// The reported loads [`Strategy::OrcaWeightedRoundRobin`] weighs by, shared by the balancers
    /// of one service ([`Routers`](crate::routing::Routers) makes one per service). `None`: a
    /// balancer of that strategy makes its own, with [`orca`](Self::orca)'s rules.
    pub load_reports: Option<Arc<LoadReports>>,
}

impl BalancerConfig {
    /// `strategy` with every other setting at its default.
    pub fn new(strategy: Strategy) -> Self {
        BalancerConfig {
            strategy,
            health_check_enabled: true,
            consistent_hash: ConsistentHashConfig::default(),
            hasher: default_hash,
            rng: Arc::new(ThreadRandom),
            peak_ewma: PeakEwmaConfig::default(),
            orca: OrcaConfig::default(),
            load_reports: None,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.consistent_hash
            .validate()
            .map_err(|e| format!("consistent_hash.{e}"))?;
        if self.peak_ewma.decay.is_zero() {
            return Err("peak_ewma.decay: must be > 0".into());
        }
        self.orca.validate().map_err(|e| format!("orca.{e}"))?;
        Ok(())
    }

    /// Builds the selector of this strategy for `instances`, keeping the load cells of
    /// `previous` (by instance id) for load-aware strategies.
    ///
    /// An `orca_weighted_round_robin` selector built here keeps the weights it was built with: a
    /// [`Balancer`] swaps in its successor every update period.
    pub fn build(&self, instances: &[Instance], previous: Option<&Loads>) -> Box<dyn Select> {
        self.build_as(instances, previous, None, true)
    }

    /// [`build`](Self::build); a selector that will not be the current one (`current: false`,
    /// for one pick from an outdated list) leaves the cells' least-connections tree alone.
    /// `publisher` lets a selector replace itself in the balancer (new weights).
    fn build_as(
        &self,
        instances: &[Instance],
        previous: Option<&Loads>,
        publisher: Option<Publisher>,
        current: bool,
    ) -> Box<dyn Select> {
        let rng = self.rng.clone();
        match self.strategy {
            Strategy::RoundRobin => Box::new(RoundRobin::new(instances)),
            Strategy::Random => Box::new(Random::with_rng(instances, rng)),
            Strategy::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(instances)),
            Strategy::WeightedRandom => Box::new(WeightedRandom::with_rng(instances, rng)),
            // The tree over the pool this balancer's own picks use (all of them, health off).
            Strategy::LeastConnections if current && !self.health_check_enabled => Box::new(
                LeastConnections::over_all(instances, previous, rng, self.peak_ewma),
            ),
            Strategy::LeastConnections if current => Box::new(LeastConnections::build(
                instances,
                previous,
                rng,
                self.peak_ewma,
            )),
            Strategy::LeastConnections => Box::new(LeastConnections::build_detached(
                instances,
                previous,
                rng,
                self.peak_ewma,
            )),
            Strategy::ConsistentHash => Box::new(ConsistentHash::build(
                instances,
                &self.consistent_hash,
                self.hasher,
                rng,
            )),
            Strategy::RingHash => Box::new(RingHash::build(instances, self.hasher, rng)),
            Strategy::Maglev => Box::new(Maglev::build(instances, self.hasher, rng)),
            Strategy::P2c => Box::new(P2c::build(
                instances,
                P2cCost::LeastRequest,
                previous,
                rng,
                self.peak_ewma,
            )),
            Strategy::PeakEwma => Box::new(P2c::build(
                instances,
                P2cCost::PeakEwma,
                previous,
                rng,
                self.peak_ewma,
            )),
            Strategy::OrcaWeightedRoundRobin => {
                let reports = match &self.load_reports {
                    Some(r) => r.clone(),
                    None => Arc::new(LoadReports::new(self.orca)),
                };
                Box::new(
                    OrcaWeightedRoundRobin::build(instances, reports, &*rng).publishing(publisher),
                )
            }
        }
    }
}

/// A selector and the revision of the list it was built from.
pub(super) struct State {
    revision: u64,
    selector: Box<dyn Select>,
}

/// A balancer's current table, shared with the selectors that replace themselves in it.
struct Current {
    state: ArcSwapOption<State>,
    /// Bumped after every store to `state`: threads' cached copies of an older one are stale.
    generation: AtomicU64,
    /// Taken to replace the table.
    rebuild: Mutex<()>,
}

/// How a selector replaces itself in the balancer that picks from it, for the same list: what
/// `orca_weighted_round_robin` does every update period, so that its picks read an immutable
/// table like every other strategy's (through the per-thread cache, no arc-swap load).
#[derive(Clone)]
pub(crate) struct Publisher {
    current: Weak<Current>,
    revision: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Makes `selector` the balancer's table while the balancer still picks from this
    /// revision. False when it does not, is gone, or is replacing its table right now (the
    /// caller may try again later: a pick that rebuilds holds the lock while it picks).
    pub(crate) fn publish(&self, selector: Box<dyn Select>) -> bool {
        let Some(current) = self.current.upgrade() else {
            return false;
        };
        let Ok(_lock) = current.rebuild.try_lock() else {
            return false;
        };
        if current
            .state
            .load()
            .as_ref()
            .is_none_or(|s| s.revision != self.revision)
        {
            return false;
        }
        current.state.store(Some(Arc::new(State {
            revision: self.revision,
            selector,
        })));
        current.generation.fetch_add(1, Ordering::Release);
        true
    }
}

/// One strategy for one service: picks an instance per request from the service's current list.
///
/// Use one `Balancer` per service (and per routing subset): it keeps one table, for the latest
/// revision it saw.
pub struct Balancer {
    config: BalancerConfig,
    current: Arc<Current>,
    /// Process-unique, the key of the per-thread cache.
    id: u64,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("strategy", &self.config.strategy)
            .field("revision", &self.revision())
            .finish()
    }
}

/// A picked instance, with the in-flight guard of load-aware strategies.
///
/// Dropping it ends the request for the load counters (also on error or cancellation);
/// [`observe`](Pick::observe) or [`finish`](Pick::finish) also feed its latency to peak EWMA.
#[derive(Debug)]
#[must_use = "for load-aware strategies the request counts as in flight while the pick lives"]
pub struct Pick<'a> {
    instance: &'a Instance,
    index: usize,
    in_flight: Option<InFlight>,
    /// When a peak-EWMA pick was made, in ns since the process epoch (0: not measured).
    started: u64,
}

impl<'a> Pick<'a> {
    /// The instance to call.
    pub fn instance(&self) -> &'a Instance {
        self.instance
    }

    /// Its index in the list picked from.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The in-flight guard, for load-aware strategies.
    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Takes the in-flight guard out (e.g. to move it into a response future), leaving the
    /// instance reference.
    pub fn take_in_flight(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }

    /// Ends the request, feeding `latency` to the instance's peak-EWMA estimate.
    pub fn observe(self, latency: Duration) {
        if let Some(g) = &self.in_flight {
            g.load().observe_own(latency);
        }
    }

    /// Ends the request, feeding the time since the pick to peak EWMA (measured only for
    /// load-aware strategies).
    pub fn finish(self) {
        if self.started != 0 {
            let latency = Duration::from_nanos(now_ns().saturating_sub(self.started));
            self.observe(latency);
        }
    }
}

impl std::ops::Deref for Pick<'_> {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        self.instance
    }
}

impl Balancer {
    /// A balancer of `strategy` with default settings.
    pub fn new(strategy: Strategy) -> Self {
        Self::from_config(BalancerConfig::new(strategy))
    }

    /// A balancer with `config`, validated.
    pub fn with_config(config: BalancerConfig) -> std::result::Result<Self, String> {
        config.validate()?;
        Ok(Self::from_config(config))
    }

    fn from_config(mut config: BalancerConfig) -> Self {
        if config.strategy.uses_load_reports() && config.load_reports.is_none() {
            config.load_reports = Some(Arc::new(LoadReports::new(config.orca)));
        }
        Balancer {
            config,
            current: Arc::new(Current {
                state: ArcSwapOption::const_empty(),
                generation: AtomicU64::new(0),
                rebuild: Mutex::new(()),
            }),
            id: next_id(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// Where the load reports of [`Strategy::OrcaWeightedRoundRobin`] go (`None` for the other
    /// strategies): hand it each response's report, by instance id ([`LoadSink::record`]).
    ///
    /// [`LoadSink::record`]: super::LoadSink::record
    pub fn load_reports(&self) -> Option<&Arc<LoadReports>> {
        self.config
            .load_reports
            .as_ref()
            .filter(|_| self.config.strategy.uses_load_reports())
    }

    /// The revision of the current table, if one was built.
    pub fn revision(&self) -> Option<u64> {
        self.current.state.load().as_ref().map(|s| s.revision)
    }

    /// Picks from `snapshot`, by `key` for hashing strategies, skipping instances known to be
    /// unhealthy when `health_check_enabled`. `None` when no instance is usable.
    #[inline]
    pub fn pick<'a>(&self, snapshot: &'a Snapshot, key: Option<&[u8]>) -> Option<Pick<'a>> {
        let request = Request {
            key,
            usable: if self.config.health_check_enabled {
                BY_HEALTH
            } else {
                ANY
            },
        };
        self.pick_in(snapshot.instances(), snapshot.revision(), &request)
    }

    /// [`pick`](Self::pick), with [`Error::NoInstance`] naming `service` when nothing is usable.
    pub fn pick_or_err<'a>(
        &self,
        service: &str,
        snapshot: &'a Snapshot,
        key: Option<&[u8]>,
    ) -> Result<Pick<'a>> {
        self.pick(snapshot, key).ok_or_else(|| Error::NoInstance {
            service: service.to_owned(),
        })
    }

    /// Picks from `snapshot` with a caller-made request (own predicate, key).
    #[inline]
    pub fn pick_with<'a>(&self, snapshot: &'a Snapshot, request: &Request<'_>) -> Option<Pick<'a>> {
        self.pick_in(snapshot.instances(), snapshot.revision(), request)
    }

    /// Picks from a plain list. `revision` must change whenever the list changes (equal revisions
    /// mean equal lists) and grow over time, like [`Snapshot::revision`].
    // Always inlined: reading the table and making the `Pick` are a few instructions, and a call
    // returns the `Pick` through memory, which the caller reads back with a store-forwarding
    // stall (profiled: half the cost of a round-robin pick).
    #[inline(always)]
    pub fn pick_in<'a>(
        &self,
        instances: &'a [Instance],
        revision: u64,
        request: &Request<'_>,
    ) -> Option<Pick<'a>> {
        let generation = self.current.generation.load(Ordering::Acquire);
        let state = match table_cache::take(self.id, generation) {
            Some(state) => state,
            None => match self.current.state.load_full() {
                Some(state) => state,
                None => return self.pick_slow(instances, revision, request),
            },
        };
        if state.revision != revision {
            return self.pick_slow(instances, revision, request);
        }
        let chosen = state.selector.pick(instances, request);
        table_cache::put(self.id, generation, state);
        self.make_pick(chosen, instances)
    }

    #[cold]
    fn pick_slow<'a>(
        &self,
        instances: &'a [Instance],
        revision: u64,
        request: &Request<'_>,
    ) -> Option<Pick<'a>> {
        let _lock = lock(&self.current.rebuild);
        let current = self.current.state.load_full();
        match current.as_deref() {
            Some(state) if state.revision == revision => {
                self.finish_pick(&*state.selector, instances, request)
            }
            Some(state) if state.revision > revision => {
                // An older list than the table's: answer from a throwaway table.
                let selector = self
                    .config
                    .build_as(instances, state.selector.loads(), None, false);
                self.finish_pick(&*selector, instances, request)
            }
            _ => {
                let previous = current.as_deref().and_then(|s| s.selector.loads());
                let publisher = Publisher {
                    current: Arc::downgrade(&self.current),
                    revision,
                };
                let state = Arc::new(State {
                    revision,
                    selector: self
                        .config
                        .build_as(instances, previous, Some(publisher), true),
                });
                self.current.state.store(Some(state.clone()));
                self.current.generation.fetch_add(1, Ordering::Release);
                self.finish_pick(&*state.selector, instances, request)
            }
        }
    }

    #[inline]
    fn finish_pick<'a>(
        &self,
        selector: &dyn Select,
        instances: &'a [Instance],
        request: &Request<'_>,
    ) -> Option<Pick<'a>> {
        self.make_pick(selector.pick(instances, request), instances)
    }

    #[inline(always)]
    fn make_pick<'a>(
        &self,
        chosen: Option<(usize, Option<InFlight>)>,
        instances: &'a [Instance],
    ) -> Option<Pick<'a>> {
        let (index, in_flight) = chosen?;
        let instance = instances.get(index)?;
        let started = match (&in_flight, self.config.strategy) {
            (Some(_), Strategy::PeakEwma) => now_ns().max(1),
            _ => 0,
        };
        Some(Pick {
            instance,
            index,
            in_flight,
            started,
        })
    }
}
