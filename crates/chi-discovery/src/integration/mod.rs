//! Integration with the Rust service ecosystem (tower, tonic, reqwest).
//!
//! - `Discover` (feature `tower`, on by default): chi's watch as a `tower::discover::Discover`, so `tower::balance::p2c::Balance`
//!   and tonic's `Channel::balance_channel` are fed by chi (see `examples/tonic_client.rs`);
//!   they pick by their own rule.
//! - `Balance` (feature `tower`): a `tower::Service<http::Request<_>>` whose every request chi
//!   picks (the configured routing, strategy, hash key and metrics), over one service per
//!   instance: a tonic client's transport ([`Chi::grpc`](crate::Chi::grpc)).
//! - `HttpRouter` (feature `http`, on by default): `reqwest` calls to `http://service-name/...` through discovery, the smart
//!   router and the balancer, with outcomes fed to outlier detection. The client half of
//!   [`Chi`](crate::Chi) ([`Chi::http`](crate::Chi::http)).
//! - [`axum::Server`] (feature `axum`): the server half: an `axum::Router` served as one
//!   registered instance (registered after bind, health path answered, deregistered on SIGTERM
//!   before it drains); a [`Chi`](crate::Chi) stack's is [`Chi::server`](crate::Chi::server).
//!
//! Each piece takes the parts it works with (a discovery client, a router, a service manager);
//! the stack, one layer up, assembles them from the config file.

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tower")]
mod balance;
#[cfg(feature = "tower")]
mod discover;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "tower")]
pub use balance::{Balance, BoxError, HashKey};
#[cfg(feature = "tower")]
pub use discover::Discover;
#[cfg(feature = "http")]
pub use http::{HttpError, HttpRouter, Resolved};

#[cfg(all(test, feature = "tower", feature = "http"))]
mod tests;
