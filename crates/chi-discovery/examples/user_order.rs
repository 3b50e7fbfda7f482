//! The service-author story end to end: `user-service` in two versions and two regions, and an
//! `order-service` that calls it by name, routed by `X-Service-Version` and `X-Client-Region`.
//!
//! Run (embedded registry): `cargo run -p chi-discovery --features axum --example user_order`
//! Against a real registry: `... --example user_order -- --registry consul://127.0.0.1:8500`
//! (or `etcd://127.0.0.1:2379`, `nacos://127.0.0.1:8848`; the full feature set then:
//! `--features full`).
//!
//! Every service is a [`Chi`] stack built from one config (the routing and balancing blocks
//! below, plus its own `registration`) and served by `integration::axum::Server`: registered once
//! its listener is bound, its `/health` answered and checked (by Consul's agent, or by chi for
//! the other registries), deregistered before it stops serving. `order-service` calls
//! `http://user-service/users/42` through `Chi::http` and prints who answered each request.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chi_discovery::config::{Config, Registries};
use chi_discovery::integration::axum::Server;
use chi_discovery::{Chi, HealthCheck, Registry, ServiceConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The shared blocks of every service's `chi-config.yaml`.
const CONFIG: &str = r#"
service_discovery:
  discovery:
    cache: { ttl: "30s", refresh_interval: "1s" }
  load_balancer:
    strategy: round_robin
    health_check_enabled: true
  routing:
    enable_version_routing: true
    enable_geo_routing: true
    default_version: "v1"
    regions:
      us-east-1: ["us-east-1a", "us-east-1b"]
      us-west-2: ["us-west-2a"]
"#;

/// The `user-service` fleet: (version, region, zone).
const FLEET: [(&str, &str, &str); 4] = [
    ("v1", "us-east-1", "us-east-1a"),
    ("v2", "us-east-1", "us-east-1b"),
    ("v1", "us-west-2", "us-west-2a"),
    ("v2", "us-west-2", "us-west-2a"),
];

type Running = (
    Arc<Chi>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<chi_discovery::Result<()>>,
);

/// Serves one instance of `name` with `app`, registered with `meta`, on a free port.
async fn start(
    registry: &Arc<dyn Registry>,
    name: &str,
    version: &str,
    meta: &[(&str, &str)],
    app: impl FnOnce(String) -> Router,
) -> Result<Running, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut registration = ServiceConfig::new(name, "127.0.0.1", port);
    registration.version = version.to_owned();
    registration.tags = vec![version.to_owned()];
    for (k, v) in meta {
        registration.meta.insert((*k).to_owned(), (*v).to_owned());
    }
    registration.health_check = Some(
        HealthCheck::http("/health")
            .every(Duration::from_secs(1))
            .timeout(Duration::from_millis(500)),
    );
    let mut config = Config::from_yaml(CONFIG)?;
    config.registration = Some(registration);
    let chi = Arc::new(Chi::over(config, registry.clone())?);
    let who = format!(
        "{name} {version} {}:{port}",
        meta.last().map_or("", |m| m.1)
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let served = {
        let chi = chi.clone();
        let app = app(who);
        tokio::spawn(async move {
            Server::new(&chi)
                .grace(Duration::from_millis(500))
                .serve_on(listener, app, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    Ok((chi, stop, served))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = match args.iter().position(|a| a == "--registry") {
        Some(i) => args.get(i + 1).cloned().ok_or("--registry needs a URL")?,
        None => "memory".to_owned(),
    };
    let registries = Registries::from_url(&url, &|k| std::env::var(k).ok())?;
    let registry = registries.connect().await?;
    println!("registry: {url}");

    let mut running = Vec::new();
    for (version, region, zone) in FLEET {
        let meta = [("region", region), ("zone", zone)];
        running.push(
            start(&registry, "user-service", version, &meta, |who| {
                Router::new().route("/users/{id}", get(move || async move { who }))
            })
            .await?,
        );
    }

    // order-service: its own stack, and calls to user-service by name.
    let order = start(&registry, "order-service", "v1", &[], |_| Router::new()).await?;
    let http = order.0.http();
    let discovery = order.0.discovery().clone();
    // Wait until every user-service instance is registered and checked healthy.
    for _ in 0..100 {
        let ready = discovery
            .discover("user-service")
            .await
            .ok()
            .is_some_and(|s| {
                s.instances().len() == FLEET.len()
                    && s.instances().iter().all(|i| i.health.is_usable())
            });
        if ready {
            break;
        }
        discovery.forget("user-service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (version, region) in [
        (None, Some("us-east-1")),
        (Some("v2"), Some("us-east-1")),
        (Some("v2"), Some("us-west-2")),
        (Some("v1"), Some("eu-central-1")),
        (Some("v3"), None),
    ] {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = version {
            headers.insert("x-service-version", v.parse()?);
        }
        if let Some(r) = region {
            headers.insert("x-client-region", r.parse()?);
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            let response = http.get("http://user-service/users/42", &headers).await?;
            answers.push(response.text().await?);
        }
        answers.sort();
        answers.dedup();
        println!(
            "order-service -> user-service  version={:<4} region={:<13} answered by: {}",
            version.unwrap_or("-"),
            region.unwrap_or("-"),
            answers.join(", ")
        );
    }

    running.push(order);
    for (_, stop, served) in running {
        let _ = stop.send(());
        served.await??;
    }
    println!("every service deregistered and drained");
    Ok(())
}
