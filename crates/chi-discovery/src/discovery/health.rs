//! The discovery client as the health checker sees it: the membership it follows and the place
//! its verdicts go (laid over the cached lists, so `healthy_only` filters and balancers see them).

use async_trait::async_trait;
use futures_util::StreamExt;

use super::DiscoveryClient;
use crate::error::Result;
use crate::health::{HealthSink, Membership};
use crate::instance::HealthStatus;
use crate::registry::WatchStream;

#[async_trait]
impl HealthSink for DiscoveryClient {
    fn set_health(&self, service: &str, id: &str, health: HealthStatus) {
        DiscoveryClient::set_health(self, service, id, Some(health));
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.registry().deregister(service, id).await
    }
}

#[async_trait]
impl Membership for DiscoveryClient {
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        Ok(DiscoveryClient::watch(self, service).await?.boxed())
    }

    fn clear_health(&self, service: &str, id: &str) {
        DiscoveryClient::set_health(self, service, id, None);
    }

    async fn reload(&self, service: &str) -> Result<()> {
        self.refresh(service).await.map(drop)
    }
}
