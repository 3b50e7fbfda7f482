//! Integration with the Rust service ecosystem (tower, tonic).
//!
//! - [`Discover`]: chi's watch as a `tower::discover::Discover`, so `tower::balance::p2c::Balance`
//!   and tonic's `Channel::balance_channel` are fed by chi (see `examples/tonic_client.rs`).
//! - [`HttpRouter`]: `reqwest` calls to `http://service-name/...` through discovery, the smart
//!   router and the balancer, with outcomes fed to outlier detection.

mod discover;
mod http;

pub use discover::Discover;
pub use http::{HttpError, HttpRouter, Resolved};

#[cfg(test)]
mod tests;
