//! `chi xds`'s console: the registries it serves from, the clients connected to it and what each
//! was sent and answered (read from the server's [`Clients`] book), on the `--admin` port with
//! `/health`. No writes: an xDS control plane's admin port shows, it does not change.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::get;
use chi_discovery::Registry;
use chi_discovery::balance::Strategy;

use super::Merged;
use super::model::Balancing;
use super::{Console, Feed, WriteGate};
use crate::xds::clients::{ClientStatus, Clients};

/// What `chi xds` tells its console.
pub(crate) struct XdsFeed {
    pub(crate) clients: Arc<Clients>,
    pub(crate) strategy: Strategy,
}

impl Feed for XdsFeed {
    fn balancing(&self, _: &Merged) -> Balancing {
        Balancing {
            note: Some(format!(
                "chi xds makes no picks: it sends gRPC clients and Envoy the endpoints and the \
                 policy of load_balancer.strategy ({}), and they pick.",
                self.strategy.as_str()
            )),
            services: Vec::new(),
        }
    }

    fn xds_clients(&self) -> Option<Vec<ClientStatus>> {
        Some(self.clients.snapshot())
    }
}

/// Serves `/health` and the console on `addr` in the background; returns the bound address.
pub(crate) async fn serve_xds(
    addr: SocketAddr,
    registry: Arc<dyn Registry>,
    feed: XdsFeed,
) -> anyhow::Result<SocketAddr> {
    let gate = WriteGate::ReadOnly {
        how: "chi xds's console never writes",
    };
    let console = Console::new("xds", registry.clone(), Arc::new(feed), gate);
    let app = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(console.routes());
    crate::admin::listen(addr, app).await
}
