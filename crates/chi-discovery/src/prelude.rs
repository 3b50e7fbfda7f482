//! The names most programs use, in one import: `use chi_discovery::prelude::*;`.
//!
//! Registering ([`ServiceManager`], [`ServiceConfig`]), finding ([`DiscoveryClient`], [`Filter`],
//! [`Snapshot`]) and the two ways to pick an instance the [crate docs](crate#picking-an-instance)
//! describe: a [`Balancer`] over a snapshot, or a [`Smart`] router over a [`Route`]; and the
//! whole stack from one config file, [`Chi`].

pub use crate::balance::{Balancer, Pick, Strategy};
pub use crate::discovery::{DiscoveryClient, Snapshot};
pub use crate::error::{Error, Result};
pub use crate::instance::{Filter, HealthStatus, Instance, ServiceConfig};
pub use crate::manager::ServiceManager;
pub use crate::registry::Registry;
pub use crate::routing::{Route, Routed, Routers, Smart};
pub use crate::stack::Chi;
