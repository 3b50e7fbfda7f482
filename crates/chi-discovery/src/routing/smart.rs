//! The smart router: version -> geo -> balancer, with subsets precomputed per snapshot revision.
//!
//! A [`Smart`] serves one service. On the first pick from a snapshot revision it has not seen, it
//! builds a *plan*: the usable instances grouped by version (each version field and each tag),
//! and within every version group (and the all-versions group) by zone and by region. Every
//! non-empty group is a *leaf* with its own instance list and its own balancer, because a
//! balancer keeps one table for one list (a leaf's balancer is carried over to the next plan by
//! its key, so load counters survive membership changes). The plan is swapped in with `arc-swap`;
//! a pick then only reads: a few hash lookups to find the leaf, and the leaf balancer's pick.
//!
//! A routed pick costs a few times the bare balancer pick: the plan load and two hash lookups
//! (figures in the README's performance section, `cargo bench -p chi-discovery --bench routing`).
//!
//! Fallbacks never return nothing while the service has a usable instance: each stage widens
//! instead (see [`VersionStep`] and [`GeoStep`]). When *no* instance is usable, every instance is
//! routed over ([`Decision::panic`]), as Envoy's panic mode does when all hosts are unhealthy:
//! some requests may still succeed, none would without. The version and geo rules still apply
//! within that set.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::RoutingConfig;
use super::plan::{Leaf, MakeLeaf, Plan, Rules};
use super::slow_start::{Ramp, Ramps, SlowStartConfig};
use super::spill::ZoneAwareConfig;
use super::stage::any_instance;
use super::subset::SubsetSource;
use super::{Geo, GeoStep, Route, Stage, Usable, Version, VersionStep};
use crate::balance::{Balancer, BalancerConfig, RandomSource, ThreadRandom};
use crate::instance::Instance;
use crate::snapshot::Snapshot;
use crate::util::lock;

/// Which rules decided a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The version rule.
    pub version: VersionStep,
    /// The geo rule.
    pub geo: GeoStep,
    /// True when no instance was usable and every instance was routed over.
    pub panic: bool,
}

impl Decision {
    /// True if any stage fell back (or panicked).
    pub fn fell_back(&self) -> bool {
        self.panic || self.version.is_fallback() || self.geo.is_fallback()
    }
}

/// Version -> geo -> balancer for one service; see the module docs. `B` is the balancer of each
/// leaf, chi's [`Balancer`] by default (measured faster as a leaf stage than a selector kept
/// in the plan: see `benches/routing.rs`).
pub struct Smart<B: Stage = Balancer> {
    version: Version,
    geo: Geo,
    make: Box<MakeLeaf<B>>,
    /// Route over healthy instances only (the default), or over all of them.
    skip_unhealthy: bool,
    zone_aware: ZoneAwareConfig,
    /// The draws of zone-aware spills.
    rng: Arc<dyn RandomSource>,
    subset: Option<Arc<SubsetSource>>,
    slow_start: Option<(SlowStartConfig, Ramps)>,
    /// Slow start of a strategy that ignores weights: its weighted stand-in while something ramps.
    ramp_make: Option<Box<MakeLeaf<B>>>,
    /// Plans built so far: the source of [`Plan::generation`].
    plans: AtomicU64,
    plan: ArcSwap<Plan<B>>,
    rebuild: Mutex<()>,
}

impl<B: Stage> std::fmt::Debug for Smart<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plan = self.plan.load();
        f.debug_struct("Smart")
            .field("version", &self.version)
            .field("geo", &self.geo)
            .field("revision", &plan.built.then_some(plan.revision))
            .field("leaves", &plan.leaves.len())
            .finish()
    }
}

/// The set a route selects, before the balancer picks.
pub struct Subset<B: Stage = Balancer> {
    /// An arc-swap guard: holding the plan costs no reference-count write on the fast path.
    plan: Guard<Arc<Plan<B>>>,
    leaf: usize,
    decision: Decision,
}

impl<B: Stage> std::fmt::Debug for Subset<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("decision", &self.decision)
            .field("len", &self.instances().len())
            .finish()
    }
}

impl<B: Stage> Subset<B> {
    fn leaf(&self) -> &Leaf<B> {
        &self.plan.leaves[self.leaf]
    }

    /// The instances the balancer picks from (never empty).
    pub fn instances(&self) -> &[Instance] {
        &self.leaf().instances
    }

    /// The rules that decided.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The version routed to (`None`: any version).
    pub fn version(&self) -> Option<&str> {
        self.leaf().version.as_deref()
    }

    /// The zone or region routed to (`None`: any place).
    pub fn place(&self) -> Option<&str> {
        self.leaf().place.as_deref()
    }

    /// The snapshot revision the subset was computed from.
    pub fn revision(&self) -> u64 {
        self.plan.revision
    }
}

/// A picked instance with the route that led to it. Holds the balancer's in-flight guard (if
/// any) until dropped.
pub struct Routed<B: Stage = Balancer> {
    subset: Subset<B>,
    index: usize,
    guard: B::Guard,
    /// Load-aware zone routing: this request's count in its leaf's load, until dropped.
    _load: Option<LeafLoad>,
}

/// One request counted in a leaf's in-flight load; uncounted on drop.
struct LeafLoad(Arc<AtomicU32>);

impl Drop for LeafLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B: Stage> std::fmt::Debug for Routed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("instance", &self.instance().id)
            .field("decision", &self.subset.decision)
            .finish()
    }
}

impl Routed<Balancer> {
    /// Ends the request, feeding `latency` to the instance's peak-EWMA estimate (what
    /// [`Pick::observe`](crate::balance::Pick::observe) does for a bare balancer pick). Dropping
    /// a `Routed` ends the request without a sample.
    pub fn observe(self, latency: std::time::Duration) {
        if let Some(in_flight) = &self.guard {
            let ewma = self.subset.leaf().balancer.config().peak_ewma;
            in_flight.load().observe(latency, &ewma);
        }
    }
}

impl<B: Stage> Routed<B> {
    /// The instance to call.
    pub fn instance(&self) -> &Instance {
        &self.subset.instances()[self.index]
    }

    /// The subset it was picked from, and the rules that decided.
    pub fn subset(&self) -> &Subset<B> {
        &self.subset
    }

    /// The rules that decided.
    pub fn decision(&self) -> Decision {
        self.subset.decision
    }

    /// The strategy of the balancer that picked.
    pub fn strategy(&self) -> &'static str {
        self.subset.leaf().balancer.strategy()
    }

    /// Where the picked instance's load reports go, for `orca_weighted_round_robin` (`None` for
    /// the other strategies): hand it the response's report under the instance's id
    /// (`orca::feed_to` with feature `orca`).
    pub fn load_reports(&self) -> Option<&Arc<crate::balance::LoadReports>> {
        self.subset.leaf().balancer.load_reports()
    }

    /// The balancer's guard (e.g. an in-flight count), kept alive by the `Routed`.
    pub fn guard(&self) -> &B::Guard {
        &self.guard
    }

    /// Takes the guard out, e.g. into a response future.
    pub fn into_guard(self) -> B::Guard {
        self.guard
    }
}

impl Smart<Balancer> {
    /// A router from the `routing` config block with a [`Balancer`] of `balancer`'s settings per
    /// leaf (one table per leaf, e.g. one round-robin position per zone). The settings are
    /// validated once, here.
    pub fn with_balancer(
        config: &RoutingConfig,
        balancer: BalancerConfig,
    ) -> std::result::Result<Self, String> {
        balancer.validate()?;
        Ok(Self::from_config(config, move || {
            let strategy = balancer.strategy;
            Balancer::with_config(balancer.clone()).unwrap_or_else(|_| Balancer::new(strategy))
        }))
    }
}

impl<B: Stage> Smart<B> {
    /// A router with `version` and `geo` rules; `make` builds one balancer per leaf, kept for
    /// that leaf across snapshot revisions (so it must follow list changes itself, by the
    /// revision [`Stage::pick`] is given, as [`Balancer`] does, carrying load counters over).
    pub fn new(version: Version, geo: Geo, make: impl Fn() -> B + Send + Sync + 'static) -> Self {
        Self::with_leaves(version, geo, move |previous: Option<&Arc<B>>| {
            previous.cloned().unwrap_or_else(|| Arc::new(make()))
        })
    }

    fn with_leaves(
        version: Version,
        geo: Geo,
        make: impl Fn(Option<&Arc<B>>) -> Arc<B> + Send + Sync + 'static,
    ) -> Self {
        Smart {
            version,
            geo,
            make: Box::new(make),
            skip_unhealthy: true,
            zone_aware: ZoneAwareConfig::default(),
            rng: Arc::new(ThreadRandom),
            subset: None,
            slow_start: None,
            ramp_make: None,
            plans: AtomicU64::new(0),
            plan: ArcSwap::from_pointee(Plan::placeholder()),
            rebuild: Mutex::new(()),
        }
    }

    /// A router from the `routing` config block.
    pub fn from_config(
        config: &RoutingConfig,
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> Self {
        Self::new(Version::from_config(config), Geo::from_config(config), make)
    }

    /// Whether routing leaves out instances known to be unhealthy (`true`, the default) or routes
    /// over every instance whatever its health (`false`: the config's
    /// `load_balancer.health_check_enabled: false`, for a fleet whose health the registry does not
    /// know well; build the leaf balancers with the same setting, so they do not skip them either).
    /// With `true`, a service whose every instance is unhealthy is still routed over, in panic
    /// mode ([`Decision::panic`]).
    pub fn skip_unhealthy(mut self, on: bool) -> Self {
        self.skip_unhealthy = on;
        self
    }

    /// Zone-aware balancing ([`super::spill`]): a zone short of its clients' share of the
    /// region's capacity keeps only what it can take and spills the rest to the zones with
    /// spare capacity. Off by default (plain zone affinity).
    pub fn zone_aware(mut self, config: ZoneAwareConfig) -> Self {
        self.zone_aware = config;
        self
    }

    /// Deterministic subsetting ([`Subsetting`](super::Subsetting)): this router only ever picks among the
    /// subset `source` deals this client (dealt again when the instances or the clients change).
    pub fn subset(mut self, source: Arc<SubsetSource>) -> Self {
        self.subset = Some(source);
        self
    }

    /// Slow start ([`super::slow_start`]): an instance that joins or comes back healthy ramps
    /// from a fraction of its weight to all of it over `config.window`, through leaf balancers
    /// that weigh instances (for round robin and random, see [`Smart::slow_start_as`]).
    pub fn slow_start(mut self, config: SlowStartConfig) -> Self {
        self.slow_start = Some((config, Ramps::default()));
        self
    }

    /// Slow start for leaves whose balancer ignores weights (round robin, random): while
    /// something ramps they are balanced by `make` (the weighted form: weighted round robin,
    /// weighted random) over weights where every instance counts alike but the ramping ones;
    /// after the ramp, by the router's own balancers again.
    pub fn slow_start_as(
        mut self,
        config: SlowStartConfig,
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> Self {
        self.slow_start = Some((config, Ramps::default()));
        self.ramp_make = Some(Box::new(move |previous: Option<&Arc<B>>| {
            previous.cloned().unwrap_or_else(|| Arc::new(make()))
        }));
        self
    }

    /// True while `plan` still holds: its subset deal is the current one and no ramp step is due.
    #[inline]
    fn current(&self, plan: &Plan<B>) -> bool {
        self.subset
            .as_ref()
            .is_none_or(|s| s.version() == plan.subset_version)
            && plan
                .ramp_until
                .is_none_or(|t| tokio::time::Instant::now() < t)
    }

    /// The random source of zone-aware spills (default: per-thread; a
    /// [`SeededRandom`](crate::balance::SeededRandom) for a deterministic simulation).
    pub fn zone_rng(mut self, rng: Arc<dyn RandomSource>) -> Self {
        self.rng = rng;
        self
    }

    /// True when routing leaves out instances known to be unhealthy (see
    /// [`skip_unhealthy`](Self::skip_unhealthy)).
    pub fn skips_unhealthy(&self) -> bool {
        self.skip_unhealthy
    }

    /// The instances ramping up now under slow start (none without it); reads only, for a
    /// console or a log.
    pub fn ramps(&self) -> Vec<Ramp> {
        match &self.slow_start {
            Some((config, ramps)) => ramps.ramping(config, tokio::time::Instant::now()),
            None => Vec::new(),
        }
    }

    /// The version rules.
    pub fn version_rules(&self) -> &Version {
        &self.version
    }

    /// The geo rules.
    pub fn geo_rules(&self) -> &Geo {
        &self.geo
    }

    #[inline]
    fn plan(&self, snapshot: &Snapshot) -> Guard<Arc<Plan<B>>> {
        let plan = self.plan.load();
        if plan.built && plan.revision == snapshot.revision() && self.current(&plan) {
            return plan;
        }
        drop(plan);
        Guard::from_inner(self.rebuild(snapshot))
    }

    #[cold]
    fn rebuild(&self, snapshot: &Snapshot) -> Arc<Plan<B>> {
        let _lock = lock(&self.rebuild);
        let current = self.plan.load_full();
        if current.built && current.revision == snapshot.revision() && self.current(&current) {
            return current;
        }
        let previous = current.built.then_some(&*current);
        let (dealt, subset_version) = match &self.subset {
            Some(s) => {
                let version = s.version();
                (Some(s.filter(snapshot.instances())), version)
            }
            None => (None, 0),
        };
        let now = tokio::time::Instant::now();
        let ramp = match &self.slow_start {
            Some((config, ramps)) => {
                let list = dealt.as_deref().unwrap_or(snapshot.instances());
                let usable: Vec<&Instance> = list
                    .iter()
                    .filter(|i| !self.skip_unhealthy || i.health.is_usable())
                    .collect();
                ramps.factors(config, &usable, now)
            }
            None => Default::default(),
        };
        let rules = Rules {
            version: &self.version,
            geo: &self.geo,
            skip_unhealthy: self.skip_unhealthy,
            zone_aware: &self.zone_aware,
            ramp: &ramp,
            even: false,
        };
        let (rules, make) = match &self.ramp_make {
            Some(stand_in) if !ramp.is_empty() => (
                Rules {
                    even: true,
                    ..rules
                },
                &**stand_in,
            ),
            _ => (rules, &*self.make),
        };
        let mut plan = Plan::build(
            dealt.as_deref().unwrap_or(snapshot.instances()),
            snapshot.revision(),
            &rules,
            previous,
            make,
        );
        plan.subset_version = subset_version;
        plan.generation = self.plans.fetch_add(1, Ordering::Relaxed);
        plan.ramp_until = match &self.slow_start {
            Some((config, _)) if !ramp.is_empty() => Some(now + config.step()),
            _ => None,
        };
        let plan = Arc::new(plan);
        // An older snapshot than the current plan's (a race around a swap) gets its own plan
        // without replacing the newer one; the same snapshot's new plan (a new subset deal, a
        // slow-start step) replaces it.
        if !current.built || current.revision <= snapshot.revision() {
            self.plan.store(plan.clone());
        }
        tracing::debug!(
            revision = snapshot.revision(),
            leaves = plan.leaves.len(),
            "routing subsets rebuilt"
        );
        plan
    }

    /// The subset `route` selects from `snapshot`, and why. `None` only for an empty snapshot.
    #[inline]
    pub fn route(&self, snapshot: &Snapshot, route: &Route<'_>) -> Option<Subset<B>> {
        if snapshot.is_empty() {
            return None;
        }
        let plan = self.plan(snapshot);
        let (leaf, decision) = plan.route(&self.version, &self.geo, route, &*self.rng);
        Some(Subset {
            plan,
            leaf,
            decision,
        })
    }

    /// Routes and picks: the instance to call, with the decision. `None` for an empty snapshot
    /// or when the balancer finds nothing to pick.
    #[inline]
    pub fn pick(&self, snapshot: &Snapshot, route: &Route<'_>) -> Option<Routed<B>> {
        self.pick_usable(snapshot, route, any_instance())
    }

    /// [`pick`](Self::pick), skipping instances `usable` rejects (typically those an
    /// [`OutlierDetector`](crate::health::OutlierDetector) ejected). When it rejects the whole
    /// subset, the pick ignores it rather than fail (the detector's `max_ejection_percent` is
    /// what bounds ejections; the router does not turn them into an empty answer).
    #[inline]
    pub fn pick_usable(
        &self,
        snapshot: &Snapshot,
        route: &Route<'_>,
        usable: &Usable<'_>,
    ) -> Option<Routed<B>> {
        let subset = self.route(snapshot, route)?;
        let leaf = subset.leaf();
        let revision = subset.plan.generation;
        let (index, guard) = leaf
            .balancer
            .pick(&leaf.instances, revision, route.key, usable)
            .or_else(|| {
                leaf.balancer
                    .pick(&leaf.instances, revision, route.key, any_instance())
            })?;
        let load = subset.plan.load_band.map(|_| {
            let counter = subset.leaf().load.clone();
            counter.fetch_add(1, Ordering::Relaxed);
            LeafLoad(counter)
        });
        Some(Routed {
            subset,
            index,
            guard,
            _load: load,
        })
    }
}
