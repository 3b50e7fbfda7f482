//! Geo routing: keep traffic close to the client.
//!
//! The client's place comes from the request (`X-Client-Region`, `X-Client-Zone`) or is given; a
//! zone alone is enough when the config's `regions` topology lists it (its region is known). An
//! instance's place is its `region` / `zone` metadata (again, a zone alone names its region).
//!
//! Order of preference, each step taken only when the narrower set has no usable instance:
//!
//! 1. the client's zone ([`GeoStep::SameZone`]);
//! 2. the client's region ([`GeoStep::SameRegion`], or [`GeoStep::ZoneToRegion`] when a zone was
//!    asked for and had none);
//! 3. the neighbour regions, in order ([`GeoStep::ToNeighbour`]). By default a region's
//!    neighbours are the other regions of the `regions` block in the order the file lists them
//!    (an `IndexMap` keeps it), so the operator controls the order by writing it;
//!    [`Geo::with_neighbours`] sets another order per region;
//! 4. any region at all, including instances with no region ([`GeoStep::ToAnyRegion`]). The Go sketch
//!    falls back to "all other regions" at once; chi keeps that only as the last resort.

use rustc_hash::FxHashMap;

use super::config::RoutingConfig;
use super::route::{REGION_META, Route, ZONE_META};
use crate::instance::Instance;

/// Which geo rule decided; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GeoStep {
    /// Geo routing is off: every place.
    Disabled,
    /// The request said nothing of its place: every place.
    Unlocated,
    /// Same zone as the client.
    SameZone,
    /// Same region as the client (no zone asked).
    SameRegion,
    /// Fallback: the client's zone had no usable instance; its region.
    ZoneToRegion,
    /// Fallback: the client's region had none; a neighbour region.
    ToNeighbour,
    /// Fallback: no neighbour had any; every place.
    ToAnyRegion,
    /// Zone-aware: the client's zone is short of its share, this request went to another zone
    /// of the region with spare capacity.
    Spilled,
}

impl GeoStep {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            GeoStep::Disabled => "disabled",
            GeoStep::Unlocated => "unlocated",
            GeoStep::SameZone => "same_zone",
            GeoStep::SameRegion => "same_region",
            GeoStep::ZoneToRegion => "zone_to_region",
            GeoStep::ToNeighbour => "to_neighbour",
            GeoStep::ToAnyRegion => "to_any_region",
            GeoStep::Spilled => "spilled",
        }
    }

    /// True for the fallbacks.
    pub fn is_fallback(self) -> bool {
        matches!(
            self,
            GeoStep::ZoneToRegion | GeoStep::ToNeighbour | GeoStep::ToAnyRegion
        )
    }
}

/// Where a client or an instance is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place<'a> {
    /// Region, given or known from the zone.
    pub region: Option<&'a str>,
    /// Zone.
    pub zone: Option<&'a str>,
}

/// What [`Geo::choose`] chose: a zone's set, a region's set, or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<T> {
    Place(T),
    Any,
}

/// Geo routing; see the module docs. Its maps are keyed by names from the config (FxHash: no
/// untrusted keys are stored, and lookups sit on the per-request path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geo {
    enabled: bool,
    /// Configured regions, in file order.
    regions: Vec<String>,
    /// zone -> region, from the topology.
    zone_region: FxHashMap<String, String>,
    /// region -> neighbour regions, in preference order.
    neighbours: FxHashMap<String, Vec<String>>,
}

impl Geo {
    /// Geo routing on, with the topology `regions` (region -> zones, in preference order).
    pub fn new<R, Z>(regions: impl IntoIterator<Item = (R, Vec<Z>)>) -> Self
    where
        R: Into<String>,
        Z: Into<String>,
    {
        let mut order = Vec::new();
        let mut zone_region = FxHashMap::default();
        for (region, zones) in regions {
            let region = region.into();
            for z in zones {
                zone_region.insert(z.into(), region.clone());
            }
            order.push(region);
        }
        let neighbours = order
            .iter()
            .map(|r| {
                let others = order.iter().filter(|o| *o != r).cloned().collect();
                (r.clone(), others)
            })
            .collect();
        Geo {
            enabled: true,
            regions: order,
            zone_region,
            neighbours,
        }
    }

    /// Geo routing off.
    pub fn disabled() -> Self {
        Geo {
            enabled: false,
            ..Self::new(Vec::<(String, Vec<String>)>::new())
        }
    }

    /// From the `routing` block: `enable_geo_routing` and `regions`.
    pub fn from_config(config: &RoutingConfig) -> Self {
        Geo {
            enabled: config.enable_geo_routing,
            ..Self::new(config.regions.clone())
        }
    }

    /// Sets the neighbours of `region`, in preference order (replacing the file order).
    pub fn with_neighbours<S: Into<String>>(
        mut self,
        region: impl Into<String>,
        neighbours: impl IntoIterator<Item = S>,
    ) -> Self {
        let region = region.into();
        let list = neighbours
            .into_iter()
            .map(Into::into)
            .filter(|n: &String| *n != region)
            .collect();
        self.neighbours.insert(region, list);
        self
    }

    /// True when geo routing is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The neighbours of `region` in preference order; for a region the topology does not know,
    /// every configured region.
    pub fn neighbours(&self, region: &str) -> &[String] {
        self.neighbours
            .get(region)
            .map(Vec::as_slice)
            .unwrap_or(&self.regions)
    }

    /// The region the topology puts `zone` in.
    #[inline]
    pub fn region_of_zone(&self, zone: &str) -> Option<&str> {
        self.zone_region.get(zone).map(String::as_str)
    }

    /// Where `instance` is: its `region` / `zone` metadata, a missing region taken from the zone.
    pub fn place_of<'a>(&'a self, instance: &'a Instance) -> Place<'a> {
        let zone = instance.meta(ZONE_META).filter(|z| !z.is_empty());
        let region = instance
            .meta(REGION_META)
            .filter(|r| !r.is_empty())
            .or_else(|| zone.and_then(|z| self.region_of_zone(z)));
        Place { region, zone }
    }

    /// Where the client of `route` is, a missing region taken from the zone.
    #[inline]
    pub fn client<'a>(&'a self, route: &Route<'a>) -> Place<'a> {
        let region = route
            .region
            .or_else(|| route.zone.and_then(|z| self.region_of_zone(z)));
        Place {
            region,
            zone: route.zone,
        }
    }

    /// Applies the rules with lookups telling what a zone and a region have (`None`: no usable
    /// instance there). Returns the chosen lookup result (or [`Target::Any`]) and the rule.
    ///
    /// The client's place is the route's; a missing region is taken from the zone only when the
    /// zone itself has nothing (one lookup less on the common path).
    #[inline]
    pub(crate) fn choose<T>(
        &self,
        route: &Route<'_>,
        zone: impl Fn(&str) -> Option<T>,
        region: impl Fn(&str) -> Option<T>,
    ) -> (Target<T>, GeoStep) {
        if !self.enabled {
            return (Target::Any, GeoStep::Disabled);
        }
        if route.region.is_none() && route.zone.is_none() {
            return (Target::Any, GeoStep::Unlocated);
        }
        if let Some(t) = route.zone.and_then(&zone) {
            return (Target::Place(t), GeoStep::SameZone);
        }
        let client = self.client(route);
        if let Some(r) = client.region {
            if let Some(t) = region(r) {
                let step = if client.zone.is_some() {
                    GeoStep::ZoneToRegion
                } else {
                    GeoStep::SameRegion
                };
                return (Target::Place(t), step);
            }
            for n in self.neighbours(r) {
                if let Some(t) = region(n) {
                    return (Target::Place(t), GeoStep::ToNeighbour);
                }
            }
        }
        (Target::Any, GeoStep::ToAnyRegion)
    }

    /// The instances of `candidates` this route's place selects (all of them are taken as usable:
    /// pass the output of [`Version::narrow`](super::Version::narrow), or filter first), and the
    /// rule that decided. Empty only when `candidates` is. Computes per call; see
    /// [`Smart`](super::Smart) for leaves precomputed once per snapshot.
    pub fn narrow<'i>(
        &self,
        candidates: &[&'i Instance],
        route: &Route<'_>,
    ) -> (Vec<&'i Instance>, GeoStep) {
        let pick = |pred: &dyn Fn(Place<'_>) -> bool| {
            let kept: Vec<&'i Instance> = candidates
                .iter()
                .copied()
                .filter(|i| pred(self.place_of(i)))
                .collect();
            (!kept.is_empty()).then_some(kept)
        };
        let (target, step) = self.choose(
            route,
            |z| pick(&|p| p.zone == Some(z)),
            |r| pick(&|p| p.region == Some(r)),
        );
        match target {
            Target::Place(kept) => (kept, step),
            Target::Any => (candidates.to_vec(), step),
        }
    }

    /// The former name of [`Geo::narrow`].
    #[deprecated(note = "renamed `narrow`: \"subset\" now means deterministic subsetting only")]
    pub fn subset<'i>(
        &self,
        candidates: &[&'i Instance],
        route: &Route<'_>,
    ) -> (Vec<&'i Instance>, GeoStep) {
        self.narrow(candidates, route)
    }
}
