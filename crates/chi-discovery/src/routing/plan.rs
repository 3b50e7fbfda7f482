//! The smart router's plan: a service's usable instances grouped by version and place, each
//! group a leaf with its own balancer, built once per snapshot revision (see [`super::Smart`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustc_hash::FxHashMap;

use super::geo::Target;
use super::slow_start::weighted;
use super::spill::{ZoneAwareConfig, ZoneSpill};
use super::{Decision, Geo, GeoStep, Route, Version};
use crate::balance::RandomSource;
use crate::instance::Instance;

/// Builds a leaf's stage from the previous plan's stage of the same leaf.
pub(super) type MakeLeaf<B> = dyn Fn(Option<&Arc<B>>) -> Arc<B> + Send + Sync;

/// A uniform draw in `[0, 1)` from 64 random bits (the top 53).
#[inline]
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// One version's usable instances, by place.
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

pub(super) struct Plan<B> {
    /// False only for the placeholder a router starts with.
    pub(super) built: bool,
    pub(super) revision: u64,
    /// Unique per plan of a router: the revision its leaves' balancers are given, so that they
    /// rebuild their tables whenever a plan changes a leaf's list, also from the same snapshot
    /// (a new subset deal).
    pub(super) generation: u64,
    /// Zone-aware load band, when load-aware (leaf loads are counted then).
    pub(super) load_band: Option<f64>,
    /// Leaf key -> in-flight counter, carried over to the next plan as the balancers are.
    pub(super) loads: FxHashMap<String, Arc<AtomicU32>>,
    /// Slow start: when to plan again while something ramps.
    pub(super) ramp_until: Option<tokio::time::Instant>,
    /// The [`SubsetSource`] version the plan was dealt from.
    pub(super) subset_version: u64,
    /// Built with [`Rules::even`]: its balancers are the ramp's stand-ins.
    pub(super) even: bool,
    pub(super) panic: bool,
    pub(super) versions: FxHashMap<Box<str>, Group>,
    pub(super) any: Group,
    pub(super) leaves: Vec<LeafData<B>>,
    /// Leaf key -> balancer, to carry balancers over to the next plan.
    pub(super) balancers: FxHashMap<String, Arc<B>>,
}

/// The router's rules a plan is built with.
#[derive(Clone, Copy)]
pub(super) struct Rules<'a> {
    pub(super) version: &'a Version,
    pub(super) geo: &'a Geo,
    pub(super) skip_unhealthy: bool,
    pub(super) zone_aware: &'a ZoneAwareConfig,
    /// Slow start: the weight factors of the instances that ramp (empty: none does).
    pub(super) ramp: &'a FxHashMap<String, f64>,
    /// The ramp is balanced by a weighted stand-in of a strategy that ignores weights: every
    /// instance weighs alike but the ramping ones, and the stand-in balancers are kept apart.
    pub(super) even: bool,
}

impl<B> Plan<B> {
    pub(super) fn placeholder() -> Self {
        Plan {
            built: false,
            revision: 0,
            generation: 0,
            ramp_until: None,
            load_band: None,
            loads: FxHashMap::default(),
            subset_version: 0,
            even: false,
            panic: false,
            versions: FxHashMap::default(),
            any: Group::default(),
            leaves: Vec::new(),
            balancers: FxHashMap::default(),
        }
    }

    pub(super) fn build(
        instances: &[Instance],
        revision: u64,
        rules: &Rules<'_>,
        previous: Option<&Plan<B>>,
        make: &MakeLeaf<B>,
    ) -> Self {
        let Rules {
            version,
            geo,
            skip_unhealthy,
            zone_aware,
            ramp,
            even,
        } = *rules;
        let ramped: Option<Vec<Instance>> =
            (!ramp.is_empty()).then(|| instances.iter().map(|i| weighted(i, ramp, even)).collect());
        let instances: &[Instance] = ramped.as_deref().unwrap_or(instances);
        let usable: Vec<&Instance> = instances
            .iter()
            .filter(|i| !skip_unhealthy || i.health.is_usable())
            .collect();
        let panic = usable.is_empty() && !instances.is_empty();
        let base: Vec<&Instance> = if panic {
            instances.iter().collect()
        } else {
            usable
        };
        let mut plan = Plan {
            built: true,
            revision,
            generation: 0,
            ramp_until: None,
            load_band: None,
            loads: FxHashMap::default(),
            subset_version: 0,
            even,
            panic,
            versions: FxHashMap::default(),
            any: Group::default(),
            leaves: Vec::new(),
            balancers: FxHashMap::default(),
        };
        plan.load_band =
            (zone_aware.enabled && zone_aware.load_aware).then_some(zone_aware.load_band);
        plan.any = plan.group(None, &base, geo, previous, make, zone_aware);
        if version.is_enabled() {
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
                let members = &by_version[v];
                let g = plan.group(Some(v), members, geo, previous, make, zone_aware);
                plan.versions.insert(v.into(), g);
            }
        }
        plan
    }

    fn group(
        &mut self,
        version: Option<&str>,
        members: &[&Instance],
        geo: &Geo,
        previous: Option<&Plan<B>>,
        make: &MakeLeaf<B>,
        zone_aware: &ZoneAwareConfig,
    ) -> Group {
        let v = version.unwrap_or("*");
        let mut g = Group {
            all: self.leaf(format!("{v}|*"), version, None, members, previous, make),
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
            let id = self.leaf(
                format!("{v}|z={z}"),
                version,
                Some(z),
                &list,
                previous,
                make,
            );
            g.zones.insert(z.into(), id);
            if let Some(r) = region {
                by_region.entry(r).or_default().push((z, capacity, id));
            }
        }
        for (r, list) in regions {
            let id = self.leaf(
                format!("{v}|r={r}"),
                version,
                Some(r),
                &list,
                previous,
                make,
            );
            g.regions.insert(r.into(), id);
        }
        if zone_aware.enabled {
            g.spill = zone_aware.spills(by_region, |id| self.leaves[id].instances.len());
        }
        g
    }

    fn leaf(
        &mut self,
        key: String,
        version: Option<&str>,
        place: Option<&str>,
        members: &[&Instance],
        previous: Option<&Plan<B>>,
        make: &MakeLeaf<B>,
    ) -> usize {
        // A ramp's stand-in balancers and the strategy's own are carried over apart.
        let kind = if self.even { "~" } else { "" };
        let balancer_key = format!("{kind}{key}");
        let balancer = make(previous.and_then(|p| p.balancers.get(&balancer_key)));
        let load = previous
            .and_then(|p| p.loads.get(&key).cloned())
            .unwrap_or_default();
        self.balancers.insert(balancer_key, balancer.clone());
        self.loads.insert(key, load.clone());
        self.leaves.push(LeafData {
            instances: members.iter().map(|i| (*i).clone()).collect(),
            balancer,
            load,
            version: version.map(Into::into),
            place: place.map(Into::into),
        });
        self.leaves.len() - 1
    }

    #[inline]
    pub(super) fn route(
        &self,
        version: &Version,
        geo: &Geo,
        route: &Route<'_>,
        rng: &dyn RandomSource,
    ) -> (usize, Decision) {
        let (group, vstep) = version.choose(route.version, route.key, |v| self.versions.get(v));
        let group = group.unwrap_or(&self.any);
        let (target, gstep) = geo.choose(
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
