//! Picking an instance for one request: the configured routing (version, then zone / region) and
//! balancer, as one [`Smart`] router per service, and the retry rule of the proxy (an attempt
//! after a failed one avoids the instances already tried). `chi proxy` and `chi select` share it,
//! so a preview with `chi select` shows what the proxy does.

use chi_discovery::balance::{Balancer, LoadReports, Strategy, usable_by_health};
use chi_discovery::config::Config;
use chi_discovery::routing::{
    REGION_HEADER, Route, Routed, Routers, Smart, Usable, VERSION_HEADER, ZONE_HEADER,
};
use chi_discovery::{Instance, Snapshot};
use hyper::header::{HeaderMap, HeaderName};

use crate::failure::Failure;

/// One pick. It borrows the instance from the routed subset or the snapshot (no copy of the
/// instance per request) and holds the balancer's in-flight count until it is dropped.
pub(crate) enum Picked {
    /// The balancer's pick in the routed subset.
    Routed(Routed<Balancer>),
    /// A fallback of a retry: another usable instance of the snapshot, by index.
    Other(Snapshot, usize),
}

impl Picked {
    /// The instance to call.
    pub(crate) fn instance(&self) -> &Instance {
        match self {
            Picked::Routed(r) => r.instance(),
            Picked::Other(s, i) => &s.instances()[*i],
        }
    }

    /// Where the instance's load reports go (`orca_weighted_round_robin`; none for a retry's
    /// fallback pick, which no balancer made).
    pub(crate) fn load_reports(&self) -> Option<&std::sync::Arc<LoadReports>> {
        match self {
            Picked::Routed(r) => r.load_reports(),
            Picked::Other(..) => None,
        }
    }
}

/// What a request asks of routing: the routing headers, and the value of `key_header` (the
/// config's `load_balancer.hash_key_header`, `X-Hash-Key` by default) as the key of hashing
/// strategies; read as [`Routers::route_of`] reads it.
pub(crate) fn route_of<'h>(headers: &'h HeaderMap, key_header: &HeaderName) -> Route<'h> {
    // Most requests carry none of them: one pass over the names instead of four lookups.
    let asks = headers.keys().any(|k| {
        matches!(k.as_str(), VERSION_HEADER | REGION_HEADER | ZONE_HEADER) || k == key_header
    });
    if !asks {
        return Route::default();
    }
    Route::from_headers_keyed(headers, key_header.as_str())
}

/// The routers of `config` (the library's [`Routers`]), with a config mistake as bad input.
pub(crate) fn routers(config: &Config) -> anyhow::Result<Routers> {
    Routers::from_config(config).map_err(|e| Failure::bad_input(e.to_string()).into())
}

/// As [`routers`] with another strategy than the config's (`--strategy`).
pub(crate) fn routers_with_strategy(config: &Config, strategy: &str) -> anyhow::Result<Routers> {
    let parsed: Strategy = strategy.parse().map_err(|e: String| {
        Failure::bad_input(format!("strategy {strategy:?}: {e}"))
            .hint("e.g. --strategy round_robin, or load_balancer.strategy in the config")
    })?;
    Routers::with_strategy(config, parsed).map_err(|e| Failure::bad_input(e.to_string()).into())
}

/// Picks for `route`, avoiding the instances in `tried` (earlier attempts of the same request)
/// while another one is usable, and those `room` refuses (circuit breaking) while another one
/// has room.
pub(crate) fn pick(
    router: &Smart<Balancer>,
    snapshot: &Snapshot,
    route: &Route<'_>,
    tried: &[String],
    room: Option<&Usable<'_>>,
) -> Option<Picked> {
    // A retry asks the balancer again (it moves on), then takes any other instance of the
    // routed subset, then any other usable instance of the service.
    let rounds = if tried.is_empty() { 1 } else { 3 };
    for _ in 0..rounds {
        let routed = match room {
            None => router.pick(snapshot, route)?,
            Some(room) => router.pick_usable(snapshot, route, room)?,
        };
        if !tried.contains(&routed.instance().id) {
            return Some(Picked::Routed(routed));
        }
    }
    let healthy = |i: &Instance| !router.skips_unhealthy() || usable_by_health(i);
    let untried =
        |i: &Instance| !tried.contains(&i.id) && healthy(i) && room.is_none_or(|room| room(i));
    let subset = router.route(snapshot, route)?;
    let all = snapshot.instances();
    let index = subset
        .instances()
        .iter()
        .find(|i| untried(i))
        .and_then(|other| all.iter().position(|i| i.id == other.id))
        .or_else(|| all.iter().position(untried))?;
    Some(Picked::Other(snapshot.clone(), index))
}
