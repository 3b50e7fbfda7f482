//! Slow start: an instance that joins, or comes back healthy, ramps up to its full weight.
//!
//! A cold instance (empty caches, a JIT still compiling, a connection pool to fill) that gets its
//! full share at once answers slowly or fails; Envoy's `slow_start_config` (and gRPC's A100
//! proposal) ramp its weight over a window instead:
//!
//! ```text
//! factor(t) = max(min_weight_percent / 100, (t / window) ^ (1 / aggression))
//! ```
//!
//! `aggression` 1 is linear; above 1 the weight rises fast at first, below 1 slowly. The factor
//! scales the instance's weight, so slow start works through the strategies that weigh
//! instances: weighted round robin and weighted random, least connections / least request and
//! P2C (load divided by weight), ring hash and Maglev. Plain `round_robin` and `random` treat
//! instances alike; while something ramps they are replaced by their weighted forms over weights
//! where every instance counts alike but the ramping ones (what Envoy's round robin, which is
//! weighted, does with equal weights), and come back when the ramp ends.
//!
//! The instances a router sees when it starts are taken as warm. Weights change with time, not
//! with membership, so while an instance ramps the router re-plans every `window / 20` (at least
//! every 50 ms); that is one clock read per pick while something ramps, none otherwise.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::instance::Instance;
use crate::util::lock;

/// Slow-start settings (`load_balancer.slow_start`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStartConfig {
    /// How long the ramp lasts.
    pub window: Duration,
    /// The curve: 1 linear, above 1 faster at first (Envoy's default 1).
    pub aggression: f64,
    /// The weight a ramp starts from, in percent of the full weight (Envoy's default 10).
    pub min_weight_percent: f64,
}

impl SlowStartConfig {
    /// A linear ramp over `window` from 10 %.
    pub fn new(window: Duration) -> Self {
        SlowStartConfig {
            window,
            aggression: 1.0,
            min_weight_percent: 10.0,
        }
    }

    /// The weight factor `elapsed` into the ramp: see the module docs.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        let curve = t.powf(1.0 / self.aggression.max(f64::MIN_POSITIVE));
        curve.max(self.min_weight_percent / 100.0).min(1.0)
    }

    /// How often a router re-plans while something ramps.
    pub(super) fn step(&self) -> Duration {
        (self.window / 20).max(Duration::from_millis(50))
    }
}

/// When each usable instance of a router started its ramp.
#[derive(Debug, Default)]
pub(super) struct Ramps {
    since: Mutex<Option<FxHashMap<String, Instant>>>,
}

/// One instance ramping up now: what [`Smart::ramps`](super::Smart::ramps) reports (for a
/// console or a log; picks never read it).
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    /// The instance's id.
    pub id: String,
    /// Its weight factor now, below 1 (see [`SlowStartConfig::factor`]).
    pub factor: f64,
    /// Time left until it has its full weight.
    pub remaining: Duration,
}

/// Scale of the weights while something ramps: enough resolution for a 1 % step of weight 1.
pub(super) const SCALE: u32 = 100;

impl Ramps {
    /// The factors of the instances of `usable` that ramp at `now` (empty when none does), and
    /// forgets the ones that left or turned unusable (they ramp again when they come back).
    pub(super) fn factors(
        &self,
        config: &SlowStartConfig,
        usable: &[&Instance],
        now: Instant,
    ) -> FxHashMap<String, f64> {
        let mut guard = lock(&self.since);
        let first = guard.is_none();
        let since = guard.get_or_insert_with(FxHashMap::default);
        let present: HashSet<&str> = usable.iter().map(|i| i.id.as_str()).collect();
        since.retain(|id, _| present.contains(id.as_str()));
        let warm = now.checked_sub(config.window).unwrap_or(now);
        let mut out = FxHashMap::default();
        for i in usable {
            let start = *since
                .entry(i.id.clone())
                .or_insert(if first { warm } else { now });
            let f = config.factor(now.saturating_duration_since(start));
            if f < 1.0 {
                out.insert(i.id.clone(), f);
            }
        }
        out
    }
}

impl Ramps {
    /// The instances ramping at `now`, by id; reads only (the next plan forgets the ones that
    /// left).
    pub(super) fn ramping(&self, config: &SlowStartConfig, now: Instant) -> Vec<Ramp> {
        let guard = lock(&self.since);
        let Some(since) = guard.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<Ramp> = since
            .iter()
            .filter_map(|(id, start)| {
                let elapsed = now.saturating_duration_since(*start);
                let factor = config.factor(elapsed);
                (factor < 1.0).then(|| Ramp {
                    id: id.clone(),
                    factor,
                    remaining: config.window.saturating_sub(elapsed),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// `instance`'s weight under the ramp `factors` (all weights scaled by [`SCALE`] while anything
/// ramps, so the ratios hold). `even`: every instance of non-zero weight counts as weight 1 (for
/// the strategies that ignore weights).
pub(super) fn weighted(
    instance: &Instance,
    factors: &FxHashMap<String, f64>,
    even: bool,
) -> Instance {
    let mut out = instance.clone();
    let own = instance.effective_weight();
    let own = if even { u32::from(own > 0) } else { own };
    let base = f64::from(own) * f64::from(SCALE);
    let f = factors.get(&instance.id).copied().unwrap_or(1.0);
    out.weight = ((base * f).round() as u32).max(u32::from(own > 0));
    // The weight meta key would win over the field: the scaled field is the weight now.
    out.meta.remove("weight");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_curve() {
        let c = SlowStartConfig::new(Duration::from_secs(10));
        assert_eq!(c.factor(Duration::ZERO), 0.1);
        assert!((c.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(c.factor(Duration::from_secs(10)), 1.0);
        let fast = SlowStartConfig {
            aggression: 2.0,
            ..c
        };
        assert!((fast.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-9);
    }
}

#[cfg(test)]
mod routed {
    use std::time::Duration;

    use std::sync::Arc;

    use super::SlowStartConfig;
    use crate::balance::{Balancer, BalancerConfig, SeededRandom, Strategy};
    use crate::instance::{HealthStatus, Instance};
    use crate::routing::{Route, RoutingConfig, Smart};
    use crate::snapshot::Snapshot;

    fn fleet(n: u16) -> Vec<Instance> {
        (1..=n)
            .map(|p| Instance::new("svc", "10.0.0.1", p).with_health(HealthStatus::Healthy))
            .collect()
    }

    /// The share of picks the instance on port `port` gets over `picks` picks.
    pub(crate) fn share(router: &Smart, snapshot: &Snapshot, port: u16, picks: usize) -> f64 {
        let hits = (0..picks)
            .filter_map(|_| router.pick(snapshot, &Route::default()))
            .filter(|r| r.instance().port == port)
            .count();
        hits as f64 / picks as f64
    }

    /// Four warm instances, a fifth joins at t = 0: over `picks` picks every half second, its
    /// share follows `f / (4 + f)` of Envoy's curve within 10 %, and is full after the window.
    async fn follows_the_curve(router: &Smart, config: SlowStartConfig, picks: usize) {
        let warm = Snapshot::new(fleet(4), 1);
        assert!(router.pick(&warm, &Route::default()).is_some());
        let joined = Snapshot::new(fleet(5), 2);
        for half_seconds in 0..=24u32 {
            // Picks at t re-plan first: the weights are the curve's at t.
            let t = Duration::from_millis(500) * half_seconds;
            let f = config.factor(t);
            let want = f / (4.0 + f);
            let got = share(router, &joined, 5, picks);
            assert!(
                (got - want).abs() <= 0.1 * want,
                "at {t:?}: {got:.4} vs {want:.4}"
            );
            tokio::time::advance(Duration::from_millis(500)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_joining_instance_follows_the_curve() {
        let config = SlowStartConfig::new(Duration::from_secs(10));
        let router = Smart::from_config(&RoutingConfig::default(), || {
            Balancer::new(Strategy::WeightedRoundRobin)
        })
        .slow_start(config);
        follows_the_curve(&router, config, 4_000).await;
        // Warm instances are not ramped: at the start they share evenly.
        let fresh = Smart::from_config(&RoutingConfig::default(), || {
            Balancer::new(Strategy::WeightedRoundRobin)
        })
        .slow_start(config);
        let joined = Snapshot::new(fleet(5), 2);
        assert!((share(&fresh, &joined, 5, 1_000) - 0.2).abs() < 0.01);
    }

    /// `Smart::ramps` tells who ramps, at what factor and for how long, and nothing once the
    /// window is over.
    #[tokio::test(start_paused = true)]
    async fn ramps_report_who_ramps() {
        let config = SlowStartConfig::new(Duration::from_secs(10));
        let router = Smart::from_config(&RoutingConfig::default(), || {
            Balancer::new(Strategy::WeightedRoundRobin)
        })
        .slow_start(config);
        assert!(router.ramps().is_empty(), "no plan yet");
        assert!(
            router
                .pick(&Snapshot::new(fleet(4), 1), &Route::default())
                .is_some()
        );
        assert!(router.ramps().is_empty(), "the first instances are warm");
        let joined = Snapshot::new(fleet(5), 2);
        assert!(router.pick(&joined, &Route::default()).is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        let ramps = router.ramps();
        assert_eq!(ramps.len(), 1, "{ramps:?}");
        assert_eq!(ramps[0].id, joined.instances()[4].id);
        assert!((ramps[0].factor - 0.5).abs() < 1e-9, "{ramps:?}");
        assert_eq!(ramps[0].remaining, Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(router.ramps().is_empty(), "the window is over");
    }

    /// Round robin and random ignore weights; while an instance ramps they are stood in for by
    /// their weighted forms, then come back (the strategy a pick reports says which).
    #[tokio::test(start_paused = true)]
    async fn round_robin_and_random_ramp_through_their_weighted_forms() {
        let config = SlowStartConfig::new(Duration::from_secs(10));
        let routers = |plain: Strategy, weighted: Strategy| {
            let seeded = |strategy| {
                let mut c = BalancerConfig::new(strategy);
                c.rng = Arc::new(SeededRandom::new(11));
                Balancer::with_config(c).expect("valid")
            };
            Smart::from_config(&RoutingConfig::default(), move || seeded(plain))
                .slow_start_as(config, move || seeded(weighted))
        };
        for (plain, weighted, picks) in [
            (Strategy::RoundRobin, Strategy::WeightedRoundRobin, 4_000),
            (Strategy::Random, Strategy::WeightedRandom, 40_000),
        ] {
            let router = routers(plain, weighted);
            follows_the_curve(&router, config, picks).await;
            let joined = Snapshot::new(fleet(5), 2);
            let pick = router.pick(&joined, &Route::default()).expect("a pick");
            assert_eq!(pick.strategy(), plain.as_str(), "back after the ramp");
        }
    }
}
