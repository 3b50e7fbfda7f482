//! Test doubles of the registry layer, for the unit tests of the modules above it.

use async_trait::async_trait;

use super::{Memory, Registry, WatchStream, read_only};
use crate::error::Result;
use crate::instance::{HealthStatus, Instance};
use crate::registry::Liveness;

/// A registry that only reads, as DNS does: every write fails with the read-only error.
pub(crate) struct ReadOnly(pub(crate) Memory);

#[async_trait]
impl Registry for ReadOnly {
    fn backend(&self) -> &str {
        "dns"
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn register(&self, _: &Instance) -> Result<()> {
        Err(read_only("dns"))
    }
    async fn deregister(&self, _: &str, _: &str) -> Result<()> {
        Err(read_only("dns"))
    }
    async fn keep_alive(&self, _: &Instance, _: HealthStatus) -> Result<Liveness> {
        Err(read_only("dns"))
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.0.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.0.services().await
    }
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.0.watch(service).await
    }
}
