//! Picking an instance for one request: the configured balancer, as one [`Picker`] per service.
//! `chi proxy` and `chi select` share it.

use std::sync::Arc;

use chi_discovery::balance::{
    Balancer, BalancerConfig, ConsistentHashConfig, Request, Strategy, usable_by_health,
};
use chi_discovery::config::Config;
use chi_discovery::{Instance, Snapshot};
use hyper::header::HeaderMap;

use crate::failure::Failure;

/// Whatever a pick holds while the request runs (the balancer's in-flight count).
pub(crate) type Guard = Box<dyn Send>;

/// One pick.
pub(crate) struct Picked {
    pub(crate) instance: Instance,
    pub(crate) guard: Guard,
}

/// What a request asks of the pick.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ask<'a> {
    /// The key of hashing strategies.
    pub(crate) key: Option<&'a [u8]>,
}

impl<'a> Ask<'a> {
    /// From `X-Hash-Key`.
    pub(crate) fn from_headers(headers: &'a HeaderMap) -> Self {
        Ask {
            key: headers.get("x-hash-key").map(|v| v.as_bytes()),
        }
    }
}

/// Picks instances of one service.
pub(crate) trait Picker: Send + Sync + 'static {
    /// Picks for `ask`, avoiding the instances in `tried` (earlier attempts of the same request)
    /// while another one is usable.
    fn pick(&self, snapshot: &Snapshot, ask: &Ask<'_>, tried: &[String]) -> Option<Picked>;

    /// The balancer's strategy name.
    fn strategy(&self) -> &'static str;
}

/// Makes one [`Picker`] per service from the config.
#[derive(Clone)]
pub(crate) struct Pickers {
    balancer: BalancerConfig,
}

impl Pickers {
    /// From `load_balancer` of the config.
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Pickers> {
        Self::with_strategy(config, &config.load_balancer.strategy)
    }

    /// With another strategy than the config's.
    pub(crate) fn with_strategy(config: &Config, strategy: &str) -> anyhow::Result<Pickers> {
        let parsed: Strategy = strategy.parse().map_err(|e: String| {
            Failure::bad_input(format!("strategy {strategy:?}: {e}"))
                .hint("e.g. --strategy round_robin, or load_balancer.strategy in the config")
        })?;
        let lb = &config.load_balancer;
        let mut balancer = BalancerConfig::new(parsed);
        balancer.health_check_enabled = lb.health_check_enabled;
        balancer.consistent_hash = ConsistentHashConfig {
            partition_count: lb.consistent_hash.partition_count,
            replication_factor: lb.consistent_hash.replication_factor,
            load: lb.consistent_hash.load,
        };
        balancer
            .validate()
            .map_err(|e| Failure::bad_input(format!("service_discovery.load_balancer.{e}")))?;
        Ok(Pickers { balancer })
    }

    /// A picker for one service.
    pub(crate) fn make(&self) -> Arc<dyn Picker> {
        let balancer = Balancer::with_config(self.balancer.clone())
            .unwrap_or_else(|_| Balancer::new(self.balancer.strategy));
        Arc::new(Balanced {
            balancer,
            health: self.balancer.health_check_enabled,
        })
    }
}

/// The balancer over the whole instance list.
struct Balanced {
    balancer: Balancer,
    health: bool,
}

impl Picker for Balanced {
    fn pick(&self, snapshot: &Snapshot, ask: &Ask<'_>, tried: &[String]) -> Option<Picked> {
        let health = self.health;
        let usable = move |i: &Instance| (!health || usable_by_health(i)) && !tried.contains(&i.id);
        let request = Request {
            key: ask.key,
            usable: &usable,
        };
        let mut pick = self.balancer.pick_with(snapshot, &request)?;
        let guard: Guard = Box::new(pick.take_in_flight());
        Some(Picked {
            instance: pick.instance().clone(),
            guard,
        })
    }

    fn strategy(&self) -> &'static str {
        self.balancer.strategy().as_str()
    }
}
