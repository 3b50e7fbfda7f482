//! A tonic client balanced over instances that chi discovers, while instances come and go.
//!
//! Three real gRPC servers (the standard `grpc.health.v1.Health` service from `tonic-health`)
//! start on loopback and register in chi's embedded registry. The client's channel is tonic's
//! `Channel::balance_channel`, fed by [`chi_discovery::integration::Discover`] over a chi watch:
//! no address is configured in the client. Then a fourth server joins, one leaves (deregistered,
//! then stopped), and the calls keep succeeding on whoever is there.
//!
//! Run: `cargo run -p chi-discovery --example tonic_client`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chi_discovery::integration::Discover;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "health-demo";

struct Backend {
    id: String,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

/// Starts a gRPC health server on a free loopback port; counts the calls it serves.
async fn start(name: &str) -> Result<(Backend, Instance), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = reporter;
        let served = Server::builder()
            // Called once per request: a cheap place to count them.
            .trace_fn(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::Span::none()
            })
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            eprintln!("server error: {e}");
        }
    });
    let instance = Instance::new(SERVICE, "127.0.0.1", port)
        .with_id(name)
        .with_health(HealthStatus::Healthy);
    Ok((
        Backend {
            id: name.to_owned(),
            calls,
            stop: Some(stop),
        },
        instance,
    ))
}

async fn calls(
    client: &mut HealthClient<Channel>,
    n: usize,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut failed = 0;
    for _ in 0..n {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(Duration::from_secs(2), client.check(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                failed += 1;
                eprintln!("  call failed: {status}");
            }
            Err(_) => {
                failed += 1;
                eprintln!("  call timed out");
            }
        }
    }
    Ok(failed)
}

fn report(phase: &str, backends: &[Backend], before: &mut BTreeMap<String, usize>) {
    let counts: Vec<String> = backends
        .iter()
        .map(|b| {
            let now = b.calls.load(Ordering::Relaxed);
            let prev = before.insert(b.id.clone(), now).unwrap_or(0);
            format!("{}={}", b.id, now - prev)
        })
        .collect();
    println!("{phase:<32} calls per server: {}", counts.join(" "));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Arc::new(Memory::new());
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        let (b, instance) = start(name).await?;
        registry.register(&instance).await?;
        backends.push(b);
    }

    // The client knows only the service name.
    let discovery = DiscoveryClient::new(registry.clone());
    let watcher = discovery.watch(SERVICE).await?;
    let discover = Discover::new(watcher, |i: &Instance| {
        Endpoint::from_shared(format!("http://{}", i.authority()))
            .map(|e| e.connect_timeout(Duration::from_secs(1)))
    });
    let (channel, tx) = Channel::balance_channel::<String>(64);
    tokio::spawn(discover.forward_to_tonic(tx));
    let mut client = HealthClient::new(channel);

    let mut seen = BTreeMap::new();
    let mut failed = calls(&mut client, 60).await?;
    report("three servers", &backends, &mut seen);

    let (d, instance) = start("d").await?;
    registry.register(&instance).await?;
    backends.push(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    failed += calls(&mut client, 80).await?;
    report("d joined", &backends, &mut seen);

    // Leave gracefully: deregister first, let the watch carry it, then stop.
    registry.deregister(SERVICE, "a").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(stop) = backends[0].stop.take() {
        let _ = stop.send(());
    }
    failed += calls(&mut client, 60).await?;
    report("a deregistered and stopped", &backends, &mut seen);

    println!("failed calls: {failed}");
    for b in &mut backends {
        if let Some(stop) = b.stop.take() {
            let _ = stop.send(());
        }
    }
    Ok(())
}
