//! Protocol tests: the ADS service in this process, a tonic client talking to it over an in-memory
//! connection, and the embedded `Memory` registry (wrapped in [`Flaky`] where an outage is
//! needed).
//!
//! They are deterministic. Every server a test starts ([`serve`]) pauses the clock of the test's
//! runtime (a current-thread one, as `#[tokio::test]` starts): time moves only when every task
//! (the registry's watches, the server's, the client's, the test's) waits, and then jumps to the
//! next timer. Nothing crosses a socket, so "every task waits" means the server has done all it
//! will do until a timer fires. Hence:
//!
//! - "nothing arrives" ([`Client::quiet`](client::Client::quiet)) is asserted once the server is
//!   idle and [`QUIET`] of its time, longer than every period it keeps, has passed: a late push
//!   cannot slip past it, and the wait costs no real time;
//! - a grace or a probe period is passed exactly, by the server's own timers, not by a sleep that
//!   hopes they fired;
//! - a state the server reaches by itself (a stream slot freed, a registry watch closed) is checked
//!   after [`settle`], not polled for.
//!
//! One client, [`Client`](client::Client), speaks both variants ([`Sotw`], [`Delta`]); scenarios
//! that hold for both are written once and run on each (see [`both_variants`]).

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::balance::Strategy;
use chi_discovery::registry::Memory;
use chi_discovery::routing::Geo;
use chi_discovery::{Instance, Registry};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use prost::Message;

use super::resources::{ClientPlace, Shape};

mod client;
mod clients;
mod delta;
mod grace;
mod load_balancer;
mod registry;
mod routing;
mod server;
mod sotw;

use client::{Delta, Reply, Sotw, Variant};
use registry::Flaky;
use server::{Fixture, serve, serve_with_grace, settle};

const SERVICE: &str = "order-service";
/// How long the server must stay silent for "nothing arrives": longer than every period it keeps
/// (the catalogue is read every 5 s, the registry probed every second), so a push one of them
/// would make is seen. Virtual time: it costs nothing.
const QUIET: Duration = Duration::from_secs(6);
/// How long a test waits for a response or a status before it fails (virtual time too): longer
/// than every grace these tests hold.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs scenarios written once, as `async fn NAME<V: Variant>()`, on both variants: the tests
/// `NAME::sotw` and `NAME::delta`.
macro_rules! both_variants {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sotw() {
                    super::$name::<super::Sotw>().await;
                }

                #[tokio::test]
                async fn delta() {
                    super::$name::<super::Delta>().await;
                }
            }
        )+
    };
}
pub(crate) use both_variants;

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

/// The resources of `r`, decoded as `M`.
fn decode<M: Message + Default>(r: &impl Reply) -> Vec<M> {
    r.packed()
        .into_iter()
        .map(|any| M::decode(any.value.as_slice()).expect("decodes"))
        .collect()
}

/// The ports of every endpoint of the assignments `r` carries, sorted.
fn ports(r: &impl Reply) -> Vec<u32> {
    cla_ports(&decode::<ClusterLoadAssignment>(r))
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
