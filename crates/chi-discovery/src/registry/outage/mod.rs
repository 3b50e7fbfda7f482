//! What a registry's answers are worth after an outage.
//!
//! - [`empty`]: an adapter's guard against the empty answers of a server that just came back.
//! - [`grace`]: a follower's restart grace, which holds the removals of a resync after a failure.

#[cfg(any(feature = "consul", feature = "nacos"))]
mod empty;
pub mod grace;

#[cfg(any(feature = "consul", feature = "nacos"))]
pub(crate) use empty::EmptyGuard;
pub use grace::Grace;
