//! Protocol tests: a tonic ADS client against the server in this process, over loopback, with
//! the embedded `Memory` registry (wrapped in [`Flaky`] where an outage is needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::balance::Strategy;
use chi_discovery::registry::{Memory, WatchStream};
use chi_discovery::routing::Geo;
use chi_discovery::{
    DiscoveryClient, Error, HealthStatus, Instance, Liveness, Registry, RetryPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::broadcast;

use super::resources::{ClientPlace, Shape};
use super::state::Hub;
use super::{Closing, XdsServer};

mod delta;
mod grace;
mod load_balancer;
mod routing;
mod sotw;

const SERVICE: &str = "order-service";
const QUIET: Duration = Duration::from_millis(400);

fn inst(id: &str, port: u16, zone: &str) -> Instance {
    Instance::new(SERVICE, "127.0.0.1", port)
        .with_id(id)
        .with_meta("region", "eu-west-1")
        .with_meta("zone", zone)
}

/// The embedded registry holding `instances`.
async fn memory_with(instances: impl IntoIterator<Item = Instance>) -> Arc<Memory> {
    let memory = Arc::new(Memory::new());
    for i in instances {
        register(&memory, i).await;
    }
    memory
}

/// A registry that can go down ([`Flaky`]), holding `instances`.
async fn flaky_with(instances: impl IntoIterator<Item = Instance>) -> Arc<Flaky> {
    let flaky = Flaky::new();
    for i in instances {
        flaky.register(&i).await.expect("register");
    }
    flaky
}

/// A second service, beside [`SERVICE`], for the tests that ask for two.
fn other() -> Instance {
    Instance::new("other", "127.0.0.1", 7100).with_id("o")
}

/// Registers `instance` in the embedded registry behind a test server.
async fn register(memory: &Memory, instance: Instance) {
    memory.register(&instance).await.expect("register");
}

/// Memory with a switch: "down" ends every open watch with an error and fails new ones.
struct Flaky {
    inner: Memory,
    down: AtomicBool,
    outage: broadcast::Sender<()>,
}

impl Flaky {
    fn new() -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: Memory::new(),
            down: AtomicBool::new(false),
            outage: broadcast::channel(4).0,
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.outage.send(());
        }
    }

    /// Down without ending the open watches: an outage only a probe of the registry notices
    /// (a registry restarted between two checks of a watch).
    fn set_down_quietly(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> chi_discovery::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::registry("flaky", "registry down"));
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for Flaky {
    fn backend(&self) -> &str {
        "flaky"
    }
    async fn register(&self, instance: &Instance) -> chi_discovery::Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> chi_discovery::Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, i: &Instance, h: HealthStatus) -> chi_discovery::Result<Liveness> {
        self.inner.keep_alive(i, h).await
    }
    async fn instances(&self, service: &str) -> chi_discovery::Result<Vec<Instance>> {
        self.check()?;
        self.inner.instances(service).await
    }
    async fn services(&self) -> chi_discovery::Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> chi_discovery::Result<WatchStream> {
        self.check()?;
        let changes = self.inner.watch(service).await?;
        let outage = self.outage.subscribe();
        // Forward the changes until an outage, then one error and the end of the stream.
        let s = stream::unfold(
            (changes, outage, false),
            |(mut changes, mut outage, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    item = changes.next() => item.map(|i| (i, (changes, outage, false))),
                    _ = outage.recv() => {
                        let e = Error::registry("flaky", "connection lost");
                        Some((Err(e), (changes, outage, true)))
                    }
                }
            },
        );
        Ok(s.boxed())
    }
}

/// A server on loopback.
struct Fixture {
    addr: std::net::SocketAddr,
    hub: Arc<Hub>,
    closing: Closing,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A server on loopback over `registry`, without a restart grace (a resync is served as is).
async fn serve(registry: Arc<dyn Registry>, shape: Shape, max_streams: u32) -> Fixture {
    serve_with_grace(registry, shape, max_streams, Duration::ZERO).await
}

/// A server on loopback over `registry` whose resyncs after an error hold removals for `grace`.
async fn serve_with_grace(
    registry: Arc<dyn Registry>,
    shape: Shape,
    max_streams: u32,
    grace: Duration,
) -> Fixture {
    let retry = RetryPolicy {
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let client = DiscoveryClient::builder()
        .retry(retry)
        .build(registry.clone());
    let hub = Hub::new(client, registry, grace);
    let server = XdsServer::new(hub.clone(), shape, max_streams);
    let closing = server.closing.clone();
    let service = server.into_service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Fixture {
        addr,
        hub,
        closing,
        server,
    }
}

fn round_robin() -> Shape {
    Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: None,
        ..Shape::default()
    }
}

fn topology() -> Geo {
    Geo::new([
        ("eu-west-1", vec!["eu-west-1a", "eu-west-1b"]),
        ("us-east-1", vec!["us-east-1a"]),
        ("ap-south-1", vec!["ap-south-1a"]),
    ])
}

fn at(region: Option<&str>, zone: Option<&str>) -> ClientPlace {
    ClientPlace {
        region: region.map(str::to_owned),
        zone: zone.map(str::to_owned),
    }
}

/// The ports of every endpoint of `assignments`, sorted.
fn cla_ports(assignments: &[ClusterLoadAssignment]) -> Vec<u32> {
    let mut ports: Vec<u32> = assignments
        .iter()
        .flat_map(|cla| cla.endpoints.iter())
        .flat_map(|l| l.lb_endpoints.iter())
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                AddressKind::SocketAddress(sa) => match sa.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => Some(p),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports
}
