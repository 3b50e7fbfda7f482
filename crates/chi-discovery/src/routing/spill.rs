//! Zone-aware balancing: stay in the client's zone while it can take the client's share, spill
//! the shortfall to the other zones of the region in proportion to their spare capacity.
//!
//! Envoy's zone-aware routing (`LoadBalancerBase::regenerateLocalityRoutingStructures`): with
//! `local[z]` the share of the *clients* in zone `z` and `upstream[z]` the share of the
//! *instances* (capacity) there,
//!
//! - if `upstream[me] >= local[me]`, every request stays in the zone (no cross-zone traffic at
//!   all when each zone can take its own clients);
//! - otherwise a request stays with probability `upstream[me] / local[me]`, and the rest goes to
//!   the zones with spare capacity `upstream[z] - local[z] > 0`, in proportion to it.
//!
//! Every zone then receives exactly its capacity's share of the region's traffic: the hottest
//! instance carries the mean load, and the cross-zone traffic is the capacity shortfall, no more.
//! Below `min_instances` instances in the region, plain zone affinity applies (Envoy's
//! `min_cluster_size`: with a handful of instances the shares are too coarse to matter).
//!
//! The client shares default to an even spread over the region's zones that have instances
//! (the usual deployment, a client per zone in equal numbers); [`ZoneAwareConfig::clients`] takes the
//! real spread (the instances of the calling service per zone, as Envoy reads its local
//! cluster). Everything is computed when membership changes; a pick draws one random number.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

/// Zone-aware settings (`load_balancer.zone_aware`).
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneAwareConfig {
    /// On or off (default off: plain zone affinity).
    pub enabled: bool,
    /// Below this many instances in a region, stay in the zone (Envoy's `min_cluster_size`, 6).
    pub min_instances: usize,
    /// Clients per zone, when known (default: an even spread over the zones with instances).
    pub clients: BTreeMap<String, f64>,
    /// Load-aware (Linkerd's HAZL): spill further while the zone's requests in flight per
    /// instance exceed the region's by more than `load_band`, and come back as they fall.
    pub load_aware: bool,
    /// How far above the region's in-flight load per instance a zone may run before it spills
    /// (default 0.25: 25 %).
    pub load_band: f64,
}

impl Default for ZoneAwareConfig {
    /// Off, with Envoy's default minimum of 6 instances for when it is turned on.
    fn default() -> Self {
        ZoneAwareConfig {
            enabled: false,
            min_instances: 6,
            clients: BTreeMap::new(),
            load_aware: false,
            load_band: 0.25,
        }
    }
}

impl ZoneAwareConfig {
    /// On, with Envoy's default minimum of 6 instances.
    pub fn enabled() -> Self {
        ZoneAwareConfig {
            enabled: true,
            ..Self::default()
        }
    }

    /// The spills of a routing group: `zones` are `(zone, capacity, leaf)` by region, `size`
    /// tells a leaf's instance count. Keyed by the leaf of each zone that spills.
    pub(crate) fn spills<'a>(
        &self,
        zones: impl IntoIterator<Item = (&'a str, Vec<(&'a str, f64, usize)>)>,
        size: impl Fn(usize) -> usize,
    ) -> FxHashMap<usize, ZoneSpill> {
        let mut out = FxHashMap::default();
        for (_, mut zs) in zones {
            zs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let sizes: Vec<f64> = zs.iter().map(|z| size(z.2) as f64).collect();
            let instances: f64 = sizes.iter().sum();
            if zs.len() < 2 || instances < self.min_instances as f64 {
                continue;
            }
            let capacity: Vec<f64> = zs.iter().map(|z| z.1).collect();
            let clients: Vec<f64> = zs
                .iter()
                .map(|z| self.clients.get(z.0).copied().unwrap_or(1.0))
                .collect();
            let leaves: Vec<usize> = zs.iter().map(|z| z.2).collect();
            for (at, spill) in Spill::plan(&capacity, &clients).into_iter().enumerate() {
                // Load-aware, every zone may spill: the route weighs the loads per request.
                if spill.stay < 1.0 || self.load_aware {
                    let zone = ZoneSpill {
                        spill,
                        leaves: leaves.clone(),
                        at,
                        sizes: sizes.clone(),
                        instances,
                    };
                    out.insert(leaves[at], zone);
                }
            }
        }
        out
    }
}

/// One zone's [`Spill`] with its region, as a routing plan keeps it: everything that is fixed
/// until membership changes, so that a load-aware pick only reads the zones' in-flight counters.
#[derive(Debug, Clone)]
pub(crate) struct ZoneSpill {
    spill: Spill,
    /// The leaves of the region's zones, in the order [`Spill::to`] indexes.
    leaves: Vec<usize>,
    /// This zone's position in `leaves`.
    at: usize,
    /// Instances per zone, and in the region.
    sizes: Vec<f64>,
    instances: f64,
}

impl ZoneSpill {
    /// Where a request of this zone goes with the uniform draw `u`: `None` to stay, or the leaf
    /// it spills to. With `band` (load-aware), `load(leaf)` is a zone's requests in flight: the
    /// stay share is cut while this zone runs above the region by more than the band, and that
    /// extra spill goes to the other zones by their room, `n / (1 + load per instance)`.
    #[inline]
    pub(crate) fn route(
        &self,
        u: f64,
        band: Option<f64>,
        load: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let Some(band) = band else {
            return self.spill.choose(u).map(|z| self.leaves[z]);
        };
        let n = self.leaves.len();
        let load_of = |z: usize| load(self.leaves[z]);
        let total_load: f64 = (0..n).map(load_of).sum();
        let stay = self.spill.stay_within(
            load_of(self.at),
            self.sizes[self.at],
            total_load,
            self.instances,
            band,
        );
        if u < stay {
            return None;
        }
        if u >= self.spill.stay {
            return self.spill.choose(u).map(|z| self.leaves[z]);
        }
        let room = |z: usize| {
            let size = self.sizes[z];
            if z == self.at || size <= 0.0 {
                0.0
            } else {
                size / (1.0 + load_of(z) / size)
            }
        };
        let total: f64 = (0..n).map(room).sum();
        if total <= 0.0 {
            return None;
        }
        // The counters move between the two passes: past the end, the last zone with room.
        let mut v = (u - stay) / (self.spill.stay - stay) * total;
        let mut last = None;
        for z in 0..n {
            let r = room(z);
            if r > 0.0 {
                if v < r {
                    return Some(self.leaves[z]);
                }
                last = Some(self.leaves[z]);
            }
            v -= r;
        }
        last
    }
}

/// Where the requests of one zone's clients go: the probability to stay, and the cumulative
/// probabilities of the other zones (as indices into the region's zone list).
#[derive(Debug, Clone, PartialEq)]
pub struct Spill {
    /// Probability that a request stays in the client's zone.
    pub stay: f64,
    /// `(cumulative probability, zone index)` of the other zones, for the requests that leave.
    pub to: Vec<(f64, usize)>,
}

impl Spill {
    /// The spill of every zone of a region: `capacity[z]` (instances or weights) and
    /// `clients[z]` (clients; any scale). Zones without capacity get no traffic.
    pub fn plan(capacity: &[f64], clients: &[f64]) -> Vec<Spill> {
        let cap_total: f64 = capacity.iter().sum();
        let cli_total: f64 = clients.iter().sum();
        if cap_total <= 0.0 || cli_total <= 0.0 {
            return capacity.iter().map(|_| Spill::stay()).collect();
        }
        let upstream: Vec<f64> = capacity.iter().map(|c| c / cap_total).collect();
        let local: Vec<f64> = clients.iter().map(|c| c / cli_total).collect();
        let spare: Vec<f64> = upstream
            .iter()
            .zip(&local)
            .map(|(u, l)| (u - l).max(0.0))
            .collect();
        (0..capacity.len())
            .map(|me| {
                if local[me] <= 0.0 || upstream[me] >= local[me] {
                    return Spill::stay();
                }
                let stay = upstream[me] / local[me];
                let others: f64 = spare
                    .iter()
                    .enumerate()
                    .filter(|&(z, _)| z != me)
                    .map(|(_, s)| s)
                    .sum();
                if others <= 0.0 {
                    return Spill::stay();
                }
                let mut acc = 0.0;
                let to = spare
                    .iter()
                    .enumerate()
                    .filter(|&(z, s)| z != me && *s > 0.0)
                    .map(|(z, s)| {
                        acc += s / others;
                        (acc, z)
                    })
                    .collect();
                Spill { stay, to }
            })
            .collect()
    }

    /// No spill: everything stays.
    pub fn stay() -> Spill {
        Spill {
            stay: 1.0,
            to: Vec::new(),
        }
    }

    /// Load-aware: the share of this zone's requests that may stay given the requests in flight
    /// (`mine` over this zone's `size` instances, `total_load` over the region's `instances`):
    /// the capacity share, cut down in proportion while the zone runs more than `band` above
    /// the region's load per instance.
    pub fn stay_within(
        &self,
        mine: f64,
        size: f64,
        total_load: f64,
        instances: f64,
        band: f64,
    ) -> f64 {
        if total_load <= 0.0 || instances <= 0.0 || size <= 0.0 {
            return self.stay;
        }
        let limit = (1.0 + band) * total_load / instances;
        let per = mine / size;
        if per <= limit {
            self.stay
        } else {
            self.stay * limit / per
        }
    }

    /// Where a request with the uniform draw `u` in `[0, 1)` goes: `None` to stay, or the index
    /// of the zone it spills to.
    #[inline]
    pub fn choose(&self, u: f64) -> Option<usize> {
        if u < self.stay {
            return None;
        }
        let v = (u - self.stay) / (1.0 - self.stay);
        self.to
            .iter()
            .find(|(cum, _)| v < *cum)
            .or(self.to.last())
            .map(|&(_, z)| z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 zones with 2, 5 and 8 instances, clients spread evenly: zone a keeps 40 % of its
    /// requests and sends the rest to zone c (the only one with spare capacity); b and c stay.
    #[test]
    fn the_shortfall_spills_to_spare_capacity_only() {
        let s = Spill::plan(&[2.0, 5.0, 8.0], &[1.0, 1.0, 1.0]);
        assert!((s[0].stay - 0.4).abs() < 1e-9, "{:?}", s[0]);
        assert_eq!(s[0].to.len(), 1);
        assert_eq!(s[0].to[0].1, 2);
        assert_eq!(s[1], Spill::stay());
        assert_eq!(s[2], Spill::stay());
        assert_eq!(s[0].choose(0.39), None);
        assert_eq!(s[0].choose(0.41), Some(2));
    }

    #[test]
    fn zones_that_can_take_their_clients_never_spill() {
        for s in Spill::plan(&[3.0, 3.0, 3.0], &[1.0, 1.0, 1.0]) {
            assert_eq!(s, Spill::stay());
        }
    }

    #[test]
    fn degenerate_inputs_stay() {
        assert!(Spill::plan(&[], &[]).is_empty());
        assert_eq!(
            Spill::plan(&[0.0, 0.0], &[1.0, 1.0]),
            vec![Spill::stay(); 2]
        );
        assert_eq!(
            Spill::plan(&[1.0, 1.0], &[0.0, 0.0]),
            vec![Spill::stay(); 2]
        );
        // A zone with clients and no instances is not this function's case (geo falls back).
        let s = Spill::plan(&[0.0, 4.0], &[1.0, 1.0]);
        assert_eq!(s[0].stay, 0.0);
        assert_eq!(s[0].choose(0.5), Some(1));
    }
}

#[cfg(test)]
mod routed {
    use std::collections::HashMap;

    use super::*;
    use crate::balance::{Balancer, Strategy};
    use crate::instance::{HealthStatus, Instance};
    use crate::routing::{GeoStep, Route, RoutingConfig, Smart};
    use crate::snapshot::Snapshot;

    /// Zones a, b, c of one region with 2, 5 and 8 instances; clients spread evenly. Returns
    /// (requests per instance id, cross-zone requests) over `n` requests per zone.
    pub(crate) fn run(zone_aware: bool, n: usize) -> (HashMap<String, usize>, usize) {
        let mut instances = Vec::new();
        for (zone, count) in [("r-a", 2), ("r-b", 5), ("r-c", 8)] {
            for i in 0..count {
                instances.push(
                    Instance::new("svc", format!("10.0.{zone}"), 8000 + i)
                        .with_id(format!("{zone}-{i}"))
                        .with_meta("region", "r")
                        .with_meta("zone", zone)
                        .with_health(HealthStatus::Healthy),
                );
            }
        }
        let snapshot = Snapshot::new(instances, 1);
        let mut routing = RoutingConfig {
            enable_geo_routing: true,
            ..RoutingConfig::default()
        };
        routing
            .regions
            .insert("r".into(), vec!["r-a".into(), "r-b".into(), "r-c".into()]);
        let mut router = Smart::from_config(&routing, || Balancer::new(Strategy::RoundRobin));
        if zone_aware {
            router = router.zone_aware(ZoneAwareConfig::enabled());
        }
        let mut load: HashMap<String, usize> = HashMap::new();
        let mut cross = 0;
        for zone in ["r-a", "r-b", "r-c"] {
            let route = Route {
                zone: Some(zone),
                ..Route::default()
            };
            for _ in 0..n {
                let routed = router.pick(&snapshot, &route).expect("pick");
                let picked = routed.instance();
                if picked.meta("zone") != Some(zone) {
                    cross += 1;
                    assert_eq!(routed.decision().geo, GeoStep::Spilled);
                }
                *load.entry(picked.id.clone()).or_default() += 1;
            }
        }
        (load, cross)
    }

    #[test]
    fn smart_spills_the_shortfall_and_evens_the_load() {
        let n = 15_000;
        let (load, cross) = run(true, n);
        let mean = (3 * n) as f64 / 15.0;
        let hottest = load.values().copied().max().unwrap_or(0) as f64;
        let cross_share = cross as f64 / (3 * n) as f64;
        // The shortfall: zone a's clients are 1/3 of the traffic, its capacity 2/15: 0.2.
        assert!((cross_share - 0.2).abs() < 0.02, "cross-zone {cross_share}");
        assert!(hottest / mean < 1.1, "hottest {hottest} vs mean {mean}");

        // Plain zone affinity: no cross-zone traffic, zone a's instances at 2.5x the mean.
        let (load, cross) = run(false, n);
        assert_eq!(cross, 0);
        let hottest = load.values().copied().max().unwrap_or(0) as f64;
        assert!(hottest / mean > 2.4, "hottest {hottest} vs mean {mean}");
    }
}

#[cfg(test)]
mod load_aware {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::ZoneAwareConfig;
    use crate::balance::{Balancer, SeededRandom, Strategy};
    use crate::instance::{HealthStatus, Instance};
    use crate::routing::{Route, Routed, RoutingConfig, Smart};
    use crate::snapshot::Snapshot;

    /// Three zones of 5 instances, 10 requests per tick from each zone's clients. Requests served
    /// in zone a take `slow` ticks while it is slow, 2 otherwise. Returns zone a's cross-zone
    /// share over ticks `from..to` of each phase: (slow, recovered).
    pub(crate) fn run(load_aware: bool) -> (f64, f64) {
        let zones = ["z-a", "z-b", "z-c"];
        let mut instances = Vec::new();
        for zone in zones {
            for i in 0..5u16 {
                instances.push(
                    Instance::new("svc", format!("10.{zone}"), 8000 + i)
                        .with_meta("region", "r")
                        .with_meta("zone", zone)
                        .with_health(HealthStatus::Healthy),
                );
            }
        }
        let snapshot = Snapshot::new(instances, 1);
        let mut routing = RoutingConfig {
            enable_geo_routing: true,
            ..RoutingConfig::default()
        };
        routing
            .regions
            .insert("r".into(), zones.iter().map(|z| z.to_string()).collect());
        let router = Smart::from_config(&routing, || Balancer::new(Strategy::RoundRobin))
            .zone_aware(ZoneAwareConfig {
                load_aware,
                ..ZoneAwareConfig::enabled()
            })
            .zone_rng(Arc::new(SeededRandom::new(7)));
        let mut held: VecDeque<(u32, Routed)> = VecDeque::new();
        let (mut slow_cross, mut slow_total, mut back_cross, mut back_total) = (0, 0, 0, 0);
        for tick in 0..400u32 {
            held.retain(|(until, _)| *until > tick);
            let slow = tick < 200;
            for zone in zones {
                let route = Route {
                    zone: Some(zone),
                    ..Route::default()
                };
                for _ in 0..10 {
                    let Some(r) = router.pick(&snapshot, &route) else {
                        continue;
                    };
                    let served_in = r.instance().meta("zone").unwrap_or_default().to_owned();
                    if zone == "z-a" && tick % 200 >= 100 {
                        let cross = usize::from(served_in != zone);
                        if slow {
                            slow_cross += cross;
                            slow_total += 1;
                        } else {
                            back_cross += cross;
                            back_total += 1;
                        }
                    }
                    let ticks = if slow && served_in == "z-a" { 6 } else { 2 };
                    held.push_back((tick + ticks, r));
                }
            }
        }
        (
            slow_cross as f64 / slow_total.max(1) as f64,
            back_cross as f64 / back_total.max(1) as f64,
        )
    }

    #[test]
    fn a_loaded_zone_spills_and_comes_back() {
        let (slow, back) = run(true);
        println!(
            "load-aware, zone a 3x slower: {:.1} % of its requests cross; recovered: {:.1} %",
            100.0 * slow,
            100.0 * back
        );
        assert!(
            slow > 0.2,
            "a slow zone keeps {:.0} % home",
            100.0 * (1.0 - slow)
        );
        assert!(
            back < 0.05,
            "after recovery {:.1} % still crosses",
            100.0 * back
        );
        // Without load awareness the zones have the same capacity: nothing crosses.
        assert_eq!(run(false), (0.0, 0.0));
    }
}
