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
//! Why leaves are precomputed: a request only reads. A [`Smart`] router groups a service's
//! instances per version and per place once, into *leaves* with a balancer each, and swaps them in
//! with `arc-swap`, so a pick is a few hash lookups to find its [`Leaf`] and one balancer pick,
//! with no filtering of the instance list per request. The grouping is the last of three steps
//! (the deal of deterministic subsetting, [`Subsetting`]; the ramp of [`slow_start`]; the plan),
//! each recomputed only when its own inputs changed (`steps.rs`). [`Version::narrow`] and
//! [`Geo::narrow`] compute the same sets per call.
//!
//! Two names that sound alike: a [`Leaf`] is where a route leads (the instances a request may go
//! to); a *subset* is what deterministic subsetting deals a client ([`Subsetting`],
//! [`SubsetSource`]), before any routing.
//!
//! A request is described by a [`Route`]; it can be read from anything exposing headers
//! ([`http::HeaderMap`], [`http::Request`], see [`Headers`]) or built from plain values.
//!
//! A caller that also learns from outcomes keeps one [`ServiceState`] per service: the router
//! with the service's outlier detector, and an [`OnPick`] told every pick (the metrics).

mod address;
mod breaker;
mod config;
mod decision;
mod geo;
mod leaf;
mod on_pick;
mod plan;
mod route;
mod routers;
mod service;
pub mod slow_start;
mod smart;
pub mod spill;
mod stage;
mod steps;
mod subset;
mod version;

pub use address::{ClientRegions, TrustedProxies};
pub use breaker::{Breaker, Slot};
pub use config::{LoadBalancerConfig, RoutingConfig};
pub use decision::Decision;
pub use geo::{Geo, GeoStep, Place};
#[allow(deprecated)]
pub use leaf::Subset;
pub use leaf::{Leaf, Routed};
pub use on_pick::OnPick;
pub use route::{
    HASH_KEY_HEADER, Headers, REGION_HEADER, REGION_META, Route, VERSION_HEADER, ZONE_HEADER,
    ZONE_META, serves_version,
};
pub use routers::Routers;
pub use service::{Admitted, ServiceState, ServiceStateConfig};
pub use slow_start::{Ramp, SlowStartConfig};
pub use smart::Smart;
pub use spill::{Spill, ZoneAwareConfig};
pub use stage::{Stage, Usable};
pub use subset::{SubsetSource, Subsetting};
pub use version::{Version, VersionStep};

#[cfg(test)]
mod tests;
