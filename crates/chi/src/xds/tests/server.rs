//! A test server: the ADS service as `chi xds` serves it (tonic, HTTP/2, the same service
//! object), reached over in-memory connections instead of sockets, on a paused clock.

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::{DiscoveryClient, OutagePolicy, Registry, RetryPolicy};
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

use super::client::{Client, Variant};
use super::registry::Counted;
use crate::xds::clients::Clients;
use crate::xds::resources::Shape;
use crate::xds::serve::Port;
use crate::xds::state::Hub;
use crate::xds::{Closing, XdsServer};

/// The longest wait of the servers' discovery clients before they watch the registry again after
/// an error: short, so an outage's resync comes soon after the registry is back.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_millis(200);

/// Bytes in flight on one in-memory connection before its writer waits for the reader: about
/// what a loopback socket buffers, so a burst of large requests reaches the server as it would
/// over TCP (with less, the writer waits for every read, and the server does the work of each
/// request before the next one reaches it).
const PIPE: usize = 1 << 20;

/// A server running in the test's runtime.
pub(crate) struct Fixture {
    /// Hands the server the far end of each new connection.
    connections: mpsc::UnboundedSender<DuplexStream>,
    registry: Arc<Counted>,
    closing: Closing,
    /// The server's book of its clients.
    pub(crate) clients: Arc<Clients>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A server over `registry`, without a restart grace (a resync is served as is).
pub(crate) async fn serve(registry: Arc<dyn Registry>, shape: Shape, max_streams: u32) -> Fixture {
    serve_with_grace(registry, shape, max_streams, Duration::ZERO).await
}

/// A server over `registry` whose resyncs after an error hold removals for `grace`. Pauses the
/// clock of the test's runtime, unless the test started paused.
pub(crate) async fn serve_with_grace(
    registry: Arc<dyn Registry>,
    shape: Shape,
    max_streams: u32,
    grace: Duration,
) -> Fixture {
    start(registry, shape, (max_streams, None), grace).await
}

/// A server over `registry` whose streams may each follow at most `max_unknown` names the
/// registry does not know.
pub(crate) async fn serve_bounded(
    registry: Arc<dyn Registry>,
    shape: Shape,
    max_unknown: u32,
) -> Fixture {
    start(registry, shape, (8, Some(max_unknown)), Duration::ZERO).await
}

async fn start(
    registry: Arc<dyn Registry>,
    shape: Shape,
    (max_streams, max_unknown): (u32, Option<u32>),
    grace: Duration,
) -> Fixture {
    pause_clock();
    let registry = Counted::new(registry);
    let retry = RetryPolicy {
        initial_interval: Duration::from_millis(50),
        max_interval: RECONNECT_MAX,
        ..RetryPolicy::default()
    };
    let client = DiscoveryClient::builder()
        .retry(retry)
        .outage(OutagePolicy::with_restart_grace(grace))
        .build(registry.clone());
    let hub = Hub::new(client);
    let mut server = XdsServer::new(hub, shape, max_streams);
    if let Some(n) = max_unknown {
        server = server.unknown_names(n);
    }
    let closing = server.closing.clone();
    let clients = server.clients();
    let ads = server.into_service();
    let port = Port::new(ads.clone(), tonic::service::Routes::new(ads));
    let (connections, incoming) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let incoming = UnboundedReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
        crate::xds::serve::serve(port, incoming, None, std::future::pending()).await;
    });
    Fixture {
        connections,
        registry,
        closing,
        clients,
        server,
    }
}

impl Fixture {
    /// Opens an ADS stream of variant `V` on a connection of its own.
    pub(crate) async fn open<V: Variant>(&self) -> Client<V> {
        self.try_open().await.expect("the ADS stream opens")
    }

    /// Opens an ADS stream of variant `V`, or the status the server refused it with.
    pub(crate) async fn try_open<V: Variant>(&self) -> Result<Client<V>, Status> {
        Client::open_on(self.connect().await).await
    }

    /// Shuts the server down, as `chi xds` does on SIGTERM.
    pub(crate) fn close(&self) {
        self.closing.close();
    }

    /// The registry watches the server holds open.
    pub(crate) fn watches(&self) -> usize {
        self.registry.watches()
    }

    /// A new in-memory connection to the server.
    async fn connect(&self) -> Channel {
        let connections = self.connections.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let connections = connections.clone();
            async move {
                let (near, far) = tokio::io::duplex(PIPE);
                connections
                    .send(far)
                    .map_err(|_| std::io::Error::other("the test server is gone"))?;
                Ok::<_, std::io::Error>(TokioIo::new(near))
            }
        });
        Endpoint::from_static("http://xds.test")
            .connect_with_connector(connector)
            .await
            .expect("an in-memory connection")
    }
}

/// Lets every task run until none has anything left to do (the server answered, a closed
/// stream freed its slot, a dropped watch closed): on the paused clock, the sleep ends only once
/// the runtime had nothing else to run. Moves the clock by a millisecond.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Pauses the clock of the test's runtime unless it is paused already (`start_paused`).
/// `tokio::time::pause` panics outside a current-thread runtime: these tests need one.
fn pause_clock() {
    let before = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    if tokio::time::Instant::now() != before {
        tokio::time::pause();
    }
}
