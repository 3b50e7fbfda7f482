//! The scenario itself, shared by the example (`main.rs`, which prints it) and the integration
//! tests (`tests/it/user_order.rs`, which run it against the embedded registry, Consul, etcd and
//! Nacos and check every answer), so that what the README shows is what the tests prove.
//!
//! Every service is a [`Chi`] stack built from one config ([`CONFIG`], plus its own
//! `registration`) and served by `integration::axum::Server`: registered once its listener is
//! bound, its `/health` answered and checked (by Consul's agent, or by chi for the other
//! registries), deregistered before it stops serving. `order-service` calls
//! `http://user-service/users/42` through `Chi::http` with each of [`REQUESTS`]' headers; every
//! `user-service` instance answers with its version and zone.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use chi_discovery::config::{Config, Registries};
use chi_discovery::routing::Route;
use chi_discovery::{Chi, HealthCheck, Registry, ServiceConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the scenario's functions return.
pub(crate) type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

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

/// The requests `order-service` makes: its `X-Service-Version` and `X-Client-Region` headers.
pub(crate) const REQUESTS: [(Option<&str>, Option<&str>); 5] = [
    (None, Some("us-east-1")),
    (Some("v2"), Some("us-east-1")),
    (Some("v2"), Some("us-west-2")),
    (Some("v1"), Some("eu-central-1")),
    (Some("v3"), None),
];

/// Calls per request: enough for round robin to reach every instance of a routed set.
const CALLS: usize = 4;

/// How long the fleet may take to be registered and checked healthy.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One of [`REQUESTS`] and who answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The `X-Service-Version` header sent, if any.
    pub(crate) version: Option<&'static str>,
    /// The `X-Client-Region` header sent, if any.
    pub(crate) region: Option<&'static str>,
    /// The instances that answered its calls, as `VERSION ZONE`, sorted, once each.
    pub(crate) answered_by: Vec<String>,
    /// The routing rules that decided, as the stack's router says: `version STEP, geo STEP`
    /// (`routing::VersionStep`, `routing::GeoStep`).
    pub(crate) rules: String,
}

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
    app: Router,
) -> Result<Running> {
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
    let (stop, stopped) = oneshot::channel::<()>();
    let served = {
        let chi = chi.clone();
        tokio::spawn(async move {
            chi.server()?
                .grace(Duration::from_millis(500))
                .serve_on(listener, app, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    Ok((chi, stop, served))
}

/// Runs the scenario on the registry at `url` (`memory`, `consul://host:port`,
/// `etcd://host:port`, `nacos://host:port`): starts the fleet and `order-service`, waits until
/// every instance is registered and healthy, makes [`REQUESTS`], then stops every service (each
/// deregisters, then drains). Who answered each request, in order.
pub(crate) async fn run(url: &str) -> Result<Vec<Answer>> {
    let registries = Registries::from_url(url, &|k| std::env::var(k).ok())?;
    let registry = registries.connect().await?;

    let mut running = Vec::new();
    for (version, region, zone) in FLEET {
        let meta = [("region", region), ("zone", zone)];
        let who = format!("{version} {zone}");
        let app = Router::new().route("/users/{id}", get(move || async move { who }));
        running.push(start(&registry, "user-service", version, &meta, app).await?);
    }
    // order-service: its own stack, and calls to user-service by name.
    let order = start(&registry, "order-service", "v1", &[], Router::new()).await?;
    let asked = ask(&order.0).await;
    running.push(order);
    for (_, stop, served) in running {
        let _ = stop.send(());
        served.await??;
    }
    asked
}

/// Waits for the fleet, then makes every request of [`REQUESTS`] [`CALLS`] times.
async fn ask(order: &Chi) -> Result<Vec<Answer>> {
    let http = order.http();
    let discovery = order.discovery();
    let start = Instant::now();
    loop {
        discovery.forget("user-service");
        let healthy = discovery
            .discover("user-service")
            .await
            .map(|s| {
                s.instances()
                    .iter()
                    .filter(|i| i.health.is_usable())
                    .count()
            })
            .unwrap_or(0);
        if healthy == FLEET.len() {
            break;
        }
        if start.elapsed() > READY_WITHIN {
            return Err(format!(
                "{healthy} of {} user-service instances registered and healthy after {READY_WITHIN:?}",
                FLEET.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot = discovery.discover("user-service").await?;
    let router = order.routers().router();
    let mut answers = Vec::new();
    for (version, region) in REQUESTS {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = version {
            headers.insert("x-service-version", v.parse()?);
        }
        if let Some(r) = region {
            headers.insert("x-client-region", r.parse()?);
        }
        let mut answered_by = Vec::new();
        for _ in 0..CALLS {
            let response = http.get("http://user-service/users/42", &headers).await?;
            answered_by.push(response.error_for_status()?.text().await?);
        }
        answered_by.sort();
        answered_by.dedup();
        let decision = router
            .route(&snapshot, &Route::from_headers(&headers))
            .ok_or("no route")?
            .decision();
        answers.push(Answer {
            version,
            region,
            answered_by,
            rules: format!(
                "version {}, geo {}",
                decision.version.as_str(),
                decision.geo.as_str()
            ),
        });
    }
    Ok(answers)
}
