//! `chi proxy`: an HTTP/1.1 and HTTP/2 (h2c) reverse proxy on hyper.
//!
//! Per request: the first path segment names the service (`/user-service/api/x` goes to
//! `/api/x`), whatever the `Host` header says: a client may reach the proxy by any name. With
//! `--route-by host` the `Host` header names it when it holds a name (`user-service` or
//! `user-service.anything`, not an IP address or `localhost`), the path going as it is. The
//! routing headers (`X-Service-Version`, `X-Client-Region`, `X-Client-Zone`) and the configured
//! balancer pick an instance ([`crate::pick`]); `X-Hash-Key` (or the header the config's
//! `load_balancer.hash_key_header` names) is the key of hashing strategies. A request that names
//! no region nor zone is placed by its client's address (`routing.client_regions`): the peer's,
//! or the one `X-Forwarded-For` gives when the peer is one of `routing.trusted_proxies`. A
//! failed attempt (connect error, timeout, 502/503/504) is retried on another instance, up to
//! `discovery.retry.max_attempts` attempts, for idempotent methods (all methods with
//! `--retry-all-methods`; a refused connection is retried for every method, as nothing was sent).
//! Every outcome feeds the service's outlier detector; an ejected instance is marked unhealthy in
//! the discovery cache, so routing leaves it out until the ejection ends.
//!
//! One concern per file, so each can be read (and tuned) alone:
//!
//! - `workers`: the accept loop and the worker threads, each with its own event loop;
//! - `route`: which service a request names, and the path it is forwarded with;
//! - `forward`: one request: its body and headers, then the attempts and their retries;
//! - `response`: the upstream's answer on its way back, and the proxy's own short answers;
//! - `headers`: hop-by-hop headers and `X-Forwarded-For`;
//! - `service`: what the proxy keeps per service (the library's
//!   [`ServiceState`](chi_discovery::routing::ServiceState) and more) and per instance;
//! - `sweep`: gives ejected instances back to routing when their ejection ends;
//! - `metrics`: the proxy's metric families beside the library's;
//! - `console`: what the console at `/ui` on the admin port shows of the proxy (picks per
//!   instance over the last minute, ejections, breaker refusals, slow-start ramps);
//! - `orca`: the backends' load reports, handed to `orca_weighted_round_robin`;
//! - `upstream`: kept-alive connections to the instances, per worker.

mod console;
mod forward;
mod headers;
mod metrics;
mod orca;
mod response;
mod route;
mod service;
mod sweep;
mod upstream;
mod workers;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chi_discovery::DiscoveryClient;
use chi_discovery::routing::ServiceStateConfig;

use crate::admin;
use crate::agent::Shutdown;
use crate::cli::{ProxyArgs, RouteBy};
use crate::failure::Failure;
use crate::progress;
use crate::source::Source;
use chi_discovery::routing::{ClientRegions, Routers, TrustedProxies};

use self::metrics::ProxyMetrics;
use self::service::Service;

/// Everything the workers share.
struct Proxy {
    client: DiscoveryClient,
    /// Makes each service's router from the config.
    routers: Routers,
    /// The settings of each service's library state (outlier detection).
    settings: ServiceStateConfig,
    /// Worker threads (each has an idle-connection list per instance).
    workers: usize,
    services: RwLock<HashMap<String, Arc<Service>>>,
    max_attempts: u32,
    retry_all_methods: bool,
    attempt_timeout: Duration,
    /// What names the service of a request.
    route_by: RouteBy,
    /// The region of a client that names none, by its address (`routing.client_regions`).
    client_regions: ClientRegions,
    /// The proxies whose `X-Forwarded-For` tells that address (`routing.trusted_proxies`).
    trusted_proxies: TrustedProxies,
    metrics: ProxyMetrics,
    /// Picks per instance over the last minute (the console's chart).
    picks: Arc<crate::console::picks::Picks>,
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install()?;
    let source = Source::resolve(&args.source)?;
    source.require_shared("proxy")?;
    let routers = crate::pick::routers(&source.config)?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .cache(source.config.cache)
        .retry(source.config.retry)
        .outage(source.config.outage)
        .build(registry.clone());
    let (metrics, exposition) = ProxyMetrics::register(&client, source.config.metrics);

    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let proxy = Arc::new(Proxy {
        client,
        routers,
        // The config file has no outlier section: the library's defaults (see there).
        settings: ServiceStateConfig {
            max_requests_per_instance: source.config.load_balancer.max_requests_per_instance,
            ..ServiceStateConfig::default()
        },
        workers,
        services: RwLock::new(HashMap::new()),
        max_attempts: source.config.retry.max_attempts.max(1),
        retry_all_methods: args.retry_all_methods,
        attempt_timeout: args.timeout,
        route_by: args.route_by,
        client_regions: source.config.routing.client_regions.clone(),
        trusted_proxies: source.config.routing.trusted_proxies.clone(),
        metrics,
        picks: crate::console::picks::Picks::start(),
    });
    tokio::spawn(sweep::sweep_ejections(Arc::downgrade(&proxy)));

    let health: admin::HealthFn = Arc::new(|| (true, serde_json::json!({"status": "ok"})));
    // Load the named services before serving, so the first requests do not wait.
    let warm = progress::services(&args.warm_up, registry.as_ref()).await?;
    progress::warm_up(&proxy.client, &warm).await;
    let console = console::console(&proxy, registry.clone());
    let admin_addr = admin::serve(args.admin, registry, health, exposition, console).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::failed(format!("cannot listen on {}: {e}", args.listen))
                .hint("pick another address with --listen 127.0.0.1:PORT")
        })?;
    let bound = listener.local_addr()?;
    let queues = workers::start(&proxy)?;
    println!(
        "chi proxy: listening on http://{bound} ({workers} worker(s)); admin on http://{admin_addr}"
    );
    workers::deal(listener, queues, shutdown).await
}
