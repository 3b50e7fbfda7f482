//! Integration with the Rust service ecosystem (tower, tonic, reqwest).
//!
//! - `Discover` (feature `tower`, on by default): chi's watch as a `tower::discover::Discover`, so `tower::balance::p2c::Balance`
//!   and tonic's `Channel::balance_channel` are fed by chi (see `examples/tonic_client.rs`).
//! - `HttpRouter` (feature `http`, on by default): `reqwest` calls to `http://service-name/...` through discovery, the smart
//!   router and the balancer, with outcomes fed to outlier detection.

#[cfg(feature = "tower")]
mod discover;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "tower")]
pub use discover::Discover;
#[cfg(feature = "http")]
pub use http::{HttpError, HttpRouter, Resolved};

#[cfg(all(test, feature = "tower", feature = "http"))]
mod tests;
