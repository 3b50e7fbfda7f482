//! Gives ejected instances back to routing.
//!
//! The proxy marks an instance the outlier detector ejects as unhealthy in the discovery cache,
//! so every pick leaves it out with no per-request check of the detector. The detector has no
//! timer of its own (an ejection ends when its deadline is compared with the clock), so this
//! sweep, four times a second, lifts the mark of every instance whose ejection ended.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Proxy;
use super::service::Service;
use crate::sync;

/// Ends ejections in the discovery overlay once the detector lets an instance back in; ends
/// with the proxy.
pub(super) async fn sweep_ejections(proxy: Weak<Proxy>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(proxy) = proxy.upgrade() else { return };
        let services: Vec<Arc<Service>> = sync::read(&proxy.services).values().cloned().collect();
        for service in services {
            let name = service.name.as_str();
            let mut marked = sync::lock(&service.marked);
            marked.retain(|id| {
                let still = service.state.outliers().is_ejected(id);
                if !still {
                    tracing::info!(service = name, %id, "ejection ended");
                    proxy.client.set_health(name, id, None);
                }
                still
            });
        }
    }
}
