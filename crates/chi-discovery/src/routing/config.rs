//! Routing's settings (the `load_balancer` and `routing` sections of the config file). They live
//! with the routers that read them, as each module's settings do; `config` parses the YAML into
//! these types and re-exports them as `config::LoadBalancerConfig` and `config::RoutingConfig`.

use indexmap::IndexMap;

use super::address::{ClientRegions, TrustedProxies};
use super::route::HASH_KEY_HEADER;
use super::slow_start::SlowStartConfig;
use super::spill::ZoneAwareConfig;
use crate::balance::{ConsistentHashConfig, OrcaConfig, Strategy};

/// `load_balancer`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancerConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Skip instances that are not healthy.
    pub health_check_enabled: bool,
    /// Consistent-hash settings.
    pub consistent_hash: ConsistentHashConfig,
    /// Zone-aware balancing (`zone_aware`).
    pub zone_aware: ZoneAwareConfig,
    /// Circuit breaking: requests in flight per instance (`circuit_breaker.max_requests`).
    pub max_requests_per_instance: Option<u32>,
    /// Deterministic subsetting: instances per client (`subset_size`); the clients are this
    /// service's instances, so it needs `registration`.
    pub subset_size: Option<usize>,
    /// Slow start (`slow_start`).
    pub slow_start: Option<SlowStartConfig>,
    /// The request header whose value is the key of the hashing strategies
    /// (`hash_key_header`, default `X-Hash-Key`): read by [`Chi::http`](crate::Chi::http), the
    /// tower service of a [`Chi`](crate::Chi) and `chi proxy`. Stored lowercase.
    pub hash_key_header: http::HeaderName,
    /// Settings of `orca_weighted_round_robin` (`orca`).
    pub orca: OrcaConfig,
}

impl Default for LoadBalancerConfig {
    /// Round robin, skipping unhealthy instances, and nothing else turned on.
    fn default() -> Self {
        LoadBalancerConfig {
            strategy: Strategy::default(),
            health_check_enabled: true,
            consistent_hash: ConsistentHashConfig::default(),
            zone_aware: ZoneAwareConfig::default(),
            max_requests_per_instance: None,
            subset_size: None,
            slow_start: None,
            hash_key_header: http::HeaderName::from_static(HASH_KEY_HEADER),
            orca: OrcaConfig::default(),
        }
    }
}

/// `routing`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Route by `X-Service-Version`.
    pub enable_version_routing: bool,
    /// Route by region / zone.
    pub enable_geo_routing: bool,
    /// Version used when a request names none.
    pub default_version: String,
    /// Regions and their zones, in the order written (the order is the fallback order).
    pub regions: IndexMap<String, Vec<String>>,
    /// The region of a client that names none, from its address (`client_regions`).
    pub client_regions: ClientRegions,
    /// The proxies whose `X-Forwarded-For` tells the client's address (`trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            enable_version_routing: false,
            enable_geo_routing: false,
            default_version: String::new(),
            regions: IndexMap::new(),
            client_regions: ClientRegions::default(),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}
