//! Integration with the Rust service ecosystem (tower, tonic).
//!
//! - [`Discover`]: chi's watch as a `tower::discover::Discover`, so `tower::balance::p2c::Balance`
//!   and tonic's `Channel::balance_channel` are fed by chi (see `examples/tonic_client.rs`).

mod discover;

pub use discover::Discover;

#[cfg(test)]
mod tests;
