//! The smart router's plan: a service's usable instances grouped by version and place, each
//! group a leaf with its own balancer; and the route of one request through it.
//!
//! A plan is the last of the steps a router's state goes through (`steps.rs`): built from this
//! client's instances (the deal) and their slow-start weights (the ramp), by the router's fixed
//! [`Rules`]. A route through it only reads: a few hash lookups and, zone-aware, one draw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustc_hash::FxHashMap;

use super::decision::Decision;
use super::geo::{Geo, GeoStep, Target};
use super::route::Route;
use super::slow_start::weighted;
use super::spill::{ZoneAwareConfig, ZoneSpill};
use super::version::Version;
use crate::balance::RandomSource;
use crate::instance::Instance;

/// Builds a leaf's balancer from the previous plan's balancer of the same leaf.
pub(super) type MakeLeaf<B> = dyn Fn(Option<&Arc<B>>) -> Arc<B> + Send + Sync;

/// A uniform draw in `[0, 1)` from 64 random bits (the top 53).
#[inline]
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The rules a router routes by and builds its plans with, fixed for the router's life.
#[derive(Debug)]
pub(super) struct Rules {
    pub(super) version: Version,
    pub(super) geo: Geo,
    /// Route over the instances not known to be unhealthy (or, `false`, over all of them).
    pub(super) skip_unhealthy: bool,
    pub(super) zone_aware: ZoneAwareConfig,
}

/// How a plan's leaves get their balancers: `make`, from the balancer the same leaf had in the
/// plan before (`previous`). `stand_in`: `make` builds the weighted stand-ins of a strategy that
/// ignores weights, for a ramp: they weigh every instance alike but the ramping ones, and are
/// carried over apart from the strategy's own.
pub(super) struct Balancers<'a, B> {
    pub(super) make: &'a MakeLeaf<B>,
    pub(super) stand_in: bool,
    pub(super) previous: &'a Carry<B>,
}

/// What a plan hands the next one: its leaves' balancers and in-flight counters, by leaf key,
/// so load counts and balancer positions survive membership changes.
pub(super) struct Carry<B> {
    balancers: FxHashMap<String, Arc<B>>,
    loads: FxHashMap<String, Arc<AtomicU32>>,
}

impl<B> Default for Carry<B> {
    fn default() -> Self {
        Carry {
            balancers: FxHashMap::default(),
            loads: FxHashMap::default(),
        }
    }
}

/// One version's leaves, by place.
#[derive(Default)]
pub(super) struct Group {
    pub(super) all: usize,
    pub(super) zones: FxHashMap<Box<str>, usize>,
    pub(super) regions: FxHashMap<Box<str>, usize>,
    /// Zone-aware spill of a zone's leaf: where its clients' requests go, as leaf ids.
    pub(super) spill: FxHashMap<usize, ZoneSpill>,
}

/// One leaf of a plan: its instances, its balancer, its in-flight count, and where it is.
pub(super) struct LeafData<B> {
    pub(super) instances: Vec<Instance>,
    pub(super) balancer: Arc<B>,
    /// Requests in flight through this leaf (counted only when zone-aware is load-aware).
    pub(super) load: Arc<AtomicU32>,
    pub(super) version: Option<Box<str>>,
    pub(super) place: Option<Box<str>>,
}

/// See the module docs.
pub(super) struct Plan<B> {
    /// Unique per plan of a router: the revision its leaves' balancers are given, so that they
    /// rebuild their tables whenever a plan changes a leaf's list (also from the same snapshot:
    /// a new deal, a ramp step).
    pub(super) generation: u64,
    /// True when no instance was usable and every instance is routed over.
    pub(super) panic: bool,
    /// Zone-aware load band, when load-aware (leaf loads are counted then).
    pub(super) load_band: Option<f64>,
    pub(super) versions: FxHashMap<Box<str>, Group>,
    pub(super) any: Group,
    pub(super) leaves: Vec<LeafData<B>>,
}

/// A plan under construction, with what it will hand the next one.
struct Build<'a, B> {
    plan: Plan<B>,
    carry: Carry<B>,
    balancers: Balancers<'a, B>,
}

impl<B> Plan<B> {
    /// A plan of no leaves, for a router that has planned nothing yet.
    pub(super) fn empty() -> Self {
        Plan {
            generation: 0,
            panic: false,
            load_band: None,
            versions: FxHashMap::default(),
            any: Group::default(),
            leaves: Vec::new(),
        }
    }

    /// The plan of `instances` under `rules`, the instances that ramp weighed by `ramp` (their
    /// slow-start factors; empty: none ramps), and what it hands the next plan.
    pub(super) fn build(
        instances: &[Instance],
        ramp: &FxHashMap<String, f64>,
        rules: &Rules,
        balancers: Balancers<'_, B>,
        generation: u64,
    ) -> (Self, Carry<B>) {
        let even = balancers.stand_in;
        let ramped: Option<Vec<Instance>> =
            (!ramp.is_empty()).then(|| instances.iter().map(|i| weighted(i, ramp, even)).collect());
        let instances: &[Instance] = ramped.as_deref().unwrap_or(instances);
        let usable: Vec<&Instance> = instances
            .iter()
            .filter(|i| !rules.skip_unhealthy || i.health.is_usable())
            .collect();
        let panic = usable.is_empty() && !instances.is_empty();
        let base: Vec<&Instance> = if panic {
            instances.iter().collect()
        } else {
            usable
        };
        let zone_aware = &rules.zone_aware;
        let mut build = Build {
            plan: Plan {
                generation,
                panic,
                load_band: (zone_aware.enabled && zone_aware.load_aware)
                    .then_some(zone_aware.load_band),
                ..Plan::empty()
            },
            carry: Carry::default(),
            balancers,
        };
        build.plan.any = build.group(None, &base, rules);
        if rules.version.is_enabled() {
            let mut by_version: FxHashMap<&str, Vec<&Instance>> = FxHashMap::default();
            for i in &base {
                if !i.version.is_empty() {
                    by_version.entry(i.version.as_str()).or_default().push(i);
                }
                for t in &i.tags {
                    if *t != i.version {
                        by_version.entry(t.as_str()).or_default().push(i);
                    }
                }
            }
            let mut names: Vec<&str> = by_version.keys().copied().collect();
            names.sort_unstable();
            for v in names {
                let g = build.group(Some(v), &by_version[v], rules);
                build.plan.versions.insert(v.into(), g);
            }
        }
        (build.plan, build.carry)
    }

    /// The leaf `route` leads to, and the rules that decided.
    #[inline]
    pub(super) fn route(
        &self,
        rules: &Rules,
        route: &Route<'_>,
        rng: &dyn RandomSource,
    ) -> (usize, Decision) {
        let (group, vstep) = rules
            .version
            .choose(route.version, route.key, |v| self.versions.get(v));
        let group = group.unwrap_or(&self.any);
        let (target, gstep) = rules.geo.choose(
            route,
            |z| group.zones.get(z).copied(),
            |r| group.regions.get(r).copied(),
        );
        let (leaf, gstep) = match target {
            Target::Place(id) => match group.spill.get(&id) {
                // Zone-aware: this zone is short of its clients' share (or, load-aware, loaded).
                Some(spill) => match spill.route(unit(rng.next_u64()), self.load_band, |leaf| {
                    f64::from(self.leaves[leaf].load.load(Ordering::Relaxed))
                }) {
                    Some(other) => (other, GeoStep::Spilled),
                    None => (id, gstep),
                },
                None => (id, gstep),
            },
            Target::Any => (group.all, gstep),
        };
        (
            leaf,
            Decision {
                version: vstep,
                geo: gstep,
                panic: self.panic,
            },
        )
    }
}

impl<B> Build<'_, B> {
    /// One version's leaves (`None`: every version): all of them, by zone, by region.
    fn group(&mut self, version: Option<&str>, members: &[&Instance], rules: &Rules) -> Group {
        let geo: &Geo = &rules.geo;
        let v = version.unwrap_or("*");
        let mut g = Group {
            all: self.leaf(format!("{v}|*"), version, None, members),
            ..Group::default()
        };
        if !geo.is_enabled() {
            return g;
        }
        let mut zones: FxHashMap<&str, Vec<&Instance>> = FxHashMap::default();
        let mut regions: FxHashMap<&str, Vec<&Instance>> = FxHashMap::default();
        for i in members {
            let p = geo.place_of(i);
            if let Some(z) = p.zone {
                zones.entry(z).or_default().push(i);
            }
            if let Some(r) = p.region {
                regions.entry(r).or_default().push(i);
            }
        }
        let mut by_region: FxHashMap<&str, Vec<(&str, f64, usize)>> = FxHashMap::default();
        for (z, list) in zones {
            let capacity: f64 = list.iter().map(|i| f64::from(i.effective_weight())).sum();
            let region = list.first().and_then(|i| geo.place_of(i).region);
            let id = self.leaf(format!("{v}|z={z}"), version, Some(z), &list);
            g.zones.insert(z.into(), id);
            if let Some(r) = region {
                by_region.entry(r).or_default().push((z, capacity, id));
            }
        }
        for (r, list) in regions {
            let id = self.leaf(format!("{v}|r={r}"), version, Some(r), &list);
            g.regions.insert(r.into(), id);
        }
        if rules.zone_aware.enabled {
            let leaves = &self.plan.leaves;
            g.spill = rules
                .zone_aware
                .spills(by_region, |id| leaves[id].instances.len());
        }
        g
    }

    /// A leaf of `members`, with the balancer and load counter its key had in the plan before.
    fn leaf(
        &mut self,
        key: String,
        version: Option<&str>,
        place: Option<&str>,
        members: &[&Instance],
    ) -> usize {
        // A ramp's stand-in balancers and the strategy's own are carried over apart.
        let kind = if self.balancers.stand_in { "~" } else { "" };
        let balancer_key = format!("{kind}{key}");
        let previous = self.balancers.previous;
        let balancer = (self.balancers.make)(previous.balancers.get(&balancer_key));
        let load = previous.loads.get(&key).cloned().unwrap_or_default();
        self.carry.balancers.insert(balancer_key, balancer.clone());
        self.carry.loads.insert(key, load.clone());
        self.plan.leaves.push(LeafData {
            instances: members.iter().map(|i| (*i).clone()).collect(),
            balancer,
            load,
            version: version.map(Into::into),
            place: place.map(Into::into),
        });
        self.plan.leaves.len() - 1
    }
}
