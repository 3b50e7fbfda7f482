//! chi's view of a service as the four xDS resources a gRPC client needs for `xds:///NAME`.
//!
//! gRPC's xDS client (gRPC proposal A27, "xDS-Based Global Load Balancing") resolves a target in
//! four steps, each a resource named after the service here:
//!
//! 1. **Listener** `NAME` whose `api_listener` is an `HttpConnectionManager`; its HTTP filters must
//!    end with the Router filter, and its routes are either inline (`route_config`) or fetched over
//!    ADS (`rds`).
//! 2. **RouteConfiguration** `NAME`: one virtual host whose `domains` match the target's authority
//!    and whose default route (prefix `""`) sends everything to cluster `NAME`.
//! 3. **Cluster** `NAME` of type EDS with `eds_config` = ADS, and the `lb_policy` mapped from chi's
//!    configured strategy where xDS has one (`orca_weighted_round_robin` also as a
//!    `load_balancing_policy`: `client_side_weighted_round_robin` with the config's settings),
//!    the policy's settings (`lb_config`), and chi's outlier detection and circuit breaker
//!    ([`super::resilience`]; the routes carry its retry policy).
//! 4. **ClusterLoadAssignment** `NAME`: one locality per (region, zone) of the instances' metadata,
//!    each with `load_balancing_weight` and `priority` set (A27 ignores localities without a
//!    weight), endpoints with an IP socket address, their weight and their health (with the
//!    config's `health_check_enabled: false`, an unhealthy instance is sent as UNKNOWN, so that
//!    clients use it whatever its health, as chi's own balancers then do). With geo
//!    routing on, the priorities follow the client's own locality (its bootstrap's `node`): its
//!    zone first, then its region, then the neighbour regions, then the rest; gRPC fails over to
//!    the next priority when one has no usable endpoint (A27's priority policy), which wants the
//!    priorities contiguous from 0.
//!
//! With version routing on, the route configuration also sends a request whose
//! `x-service-version` header names a version some instance has to the cluster `NAME@VERSION`
//! (an EDS cluster of only that version's instances), and everything else to `NAME@DEFAULT` when
//! the config names a default version that has instances, else to `NAME`.
//!
//! Envoy reads the same Cluster and ClusterLoadAssignment over ADS (CDS + EDS), with its own
//! static listeners.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use chi_discovery::balance::{OrcaConfig, Strategy};
use chi_discovery::routing::{
    Geo, HASH_KEY_HEADER, Route as ChiRoute, VERSION_HEADER, serves_version,
};
use chi_discovery::health::OutlierConfig;
use chi_discovery::retry::RetryPolicy;
use chi_discovery::{HealthStatus, Instance};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus as XdsHealth, Locality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::view::{ServiceView, versions_of};

/// Between a service and a version in the name of a per-version cluster (`order-service@v2`).
pub(crate) const VERSION_SEP: char = '@';

/// The four resource types this server answers, by their `type_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoints,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl Kind {
    /// Every kind, in the order that drops no traffic when a service appears: CDS, EDS, then
    /// LDS and RDS (a listener never names a cluster the client does not know yet).
    pub(crate) const PUSH_ORDER: [Kind; 4] =
        [Kind::Cluster, Kind::Endpoints, Kind::Listener, Kind::Route];

    /// The kind's place in [`Kind::PUSH_ORDER`].
    pub(crate) const fn index(self) -> usize {
        match self {
            Kind::Cluster => 0,
            Kind::Endpoints => 1,
            Kind::Listener => 2,
            Kind::Route => 3,
        }
    }

    pub(crate) const fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub(crate) fn from_type_url(url: &str) -> Option<Kind> {
        Kind::PUSH_ORDER.into_iter().find(|k| k.type_url() == url)
    }

    /// LDS and CDS are "full state" in state-of-the-world: every response lists every resource
    /// the client has, and a missing one is deleted. A wildcard subscription (no names) means
    /// every service.
    pub(crate) const fn is_full_state(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    /// Short name for logs (`CDS`, `EDS`, `LDS`, `RDS`).
    pub(crate) const fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "CDS",
            Kind::Endpoints => "EDS",
            Kind::Listener => "LDS",
            Kind::Route => "RDS",
        }
    }
}

/// How the resources are shaped; the same for every service of one server.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// The balancer strategy, mapped onto the Cluster's `lb_policy`.
    pub(crate) strategy: Strategy,
    /// Routes over RDS (ADS) instead of inline in the Listener.
    pub(crate) rds: bool,
    /// The config's geo routing: where instances are, and (when on) locality priorities per
    /// client.
    pub(crate) geo: Arc<Geo>,
    /// Version routing: `None` when off, else the default version (may be empty).
    pub(crate) versions: Option<Arc<str>>,
    /// The config's `load_balancer.health_check_enabled`: when `false`, an instance known to be
    /// unhealthy is sent as UNKNOWN, which clients use, instead of UNHEALTHY, which they skip.
    pub(crate) health_check_enabled: bool,
    /// The header ring-hash routes hash: the config's `load_balancer.hash_key_header`, the
    /// header `chi proxy` and the library read the key from (`x-hash-key` by default).
    pub(crate) hash_key_header: Arc<str>,
    /// The config's `load_balancer.orca`: the settings of `client_side_weighted_round_robin`
    /// when the strategy is `orca_weighted_round_robin`.
    pub(crate) orca: OrcaConfig,
    /// chi's outlier detection, as the Cluster's `outlier_detection`.
    pub(crate) outlier: OutlierConfig,
    /// The config's `load_balancer.circuit_breaker.max_requests`, as the Cluster's
    /// `circuit_breakers`.
    pub(crate) max_requests: Option<u32>,
    /// The config's `discovery.retry`, as the routes' `retry_policy`.
    pub(crate) retry: RetryPolicy,
}

impl Default for Shape {
    /// Round robin, routes inline, no geo or version routing, health checks on, `x-hash-key`,
    /// chi's default outlier detection, no circuit breaker, no retries.
    fn default() -> Self {
        Shape {
            strategy: Strategy::RoundRobin,
            rds: false,
            geo: Arc::new(Geo::disabled()),
            versions: None,
            health_check_enabled: true,
            hash_key_header: Arc::from(HASH_KEY_HEADER),
            orca: OrcaConfig::default(),
            outlier: OutlierConfig::default(),
            max_requests: None,
            retry: RetryPolicy::none(),
        }
    }
}

/// Where a client is: the `locality` of the `node` in its bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct ClientPlace {
    pub(crate) region: Option<String>,
    pub(crate) zone: Option<String>,
}

impl Shape {
    /// The service and version a resource name means: `NAME@VERSION` is a per-version cluster
    /// when version routing is on; every other name is a service.
    pub(crate) fn split<'n>(&self, name: &'n str) -> (&'n str, Option<&'n str>) {
        if self.versions.is_some()
            && let Some((service, version)) = name.rsplit_once(VERSION_SEP)
            && !service.is_empty()
            && !version.is_empty()
        {
            return (service, Some(version));
        }
        (name, None)
    }

    /// The revision of resource `name` of `kind`, given its service's view; `None` when the
    /// resource does not exist. A service's resources exist once it had instances; a
    /// per-version cluster (CDS, EDS) while an instance has that version. The number changes
    /// when the content does: the endpoints for EDS, the set of versions for routes (with
    /// version routing).
    pub(crate) fn revision(&self, kind: Kind, name: &str, view: &ServiceView) -> Option<u64> {
        view.instances.as_ref()?;
        // The view's digest: each version's fingerprint.
        let by_version = &view.digest;
        match (self.split(name).1, kind) {
            (Some(v), Kind::Endpoints) => by_version.get(v).copied(),
            (Some(v), Kind::Cluster) => by_version.contains_key(v).then_some(0),
            (Some(_), _) => None,
            (None, Kind::Endpoints) => Some(view.revision),
            (None, Kind::Listener | Kind::Route) if self.versions.is_some() => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                by_version.keys().for_each(|v| v.hash(&mut h));
                Some(h.finish())
            }
            (None, _) => Some(0),
        }
    }

    /// The names of every resource of `kind` for `service` (a wildcard subscription): the
    /// service, plus its per-version clusters for CDS.
    pub(crate) fn all_names(&self, kind: Kind, service: &str, view: &ServiceView) -> Vec<String> {
        let mut names = vec![service.to_owned()];
        if kind == Kind::Cluster && self.versions.is_some() {
            // The view's digest: each version's fingerprint.
            names.extend(
                view.digest
                    .keys()
                    .map(|v| format!("{service}{VERSION_SEP}{v}")),
            );
        }
        names
    }

    /// The resource `kind` named `name`, packed, for a client at `client`; `instances` are the
    /// service's.
    pub(crate) fn build(
        &self,
        kind: Kind,
        name: &str,
        instances: &[Instance],
        client: &ClientPlace,
    ) -> Any {
        match kind {
            Kind::Listener => pack_any(self.listener(name, instances)),
            Kind::Route => pack_any(self.route_config(name, instances)),
            Kind::Cluster => pack_any(self.cluster(name)),
            Kind::Endpoints => {
                let subset: Vec<Instance>;
                let instances = match self.split(name).1 {
                    Some(v) => {
                        subset = instances
                            .iter()
                            .filter(|i| serves_version(i, v))
                            .cloned()
                            .collect();
                        &subset[..]
                    }
                    None => instances,
                };
                pack_any(self.load_assignment(name, instances, client))
            }
        }
    }

    /// Listener `name` for gRPC's `xds:///name`: an API listener whose HttpConnectionManager ends
    /// with the Router filter.
    pub(crate) fn listener(&self, name: &str, instances: &[Instance]) -> Listener {
        let route_specifier = if self.rds {
            RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: name.to_owned(),
            })
        } else {
            RouteSpecifier::RouteConfig(self.route_config(name, instances))
        };
        let hcm = HttpConnectionManager {
            stat_prefix: name.to_owned(),
            route_specifier: Some(route_specifier),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }],
            ..Default::default()
        };
        Listener {
            name: name.to_owned(),
            api_listener: Some(ApiListener {
                api_listener: Some(pack_any(hcm)),
            }),
            ..Default::default()
        }
    }

    /// RouteConfiguration `name`: a virtual host for `name` (and `name:PORT`) whose default route
    /// goes to cluster `name`; with version routing, first one route per version on the
    /// `x-service-version` header, and the default route to the default version's cluster.
    pub(crate) fn route_config(&self, name: &str, instances: &[Instance]) -> RouteConfiguration {
        let hash_policy = if matches!(lb_policy(self.strategy), LbPolicy::RingHash) {
            vec![HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(Header {
                    header_name: self.hash_key_header.to_string(),
                    ..Default::default()
                })),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        let route = |header: Option<&str>, cluster: String| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(String::new())),
                headers: header
                    .map(|v| HeaderMatcher {
                        name: VERSION_HEADER.to_owned(),
                        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                            StringMatcher {
                                match_pattern: Some(MatchPattern::Exact(v.to_owned())),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                hash_policy: hash_policy.clone(),
                retry_policy: super::resilience::retry_policy(&self.retry),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut routes = Vec::new();
        let mut default_cluster = name.to_owned();
        if let Some(default) = &self.versions {
            let versions = versions_of(instances);
            for v in &versions {
                routes.push(route(Some(v), format!("{name}{VERSION_SEP}{v}")));
            }
            if versions.contains(&**default) {
                default_cluster = format!("{name}{VERSION_SEP}{default}");
            }
        }
        routes.push(route(None, default_cluster));
        RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: name.to_owned(),
                domains: vec![name.to_owned(), format!("{name}:*")],
                routes,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Cluster `name`: type EDS, endpoints over ADS, the strategy as `lb_policy` and, where that
    /// enum has no word for it, as `load_balancing_policy` ([`super::policy`]).
    pub(crate) fn cluster(&self, name: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name.to_owned(),
            }),
            connect_timeout: Some(Duration {
                seconds: 5,
                nanos: 0,
            }),
            lb_policy: lb_policy(self.strategy) as i32,
            load_balancing_policy: super::policy::load_balancing_policy(self.strategy, &self.orca),
            lb_config: super::policy::lb_config(self.strategy),
            outlier_detection: Some(super::resilience::outlier_detection(&self.outlier)),
            circuit_breakers: super::resilience::circuit_breakers(self.max_requests),
            ..Default::default()
        }
    }
}

/// A ConfigSource that says "over the same ADS stream", in API v3.
fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// chi's strategy as the Cluster's `lb_policy`. Only the policies gRPC's clients accept are used
/// (gRPC rejects a Cluster with RANDOM or MAGLEV): round robin and random become `ROUND_ROBIN`
/// (which weighs endpoints), the hashing strategies `RING_HASH`, and the load-aware ones
/// `LEAST_REQUEST`; `orca_weighted_round_robin` is `ROUND_ROBIN` for a client that does not read
/// the Cluster's `load_balancing_policy`.
pub(crate) fn lb_policy(strategy: Strategy) -> LbPolicy {
    match strategy {
        Strategy::ConsistentHash | Strategy::RingHash | Strategy::Maglev => LbPolicy::RingHash,
        Strategy::LeastConnections | Strategy::P2c | Strategy::PeakEwma => LbPolicy::LeastRequest,
        _ => LbPolicy::RoundRobin,
    }
}

/// chi's health as xDS health: only HEALTHY and UNKNOWN endpoints are used by clients (gRPC
/// A27; Envoy's EDS health).
pub(crate) fn health(h: HealthStatus) -> XdsHealth {
    match h {
        HealthStatus::Healthy => XdsHealth::Healthy,
        HealthStatus::Unhealthy => XdsHealth::Unhealthy,
        HealthStatus::Unknown => XdsHealth::Unknown,
    }
}

impl Shape {
    /// The health an endpoint is sent with: its own, except that with `health_check_enabled:
    /// false` an unhealthy instance goes as UNKNOWN, so clients use it as chi's own balancers
    /// would (chi's health is not a verdict the config asks to act on).
    pub(crate) fn endpoint_health(&self, h: HealthStatus) -> XdsHealth {
        match (h, self.health_check_enabled) {
            (HealthStatus::Unhealthy, false) => XdsHealth::Unknown,
            (h, _) => health(h),
        }
    }

    /// ClusterLoadAssignment `name`: one locality per (region, zone), sorted, with the priorities
    /// of [`priorities`]; an instance with weight 0 (out of rotation) or an address that is not
    /// an IP is left out (xDS endpoints need an IP socket address and a weight of at least 1).
    pub(crate) fn load_assignment(
        &self,
        name: &str,
        instances: &[Instance],
        client: &ClientPlace,
    ) -> ClusterLoadAssignment {
        let geo = &*self.geo;
        let mut localities: BTreeMap<(&str, &str), Vec<&Instance>> = BTreeMap::new();
        for i in instances {
            let place = geo.place_of(i);
            let key = (place.region.unwrap_or(""), place.zone.unwrap_or(""));
            localities.entry(key).or_default().push(i);
        }
        let mut endpoints: Vec<LocalityLbEndpoints> = localities
            .into_iter()
            .filter_map(|((region, zone), mut members)| {
                members.sort_by(|a, b| a.id.cmp(&b.id));
                let lb_endpoints: Vec<LbEndpoint> = members
                    .into_iter()
                    .filter_map(|i| endpoint(i, self.endpoint_health(i.health)))
                    .collect();
                if lb_endpoints.is_empty() {
                    return None;
                }
                let weight = lb_endpoints
                    .iter()
                    .filter(|e| e.health_status != XdsHealth::Unhealthy as i32)
                    .filter_map(|e| e.load_balancing_weight.map(|w| w.value))
                    .fold(0u32, u32::saturating_add)
                    .max(1);
                Some(LocalityLbEndpoints {
                    locality: Some(Locality {
                        region: region.to_owned(),
                        zone: zone.to_owned(),
                        sub_zone: String::new(),
                    }),
                    lb_endpoints,
                    load_balancing_weight: Some(UInt32Value { value: weight }),
                    priority: 0,
                    ..Default::default()
                })
            })
            .collect();
        let places: Vec<(&str, &str)> = endpoints
            .iter()
            .map(|l| {
                l.locality
                    .as_ref()
                    .map_or(("", ""), |l| (l.region.as_str(), l.zone.as_str()))
            })
            .collect();
        let ranks = priorities(geo, client, &places);
        for (l, p) in endpoints.iter_mut().zip(ranks) {
            l.priority = p;
        }
        ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints,
            ..Default::default()
        }
    }
}

/// The priority of each locality (region, zone) for a client at `client`: 0 for everything when
/// geo routing is off or the client says nowhere; else the client's zone, its region, the
/// neighbour regions in order, then the rest, numbered from 0 without gaps.
pub(crate) fn priorities(geo: &Geo, client: &ClientPlace, places: &[(&str, &str)]) -> Vec<u32> {
    let route = ChiRoute {
        region: client.region.as_deref().filter(|r| !r.is_empty()),
        zone: client.zone.as_deref().filter(|z| !z.is_empty()),
        ..ChiRoute::default()
    };
    let at = geo.client(&route);
    if !geo.is_enabled() || (at.region.is_none() && at.zone.is_none()) {
        return vec![0; places.len()];
    }
    let neighbours = at.region.map_or(&[][..], |r| geo.neighbours(r));
    let class = |(region, zone): (&str, &str)| -> usize {
        if at.zone.is_some_and(|z| !zone.is_empty() && z == zone) {
            0
        } else if at.region.is_some_and(|r| !region.is_empty() && r == region) {
            1
        } else if let Some(i) = neighbours
            .iter()
            .position(|n| !region.is_empty() && n == region)
        {
            2 + i
        } else {
            2 + neighbours.len()
        }
    };
    let classes: Vec<usize> = places.iter().map(|p| class(*p)).collect();
    let mut distinct = classes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    classes
        .iter()
        .map(|c| {
            let rank = distinct.partition_point(|d| d < c);
            u32::try_from(rank).unwrap_or(u32::MAX)
        })
        .collect()
}

fn endpoint(i: &Instance, health: XdsHealth) -> Option<LbEndpoint> {
    let weight = i.effective_weight();
    let address = i.address.trim_start_matches('[').trim_end_matches(']');
    if weight == 0 || address.parse::<IpAddr>().is_err() {
        tracing::debug!(id = %i.id, address = %i.address, weight, "left out of EDS: weight 0 or not an IP address");
        return None;
    }
    Some(LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    protocol: Protocol::Tcp as i32,
                    address: address.to_owned(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(i.port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: health as i32,
        load_balancing_weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    })
}
