//! The smart router: version -> geo -> balancer, with its leaves precomputed per snapshot revision.
//!
//! A [`Smart`] serves one service. Its state is a *plan*: the usable instances grouped by version
//! (each version field and each tag), and within every version group (and the all-versions group)
//! by zone and by region. Every non-empty group is a *leaf* with its own instance list and its own
//! balancer, because a balancer keeps one table for one list (a leaf's balancer is carried over
//! to the next plan by its key, so load counters survive membership changes). The plan is kept
//! current by three steps (deal, ramp, plan: `steps.rs`), each recomputed only when its own
//! inputs changed, on the first pick that finds it out of date, and swapped in with `arc-swap`;
//! a pick then only reads: a few hash lookups to find the leaf, and the leaf balancer's pick.
//!
//! A routed pick costs a few times the bare balancer pick: the plan load and two hash lookups
//! (figures in the README's performance section, `cargo bench -p chi-discovery --bench routing`).
//!
//! Fallbacks never return nothing while the service has a usable instance: each rule widens
//! instead (see [`VersionStep`](super::VersionStep) and [`GeoStep`](super::GeoStep)). When *no*
//! instance is usable, every instance is routed over ([`Decision::panic`](super::Decision::panic)),
//! as Envoy's panic mode does when all hosts are unhealthy: some requests may still succeed,
//! none would without. The version and geo rules still apply within that set.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};

use super::config::RoutingConfig;
use super::geo::Geo;
use super::leaf::{Leaf, LeafLoad, Routed};
use super::plan::{MakeLeaf, Rules};
use super::route::Route;
use super::slow_start::{Ramp, SlowStartConfig};
use super::spill::ZoneAwareConfig;
use super::stage::{Stage, Usable, any_instance};
use super::steps::{SlowStart, Steps, View};
use super::subset::SubsetSource;
use super::version::Version;
use crate::balance::{Balancer, BalancerConfig, RandomSource, ThreadRandom};
use crate::snapshot::Snapshot;
use crate::util::lock;

/// Version -> geo -> balancer for one service; see the module docs. `B` is the balancer of each
/// leaf, chi's [`Balancer`] by default (measured faster as a leaf stage than a selector kept
/// in the plan: see `benches/routing.rs`).
pub struct Smart<B: Stage = Balancer> {
    rules: Rules,
    /// The draws of zone-aware spills.
    rng: Arc<dyn RandomSource>,
    /// Deterministic subsetting: whose version a pick compares with the view's.
    subset: Option<Arc<SubsetSource>>,
    /// What picks read.
    view: ArcSwap<View<B>>,
    /// What keeps the view current, behind the one lock of the slow path.
    steps: Mutex<Steps<B>>,
}

impl<B: Stage> std::fmt::Debug for Smart<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.view.load();
        f.debug_struct("Smart")
            .field("version", &self.rules.version)
            .field("geo", &self.rules.geo)
            .field("revision", &view.revision)
            .field("leaves", &view.plan.leaves.len())
            .finish()
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

/// A leaf balancer maker that keeps the balancer a leaf already has.
fn keep_or<B: Stage>(make: impl Fn() -> B + Send + Sync + 'static) -> Box<MakeLeaf<B>> {
    Box::new(move |previous: Option<&Arc<B>>| previous.cloned().unwrap_or_else(|| Arc::new(make())))
}

impl<B: Stage> Smart<B> {
    /// A router with `version` and `geo` rules; `make` builds one balancer per leaf, kept for
    /// that leaf across snapshot revisions (so it must follow list changes itself, by the
    /// revision [`Stage::pick`] is given, as [`Balancer`] does, carrying load counters over).
    pub fn new(version: Version, geo: Geo, make: impl Fn() -> B + Send + Sync + 'static) -> Self {
        Smart {
            rules: Rules {
                version,
                geo,
                skip_unhealthy: true,
                zone_aware: ZoneAwareConfig::default(),
            },
            rng: Arc::new(ThreadRandom),
            subset: None,
            view: ArcSwap::from_pointee(View::none()),
            steps: Mutex::new(Steps::new(keep_or(make))),
        }
    }

    /// A router from the `routing` config block.
    pub fn from_config(
        config: &RoutingConfig,
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> Self {
        Self::new(Version::from_config(config), Geo::from_config(config), make)
    }

    /// The steps, while the router is being built (nobody picks yet).
    fn steps_mut(&mut self) -> &mut Steps<B> {
        self.steps.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether routing leaves out instances known to be unhealthy (`true`, the default) or routes
    /// over every instance whatever its health (`false`: the config's
    /// `load_balancer.health_check_enabled: false`, for a fleet whose health the registry does not
    /// know well; build the leaf balancers with the same setting, so they do not skip them either).
    /// With `true`, a service whose every instance is unhealthy is still routed over, in panic
    /// mode ([`Decision::panic`](super::Decision::panic)).
    pub fn skip_unhealthy(mut self, on: bool) -> Self {
        self.rules.skip_unhealthy = on;
        self
    }

    /// Zone-aware balancing ([`super::spill`]): a zone short of its clients' share of the
    /// region's capacity keeps only what it can take and spills the rest to the zones with
    /// spare capacity. Off by default (plain zone affinity).
    pub fn zone_aware(mut self, config: ZoneAwareConfig) -> Self {
        self.rules.zone_aware = config;
        self
    }

    /// Deterministic subsetting ([`Subsetting`](super::Subsetting)): this router only ever
    /// picks among the subset `source` deals this client (dealt again when the instances or the
    /// clients change).
    pub fn subset(mut self, source: Arc<SubsetSource>) -> Self {
        self.subset = Some(source);
        self
    }

    /// Slow start ([`super::slow_start`]): an instance that joins or comes back healthy ramps
    /// from a fraction of its weight to all of it over `config.window`, through leaf balancers
    /// that weigh instances (for round robin and random, see [`Smart::slow_start_as`]).
    pub fn slow_start(mut self, config: SlowStartConfig) -> Self {
        self.steps_mut().ramp = Some(SlowStart::new(config));
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
        let steps = self.steps_mut();
        steps.ramp = Some(SlowStart::new(config));
        steps.planner.stand_in = Some(keep_or(make));
        self
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
        self.rules.skip_unhealthy
    }

    /// The instances ramping up now under slow start (none without it); reads only, for a
    /// console or a log.
    pub fn ramps(&self) -> Vec<Ramp> {
        match &lock(&self.steps).ramp {
            Some(ramp) => ramp.ramping(tokio::time::Instant::now()),
            None => Vec::new(),
        }
    }

    /// The version rules.
    pub fn version_rules(&self) -> &Version {
        &self.rules.version
    }

    /// The geo rules.
    pub fn geo_rules(&self) -> &Geo {
        &self.rules.geo
    }

    /// The steps' state, for tests to see which step ran.
    #[cfg(test)]
    pub(super) fn steps(&self) -> std::sync::MutexGuard<'_, Steps<B>> {
        lock(&self.steps)
    }

    /// The subsetting clients' version a view must have been dealt from (0 without subsetting).
    #[inline]
    fn clients(&self) -> u64 {
        self.subset.as_ref().map_or(0, |s| s.version())
    }

    /// The view current for `snapshot`: read, or brought up to date by the steps.
    #[inline]
    fn view(&self, snapshot: &Snapshot) -> Guard<Arc<View<B>>> {
        let view = self.view.load();
        if view.is_current(snapshot.revision(), self.clients()) {
            return view;
        }
        drop(view);
        Guard::from_inner(self.refresh(snapshot))
    }

    #[cold]
    fn refresh(&self, snapshot: &Snapshot) -> Arc<View<B>> {
        let mut steps = lock(&self.steps);
        let current = self.view.load_full();
        let clients = self.clients();
        if current.is_current(snapshot.revision(), clients) {
            return current;
        }
        let source = self.subset.as_deref();
        // An older snapshot than the current view's (a race around a swap) gets its own plan
        // without replacing the newer one.
        if current.revision.is_some_and(|r| r > snapshot.revision()) {
            return Arc::new(steps.aside(snapshot, source, clients, &self.rules));
        }
        let view = Arc::new(steps.refresh(snapshot, source, clients, &self.rules));
        self.view.store(view.clone());
        tracing::debug!(
            revision = snapshot.revision(),
            generation = view.plan.generation,
            leaves = view.plan.leaves.len(),
            "routing view refreshed"
        );
        view
    }

    /// The leaf of the plan `route` leads to in `snapshot`, and why. `None` only for an empty
    /// snapshot.
    #[inline]
    pub fn route(&self, snapshot: &Snapshot, route: &Route<'_>) -> Option<Leaf<B>> {
        if snapshot.is_empty() {
            return None;
        }
        let view = self.view(snapshot);
        let (index, decision) = view.plan.route(&self.rules, route, &*self.rng);
        Some(Leaf {
            view,
            index,
            decision,
            revision: snapshot.revision(),
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
    /// leaf, the pick ignores it rather than fail (the detector's `max_ejection_percent` is
    /// what bounds ejections; the router does not turn them into an empty answer).
    #[inline]
    pub fn pick_usable(
        &self,
        snapshot: &Snapshot,
        route: &Route<'_>,
        usable: &Usable<'_>,
    ) -> Option<Routed<B>> {
        let leaf = self.route(snapshot, route)?;
        let plan = &leaf.view.plan;
        let data = &plan.leaves[leaf.index];
        let (index, guard) = data
            .balancer
            .pick(&data.instances, plan.generation, route.key, usable)
            .or_else(|| {
                data.balancer
                    .pick(&data.instances, plan.generation, route.key, any_instance())
            })?;
        let load = plan.load_band.map(|_| LeafLoad::start(&data.load));
        Some(Routed {
            leaf,
            index,
            guard,
            _load: load,
        })
    }
}
