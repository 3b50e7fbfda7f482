//! One router per service, all from the config's `load_balancer` and `routing` blocks.
//!
//! A [`Smart`] router holds per-service state (its plan, one balancer per routed subset, their
//! load counters), so each service needs its own; [`Routers`] is the recipe they are made from,
//! checked once. `chi select`, `chi proxy`, the HTTP helper and [`Chi`](crate::Chi) all build
//! their routers here, so `health_check_enabled`, the strategy and the header of the hash key
//! mean the same everywhere.

use crate::balance::{Balancer, BalancerConfig, LoadReports, Strategy};
use crate::config::Config;
use crate::error::{Error, Result};

use std::sync::Arc;

use super::{Headers, Route, RoutingConfig, SlowStartConfig, Smart, SubsetSource, ZoneAwareConfig};

/// The recipe of every service's router; see the module docs.
#[derive(Debug, Clone)]
pub struct Routers {
    balancer: BalancerConfig,
    routing: RoutingConfig,
    zone_aware: ZoneAwareConfig,
    subset: Option<Arc<SubsetSource>>,
    slow_start: Option<SlowStartConfig>,
    /// The header whose value is a request's hash key.
    key_header: http::HeaderName,
}

impl Routers {
    /// From `load_balancer` and `routing` of `config`.
    pub fn from_config(config: &Config) -> Result<Routers> {
        Self::with_strategy(config, config.load_balancer.strategy)
    }

    /// As [`Routers::from_config`] with another strategy than the config's.
    pub fn with_strategy(config: &Config, strategy: Strategy) -> Result<Routers> {
        let lb = &config.load_balancer;
        let mut balancer = BalancerConfig::new(strategy);
        balancer.health_check_enabled = lb.health_check_enabled;
        balancer.consistent_hash = lb.consistent_hash;
        balancer.orca = lb.orca;
        balancer.validate().map_err(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("", e.as_str()));
            Error::config(
                format!("service_discovery.load_balancer.{field}"),
                message.to_owned(),
            )
        })?;
        Ok(Routers {
            balancer,
            routing: config.routing.clone(),
            zone_aware: lb.zone_aware.clone(),
            slow_start: lb.slow_start,
            key_header: lb.hash_key_header.clone(),
            subset: match (lb.subset_size, &config.registration) {
                (Some(k), Some(me)) => Some(Arc::new(SubsetSource::new(me.instance_id(), k))),
                _ => None,
            },
        })
    }

    /// A new router for one service: version and region routing, then one balancer per routed
    /// subset; unhealthy instances skipped unless `health_check_enabled` is `false`.
    pub fn router(&self) -> Smart<Balancer> {
        let mut config = self.balancer.clone();
        // One store of load reports per service, shared by the balancers of its subsets.
        if config.strategy.uses_load_reports() {
            config.load_reports = Some(Arc::new(reports(&config)));
        }
        let skip_unhealthy = config.health_check_enabled;
        let router = Smart::from_config(&self.routing, move || {
            Balancer::with_config(config.clone()).unwrap_or_else(|_| Balancer::new(config.strategy))
        })
        .skip_unhealthy(skip_unhealthy)
        .zone_aware(self.zone_aware.clone());
        // The strategies that ignore weights ramp through their weighted forms.
        let stand_in = match self.balancer.strategy {
            Strategy::RoundRobin => Some(Strategy::WeightedRoundRobin),
            Strategy::Random => Some(Strategy::WeightedRandom),
            _ => None,
        };
        let router = match (self.slow_start, stand_in) {
            (Some(s), Some(weighted)) => {
                let config = BalancerConfig {
                    strategy: weighted,
                    ..self.balancer.clone()
                };
                router.slow_start_as(s, move || {
                    Balancer::with_config(config.clone())
                        .unwrap_or_else(|_| Balancer::new(weighted))
                })
            }
            (Some(s), None) => router.slow_start(s),
            (None, _) => router,
        };
        match &self.subset {
            Some(s) => router.subset(s.clone()),
            None => router,
        }
    }

    /// The clients of deterministic subsetting (`load_balancer.subset_size`), to be kept up to
    /// date with this service's instances ([`Chi`](crate::Chi) does).
    pub fn subset_source(&self) -> Option<&Arc<SubsetSource>> {
        self.subset.as_ref()
    }

    /// What a request with `headers` asks of routing: the routing headers
    /// ([`Route::from_headers`]) and its hash key from the configured header
    /// (`load_balancer.hash_key_header`, default `X-Hash-Key`).
    pub fn route_of<'h, H: Headers + ?Sized>(&self, headers: &'h H) -> Route<'h> {
        Route::from_headers_keyed(headers, self.key_header.as_str())
    }

    /// The header whose value is a request's hash key (lowercase).
    pub fn hash_key_header(&self) -> &http::HeaderName {
        &self.key_header
    }

    /// The balancers' strategy.
    pub fn strategy(&self) -> Strategy {
        self.balancer.strategy
    }

    /// True when routers skip instances known to be unhealthy.
    pub fn health_check_enabled(&self) -> bool {
        self.balancer.health_check_enabled
    }
}

/// A service's store of load reports; with `orca.out_of_band` it follows the instances its
/// balancers pick from over gRPC (features `orca` and `grpc`; without them only reports handed
/// in by the caller count).
fn reports(config: &BalancerConfig) -> LoadReports {
    let reports = LoadReports::new(config.orca);
    #[cfg(all(feature = "orca", feature = "grpc"))]
    if config.orca.out_of_band {
        return reports.out_of_band(Arc::new(crate::orca::oob::Streams::new(
            config.orca.oob_reporting_period,
        )));
    }
    reports
}
