//! Routing's settings (the `routing` section of the config file). They live with the routers
//! that read them, as each module's settings do; `config` parses the YAML into this type and
//! re-exports it as `config::RoutingConfig`.

use indexmap::IndexMap;

use super::{ClientRegions, TrustedProxies};

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
