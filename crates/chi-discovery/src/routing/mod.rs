//! Routing: which instances a request may go to, before a balancer picks one of them.
//!
//! Three stages, each usable on its own and chained by [`Smart`]:
//!
//! - [`Version`]: the version a request asks for (`X-Service-Version`, else the configured
//!   `default_version`, or a weighted canary split such as v1 90 / v2 10); an instance matches by
//!   its `version` field or by a tag equal to the version, as the Go sketch's `VersionRouter` filters
//!   by tag.
//! - [`Geo`]: the client's zone and region (`X-Client-Zone`, `X-Client-Region`, or given; else
//!   its address through `routing.client_regions`, see [`ClientRegions`]);
//!   instances in the same zone first, then the same region, then the neighbour regions in the
//!   order the config's `regions` topology lists them, and only then any region at all (the
//!   Go sketch's "all other regions", kept as the last resort instead of the first).
//! - [`Smart`]: version -> geo -> balancer. A stage whose narrower set is empty falls back to a
//!   wider one instead of failing the request, and the [`Decision`] says which fallback was taken
//!   ([`VersionStep`], [`GeoStep`]), so logs and metrics can count them.
//!
//! Why subsets are precomputed: a request only reads. The per-version and per-place subsets of a
//! service are computed once per [`Snapshot::revision`](crate::Snapshot::revision) (which changes
//! exactly when the list changes) and swapped in with `arc-swap`, so a pick is a few hash lookups
//! and one balancer pick, with no filtering of the instance list per request.
//!
//! A request is described by a [`Route`]; it can be read from anything exposing headers
//! ([`http::HeaderMap`], [`http::Request`], see [`Headers`]) or built from plain values.
//!
//! A caller that also learns from outcomes keeps one [`ServiceState`] per service: the router
//! with the service's outlier detector, and an [`OnPick`] told every pick (the metrics).

mod address;
mod breaker;
mod config;
mod geo;
mod on_pick;
mod plan;
mod routers;
mod service;
pub mod slow_start;
mod smart;
pub mod spill;
mod stage;
mod subset;
mod version;

pub use address::{ClientRegions, TrustedProxies};
pub use breaker::{Breaker, Slot};
pub use config::RoutingConfig;
pub use geo::{Geo, GeoStep, Place};
pub use on_pick::OnPick;
pub use routers::Routers;
pub use service::{Admitted, ServiceState, ServiceStateConfig};
pub use slow_start::{Ramp, SlowStartConfig};
pub use smart::{Decision, Routed, Smart, Subset};
pub use spill::{Spill, ZoneAwareConfig};
pub use stage::{Stage, Usable};
pub use subset::{SubsetSource, Subsetting};
pub use version::{Version, VersionStep};

use crate::instance::Instance;

/// Header naming the version a request wants.
pub const VERSION_HEADER: &str = "x-service-version";
/// Header naming the client's region.
pub const REGION_HEADER: &str = "x-client-region";
/// Header naming the client's availability zone.
pub const ZONE_HEADER: &str = "x-client-zone";
/// Header whose value is the key of the hashing strategies (and of sticky canary splits), unless
/// the config's `load_balancer.hash_key_header` names another.
pub const HASH_KEY_HEADER: &str = "x-hash-key";
/// Instance metadata key of its region.
pub const REGION_META: &str = "region";
/// Instance metadata key of its zone.
pub const ZONE_META: &str = "zone";

/// What routing needs to know about one request. Borrowed, cheap to build per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route<'a> {
    /// The version asked for (`X-Service-Version`).
    pub version: Option<&'a str>,
    /// The client's region (`X-Client-Region`).
    pub region: Option<&'a str>,
    /// The client's zone (`X-Client-Zone`).
    pub zone: Option<&'a str>,
    /// A key for hashing balancers and for sticky canary splits (user id, session id...).
    pub key: Option<&'a [u8]>,
}

impl<'a> Route<'a> {
    /// A route that asks for nothing: default version, no location, no key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `X-Service-Version`, `X-Client-Region`, `X-Client-Zone` and the key from
    /// `X-Hash-Key` (empty values count as absent; values that are not visible ASCII are
    /// ignored).
    pub fn from_headers<H: Headers + ?Sized>(headers: &'a H) -> Self {
        Self::from_headers_keyed(headers, HASH_KEY_HEADER)
    }

    /// As [`Route::from_headers`], with the key from header `key_header` (lowercase; the
    /// config's `load_balancer.hash_key_header`, see [`Routers::route_of`]).
    pub fn from_headers_keyed<H: Headers + ?Sized>(headers: &'a H, key_header: &str) -> Self {
        Route {
            version: headers.header(VERSION_HEADER),
            region: headers.header(REGION_HEADER),
            zone: headers.header(ZONE_HEADER),
            key: headers.header(key_header).map(str::as_bytes),
        }
    }

    /// Sets the version.
    pub fn version(mut self, version: &'a str) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the client region.
    pub fn region(mut self, region: &'a str) -> Self {
        self.region = Some(region);
        self
    }

    /// Sets the client zone.
    pub fn zone(mut self, zone: &'a str) -> Self {
        self.zone = Some(zone);
        self
    }

    /// Sets the hash key (what the hashing strategies hash; see [`crate::balance`] for what they
    /// do without one).
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }
}

/// Anything a routing header can be read from.
pub trait Headers {
    /// The value of header `name` (lowercase), if present, non-empty and valid text.
    fn header(&self, name: &str) -> Option<&str>;
}

fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

impl Headers for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        // The routing headers as prebuilt names: parsing a `&str` into a header name on every
        // lookup is most of the cost of reading three headers.
        static VERSION: http::HeaderName = http::HeaderName::from_static(VERSION_HEADER);
        static REGION: http::HeaderName = http::HeaderName::from_static(REGION_HEADER);
        static ZONE: http::HeaderName = http::HeaderName::from_static(ZONE_HEADER);
        static KEY: http::HeaderName = http::HeaderName::from_static(HASH_KEY_HEADER);
        let value = match name {
            VERSION_HEADER => self.get(&VERSION),
            REGION_HEADER => self.get(&REGION),
            ZONE_HEADER => self.get(&ZONE),
            HASH_KEY_HEADER => self.get(&KEY),
            other => self.get(other),
        };
        value.and_then(|v| v.to_str().ok()).and_then(non_empty)
    }
}

impl<B> Headers for http::Request<B> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers().header(name)
    }
}

impl Headers for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| non_empty(v))
    }
}

impl Headers for std::collections::HashMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| non_empty(v))
    }
}

/// True if `instance` serves `version`: its version field equals it, or it carries the tag.
pub fn serves_version(instance: &Instance, version: &str) -> bool {
    instance.version == version || instance.has_tag(version)
}

#[cfg(test)]
mod tests;
