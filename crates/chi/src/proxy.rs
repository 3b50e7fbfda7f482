//! `chi proxy`: an HTTP/1.1 and HTTP/2 (h2c) reverse proxy on hyper.
//!
//! Per request: the first path segment names the service (`/user-service/api/x` goes to
//! `/api/x`), whatever the `Host` header says: a client may reach the proxy by any name. With
//! `--route-by host` the `Host` header names it when it holds a name (`user-service` or
//! `user-service.anything`, not an IP address or `localhost`), the path going as it is. The routing headers (`X-Service-Version`,
//! `X-Client-Region`, `X-Client-Zone`) and the configured balancer pick an instance
//! ([`crate::pick`]); `X-Hash-Key` is the key of hashing strategies. A failed attempt (connect
//! error, timeout, 502/503/504) is retried on another instance, up to `discovery.retry.max_attempts`
//! attempts, for idempotent methods (all methods with `--retry-all-methods`; a refused connection
//! is retried for every method, as nothing was sent). Every outcome feeds the service's
//! [`OutlierDetector`]; an ejected instance is marked unhealthy in the discovery cache, so routing
//! leaves it out until the ejection ends.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chi_discovery::health::{OutlierConfig, OutlierDetector};
use chi_discovery::metrics::{Metrics as LibraryMetrics, MetricsConfig};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance, Snapshot};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody as BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Metrics;

use crate::admin;
use crate::agent::Shutdown;
use crate::cli::{ProxyArgs, RouteBy};
use crate::failure::Failure;
use crate::pick::{Ask, Picked, Picker, Pickers};
use crate::progress;
use crate::source::Source;
use crate::upstream::{self, Idle, Lease};

/// Largest request body the proxy buffers (bodies are kept to replay them on retries).
const MAX_BODY: usize = 16 << 20;
/// Header naming the instance that answered, on every proxied response.
const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-chi-upstream");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type Labels = Vec<(String, String)>;
/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-service state: the picker and the passive health of its instances.
struct ServiceState {
    name: String,
    picker: Arc<dyn Picker>,
    outliers: OutlierDetector,
    /// The snapshot revision the outlier detector last saw.
    revision: AtomicU64,
    /// What the proxy keeps per instance (see [`Target`]), by id: remade when the snapshot
    /// revision changes, so a request only reads it.
    targets: ArcSwap<Targets>,
    /// Instances this proxy marked unhealthy in the discovery cache (ejected).
    marked: Mutex<Vec<String>>,
    metrics: ServiceMetrics,
}

type Targets = HashMap<String, Arc<Target>>;

/// One instance as the proxy calls it, made once, not per request: its `Host` header, its
/// kept-alive connections and its selection counter.
struct Target {
    id: String,
    address: String,
    port: u16,
    host: HeaderValue,
    /// The `X-Chi-Upstream` header of its answers (none when the id is not a header value).
    upstream: Option<HeaderValue>,
    /// Kept-alive connections to it, per worker.
    idle: Arc<Idle>,
    /// The library's `load_balancer_selections` counter of this instance.
    selections: Counter,
}

impl Target {
    /// True when this target calls `instance` (same id, address and port).
    fn serves(&self, instance: &Instance) -> bool {
        self.id == instance.id && self.port == instance.port && self.address == instance.address
    }
}

/// The metric handles of one service, made once (no label allocation per request).
struct ServiceMetrics {
    attempt_ok: Counter,
    attempt_failed: Counter,
    /// Requests by status class, 1xx to 5xx.
    by_class: [Counter; 5],
    latency: Histogram,
}

struct Proxy {
    client: DiscoveryClient,
    pickers: Pickers,
    /// Worker threads (each has an idle-connection list per instance).
    workers: usize,
    services: RwLock<HashMap<String, Arc<ServiceState>>>,
    max_attempts: u32,
    retry_all_methods: bool,
    attempt_timeout: Duration,
    /// What names the service of a request.
    route_by: RouteBy,
    requests: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    library: LibraryMetrics,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let source = Source::resolve(&args.source)?;
    source.require_shared("proxy")?;
    let pickers = Pickers::from_config(&source.config)?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .cache(source.config.cache)
        .retry(source.config.retry)
        .build(registry.clone());

    let mut metrics = Metrics::default();
    let requests = Family::<Labels, Counter>::default();
    let attempts = Family::<Labels, Counter>::default();
    let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
        (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
    );
    metrics.register(
        "chi_proxy_requests",
        "Requests by service and status class",
        requests.clone(),
    );
    metrics.register(
        "chi_proxy_attempts",
        "Upstream attempts by service and outcome",
        attempts.clone(),
    );
    metrics.register(
        "chi_proxy_request_duration_seconds",
        "Time from request to response head, retries included",
        latency.clone(),
    );
    // The library's metrics too: the spec's discovery and selection metrics, cache and instances.
    let library = LibraryMetrics::register(&mut metrics, MetricsConfig::default());
    library.instrument_client(&mut metrics, &client);
    let metrics = Arc::new(metrics);

    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let proxy = Arc::new(Proxy {
        client,
        pickers,
        workers,
        services: RwLock::new(HashMap::new()),
        max_attempts: source.config.retry.max_attempts.max(1),
        retry_all_methods: args.retry_all_methods,
        attempt_timeout: args.timeout,
        route_by: args.route_by,
        requests,
        attempts,
        latency,
        library,
    });
    tokio::spawn(sweep_ejections(Arc::downgrade(&proxy)));

    let health: admin::HealthFn = Arc::new(|| (true, serde_json::json!({"status": "ok"})));
    let render: admin::MetricsFn = Arc::new(move || {
        let mut out = String::new();
        if encode(&mut out, &metrics).is_err() {
            out.clear();
        }
        out
    });
    // Load the named services before serving, so the first requests do not wait.
    let warm = progress::services(&args.warm_up, registry.as_ref()).await?;
    progress::warm_up(&proxy.client, &warm).await;
    let admin_addr = admin::serve(args.admin, registry, health, render).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::failed(format!("cannot listen on {}: {e}", args.listen))
                .hint("pick another address with --listen 127.0.0.1:PORT")
        })?;
    let bound = listener.local_addr()?;
    // nginx's shape: every worker thread runs its own event loop and upstream connections, so a
    // request never changes thread (no work stealing, no cross-thread wake-ups). Connections
    // are dealt to the workers in turn: workers racing to accept on one socket left one of two
    // with most of them (about 130 vs 50 CPU ticks under wrk -c50).
    let mut queues = Vec::with_capacity(workers);
    for n in 0..workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let proxy = proxy.clone();
        std::thread::Builder::new()
            .name(format!("chi-proxy-{n}"))
            .spawn(move || runtime.block_on(serve(proxy, n, rx)))?;
        queues.push(tx);
    }
    println!(
        "chi proxy: listening on http://{bound} ({workers} worker(s)); admin on http://{admin_addr}"
    );
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The worker registers the socket with its own event loop.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the connection to a worker: {e}");
                continue;
            }
        };
        if queues[next].send((stream, peer)).is_err() {
            return Err(Failure::failed(format!("proxy worker {next} stopped")).into());
        }
        next = (next + 1) % queues.len();
    }
}

/// A connection for a worker: the socket and the peer address.
type Accepted = (std::net::TcpStream, SocketAddr);

/// One worker: serves the connections dealt to it on its own (single-threaded) runtime.
async fn serve(
    proxy: Arc<Proxy>,
    worker: usize,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) {
    while let Some((stream, peer)) = accepted.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "worker cannot use the connection: {e}");
                continue;
            }
        };
        let proxy = proxy.clone();
        // X-Forwarded-For of this connection, made once for all its requests.
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).ok();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let peer_ip = peer_ip.clone();
                async move {
                    Ok::<_, Infallible>(proxy.handle(worker, req, peer, peer_ip.as_ref()).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// Ends ejections in the discovery overlay once the detector lets an instance back in.
async fn sweep_ejections(proxy: std::sync::Weak<Proxy>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(proxy) = proxy.upgrade() else { return };
        let services: Vec<(String, Arc<ServiceState>)> = proxy
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, state) in services {
            let mut marked = state.marked.lock().unwrap_or_else(|e| e.into_inner());
            marked.retain(|id| {
                let still = state.outliers.is_ejected(id);
                if !still {
                    tracing::info!(service = %name, %id, "ejection ended");
                    proxy.client.set_health(&name, id, None);
                }
                still
            });
        }
    }
}

/// Methods safe to send twice.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Statuses that count as a failed attempt (and may be retried).
fn failed_status(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

const HOPS: usize = 9;
/// Headers that belong to one hop only (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names marks the hop-by-hop ones present; most messages have none, and
    // a backend's answer usually has only `Connection: keep-alive`. Nothing is allocated then.
    let mut present = [false; HOPS];
    for name in headers.keys() {
        let i = match name.as_str() {
            "connection" => 0,
            "proxy-connection" => 1,
            "keep-alive" => 2,
            "te" => 3,
            "trailer" => 4,
            "transfer-encoding" => 5,
            "upgrade" => 6,
            "proxy-authenticate" => 7,
            "proxy-authorization" => 8,
            _ => continue,
        };
        present[i] = true;
    }
    if !present.contains(&true) {
        return;
    }
    // Headers that `Connection` names, when the message has them (`keep-alive` and `close`
    // usually name none).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !(n.is_empty()
                || n.eq_ignore_ascii_case("keep-alive")
                || n.eq_ignore_ascii_case("close"))
                && headers.contains_key(*n)
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
}

/// The service and the path to forward. By path (the default): the first path segment names
/// the service and the rest of the path goes, whatever the Host header says, so a client that
/// reaches the proxy by its own DNS name (`chi-proxy.internal/user-service/x`) gets
/// `user-service`. By host: the Host header's first DNS label, the path going as it is (`None`);
/// a Host that is an IP address or `localhost` names no service, and the path does. Borrowed
/// from the request: nothing is copied when the path goes as it is.
pub(crate) fn target<'a>(
    by: RouteBy,
    host: Option<&'a str>,
    path_and_query: &'a str,
) -> Option<(&'a str, Option<Cow<'a, str>>)> {
    if by == RouteBy::Host
        && let Some(service) = host.and_then(service_of_host)
    {
        return Some((service, None));
    }
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (service, tail) = rest.split_at(end);
    if service.is_empty() || !valid_name(service) {
        return None;
    }
    let forwarded = if tail.starts_with('/') {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned(format!("/{tail}"))
    };
    Some((service, Some(forwarded)))
}

/// The service a Host header names: its first DNS label, unless it is an IP address or
/// `localhost`.
fn service_of_host(host: &str) -> Option<&str> {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let first = name.split('.').next().unwrap_or_default();
    (!first.is_empty()
        && first != "localhost"
        && valid_name(first)
        && !name.starts_with('[')
        && name.parse::<std::net::IpAddr>().is_err())
    .then_some(first)
}

impl RouteBy {
    /// The answer to a request that names no service.
    fn hint(self) -> &'static str {
        match self {
            RouteBy::Path => {
                "chi proxy: name the service in the first path segment (/user-service/...)"
            }
            RouteBy::Host => {
                "chi proxy: name the service in the Host header (user-service.internal) or the first path segment (/user-service/...)"
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    let mut text = text.into();
    text.push('\n');
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Proxy {
    fn service(&self, name: &str) -> Arc<ServiceState> {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return s.clone();
        }
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        let label = |k: &str, v: &str| {
            vec![
                ("service".to_owned(), name.to_owned()),
                (k.to_owned(), v.to_owned()),
            ]
        };
        // One statement per handle: a family's read guard must be gone before the next
        // `get_or_create` of the same family may need its write lock.
        let attempt_ok = self
            .attempts
            .get_or_create(&label("outcome", "success"))
            .clone();
        let attempt_failed = self
            .attempts
            .get_or_create(&label("outcome", "failure"))
            .clone();
        let mut by_class: [Counter; 5] = Default::default();
        for (slot, c) in by_class.iter_mut().zip(["1xx", "2xx", "3xx", "4xx", "5xx"]) {
            let counter = self.requests.get_or_create(&label("code", c)).clone();
            *slot = counter;
        }
        let latency = self
            .latency
            .get_or_create(&vec![("service".to_owned(), name.to_owned())])
            .clone();
        let metrics = ServiceMetrics {
            attempt_ok,
            attempt_failed,
            by_class,
            latency,
        };
        let state = Arc::new(ServiceState {
            name: name.to_owned(),
            picker: self.pickers.make(),
            outliers: OutlierDetector::new(OutlierConfig {
                consecutive_failures: 3,
                base_ejection_time: Duration::from_secs(10),
                max_ejection_percent: 50,
                ..OutlierConfig::default()
            }),
            revision: AtomicU64::new(u64::MAX),
            targets: ArcSwap::default(),
            marked: Mutex::new(Vec::new()),
            metrics,
        });
        map.insert(name.to_owned(), state.clone());
        state
    }

    fn record(&self, state: &ServiceState, id: &str, success: bool) {
        let service = state.name.as_str();
        if success {
            state.metrics.attempt_ok.inc();
        } else {
            state.metrics.attempt_failed.inc();
        }
        if success {
            state.outliers.record_success(id);
        } else if state.outliers.record_failure(id) {
            tracing::warn!(service, id, "instance ejected after consecutive failures");
            state
                .marked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.to_owned());
            self.client
                .set_health(service, id, Some(HealthStatus::Unhealthy));
        }
    }

    /// The [`Target`] of `instance`: found by id (and address, which an update may change), or
    /// made when the instance is newer than the targets (another worker is remaking them).
    fn target_of(&self, state: &ServiceState, instance: &Instance) -> Result<Arc<Target>, String> {
        if let Some(t) = state.targets.load().get(&instance.id)
            && t.serves(instance)
        {
            return Ok(t.clone());
        }
        let target = Arc::new(self.new_target(state, instance)?);
        state.targets.rcu(|targets| {
            let mut targets = Targets::clone(targets);
            targets.insert(instance.id.clone(), target.clone());
            targets
        });
        Ok(target)
    }

    fn new_target(&self, state: &ServiceState, instance: &Instance) -> Result<Target, String> {
        let text = instance.authority();
        let host = HeaderValue::from_str(&text)
            .map_err(|e| format!("{}: bad upstream address {text:?}: {e}", instance.id))?;
        Ok(Target {
            id: instance.id.clone(),
            address: instance.address.clone(),
            port: instance.port,
            host,
            idle: Arc::new(Idle::new(self.workers)),
            upstream: HeaderValue::from_str(&instance.id).ok(),
            selections: self.library.selection_counter(
                &state.name,
                &instance.id,
                state.picker.strategy(),
            ),
        })
    }

    /// The cached snapshot of `service`, else a discovery (which waits for the registry).
    /// Requests that the cache answers are not counted as discovery requests.
    async fn snapshot(&self, service: &str) -> chi_discovery::Result<Snapshot> {
        match self.client.cached(service) {
            Some(s) => Ok(s),
            None => self.client.discover(service).await,
        }
    }

    async fn handle(
        &self,
        worker: usize,
        req: Request<Incoming>,
        peer: SocketAddr,
        peer_ip: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        // The service and the path, borrowed from the request until it is forwarded. Routing
        // by path reads no Host header.
        let host = match self.route_by {
            RouteBy::Path => None,
            RouteBy::Host => parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str())),
        };
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Some((service, path)) = target(self.route_by, host, pq) else {
            return plain(StatusCode::BAD_REQUEST, self.route_by.hint());
        };
        let snapshot = match self.snapshot(service).await {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("chi proxy: service `{service}` has no instances"),
                );
            }
            Err(e) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("chi proxy: cannot discover `{service}`: {e}"),
                );
            }
        };
        let state = self.service(service);
        let path = match path {
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            Some(path) => {
                let parsed = match path {
                    Cow::Borrowed(p) => PathAndQuery::try_from(p),
                    Cow::Owned(p) => PathAndQuery::try_from(p),
                };
                let Ok(path) = parsed else {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "chi proxy: the path to forward is not a valid URI path",
                    );
                };
                path
            }
        };
        self.track(&state, &snapshot);
        let response = self
            .forward(
                worker,
                &state,
                snapshot,
                (parts, body),
                path,
                (peer, peer_ip),
            )
            .await;
        let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
        state.metrics.by_class[class].inc();
        state.metrics.latency.observe(start.elapsed().as_secs_f64());
        response
    }

    /// Tells the outlier detector the current instance set, and remakes the targets, when the
    /// snapshot changed: a target whose instance kept its address keeps its connections.
    fn track(&self, state: &ServiceState, snapshot: &Snapshot) {
        let rev = snapshot.revision();
        // Read first: a write per request would bounce the line between the workers.
        if state.revision.load(Ordering::Acquire) == rev
            || state.revision.swap(rev, Ordering::AcqRel) == rev
        {
            return;
        }
        state
            .outliers
            .set_hosts(snapshot.instances().iter().map(|i| i.id.as_str()));
        let old = state.targets.load_full();
        let targets: Targets = snapshot
            .instances()
            .iter()
            .filter_map(|i| {
                let target = match old.get(&i.id) {
                    Some(t) if t.serves(i) => t.clone(),
                    // A bad address is reported by the pick that meets it.
                    _ => Arc::new(self.new_target(state, i).ok()?),
                };
                Some((i.id.clone(), target))
            })
            .collect();
        state.targets.store(Arc::new(targets));
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        worker: usize,
        state: &ServiceState,
        first: Snapshot,
        (parts, body): (hyper::http::request::Parts, Incoming),
        path: PathAndQuery,
        (peer, peer_ip): (SocketAddr, Option<&HeaderValue>),
    ) -> Response<ProxyBody> {
        let service = state.name.as_str();
        // A body is kept to replay it on a retry; most requests (GET) have none to read.
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("chi proxy: cannot read the request body: {e}"),
                    );
                }
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // `Host` stays: each attempt replaces its value in place with the instance's (a map
        // cloned to its length would grow to take a new entry).
        match (
            headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            peer_ip,
        ) {
            (None, Some(ip)) => {
                headers.insert(X_FORWARDED_FOR, ip.clone());
            }
            (prev, _) => {
                let value = match prev {
                    Some(prev) => format!("{prev}, {}", peer.ip()),
                    None => peer.ip().to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
        }
        let retry_any = self.retry_all_methods || idempotent(&parts.method);
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = String::from("no instance could be picked");
        let mut first = Some(first);
        let ask = Ask::from_headers(&headers);
        for attempt in 1..=self.max_attempts {
            // A retry sees the latest snapshot (ejections are laid over it).
            let snapshot = match first.take() {
                Some(s) => s,
                None => match self.snapshot(service).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = e.to_string();
                        break;
                    }
                },
            };
            let Some(picked) = state.picker.pick(&snapshot, &ask, &tried) else {
                break;
            };
            let id = picked.instance().id.as_str();
            let target = match self.target_of(state, picked.instance()) {
                Ok(t) => t,
                Err(e) => {
                    last_error = e;
                    tried.push(id.to_owned());
                    continue;
                }
            };
            target.selections.inc();
            // Origin form (`/path?query`): the connection is to the instance itself, and the
            // Host header names it.
            let uri = Uri::from(path.clone());
            let last = attempt == self.max_attempts;
            let mut up = Request::new(Full::new(body.clone()));
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = headers.clone();
            up.headers_mut().insert(header::HOST, target.host.clone());
            let to = (picked.instance().address.as_str(), picked.instance().port);
            let sent = upstream::send(target.idle.clone(), worker, to, CONNECT_TIMEOUT, up);
            match tokio::time::timeout(self.attempt_timeout, sent).await {
                Ok(Ok((resp, lease))) if !failed_status(resp.status()) || last || !retry_any => {
                    self.record(state, id, !failed_status(resp.status()));
                    return upstream_response(resp, picked, &target, lease);
                }
                Ok(Ok((resp, _))) => {
                    self.record(state, id, false);
                    last_error = format!("{id} answered {}", resp.status());
                }
                Ok(Err(e)) => {
                    self.record(state, id, false);
                    last_error = format!("{id}: {e}");
                    let nothing_sent = e.nothing_sent();
                    if !(retry_any || nothing_sent) {
                        break;
                    }
                }
                Err(_) => {
                    self.record(state, id, false);
                    last_error = format!("{id}: no answer within {:?}", self.attempt_timeout);
                    if !retry_any {
                        break;
                    }
                }
            }
            tracing::debug!(service, attempt, "attempt failed: {last_error}");
            tried.push(id.to_owned());
        }
        plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "chi proxy: `{service}` failed after {} attempt(s): {last_error}",
                tried.len()
            ),
        )
    }
}

fn upstream_response(
    resp: Response<Incoming>,
    picked: Picked,
    target: &Target,
    lease: Lease,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = &target.upstream {
        parts.headers.insert(UPSTREAM_HEADER, v.clone());
    }
    let lease = if body.is_end_stream() {
        // Nothing more to read: the connection can serve the next request now.
        lease.release();
        None
    } else {
        Some(lease)
    };
    let body = Guarded {
        inner: body,
        _picked: picked,
        lease,
    };
    Response::from_parts(parts, BoxBody::new(body))
}

/// A response body that holds the pick (the balancer's in-flight guard) until the body is done.
struct Guarded {
    inner: Incoming,
    _picked: Picked,
    /// The upstream connection, returned to its idle list once the body is read to the end
    /// (dropped, so closed, if the client goes away first).
    lease: Option<Lease>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if done && let Some(lease) = self.lease.take() {
            lease.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use hyper::header::{HeaderMap, HeaderValue};

    use super::{strip_hop_by_hop, target};
    use crate::cli::RouteBy;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "yes"),
            ("content-type", "text/plain"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-keep"]);

        let mut plain = HeaderMap::new();
        plain.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn service_from_path_or_host() {
        let t = |by: RouteBy, h: Option<&str>, p: &str| {
            target(by, h, p)
                .map(|(s, path)| (s.to_owned(), path.map_or(p.to_owned(), Cow::into_owned)))
        };
        let path = |h, p| t(RouteBy::Path, h, p);
        let host = |h, p| t(RouteBy::Host, h, p);
        assert_eq!(
            path(Some("127.0.0.1:15001"), "/user-service/api/x?q=1"),
            Some(("user-service".into(), "/api/x?q=1".into()))
        );
        assert_eq!(
            path(Some("localhost:15001"), "/user-service"),
            Some(("user-service".into(), "/".into()))
        );
        assert_eq!(
            path(Some("127.0.0.1"), "/user-service?x=1"),
            Some(("user-service".into(), "/?x=1".into()))
        );
        // Reached by its own DNS name, the proxy still routes by path.
        assert_eq!(
            path(Some("chi-proxy.internal"), "/user-service/x"),
            Some(("user-service".into(), "/x".into()))
        );
        assert_eq!(path(Some("user-service"), "/"), None);
        assert_eq!(path(None, "/"), None);
        assert_eq!(path(None, "/bad name/x"), None);

        assert_eq!(
            host(Some("user-service:15001"), "/api/x"),
            Some(("user-service".into(), "/api/x".into()))
        );
        assert_eq!(
            host(Some("user-service.internal"), "/"),
            Some(("user-service".into(), "/".into()))
        );
        // An address names no service: the path does.
        assert_eq!(
            host(Some("127.0.0.1:15001"), "/user-service/api"),
            Some(("user-service".into(), "/api".into()))
        );
        assert_eq!(
            host(Some("localhost"), "/user-service"),
            Some(("user-service".into(), "/".into()))
        );
        assert_eq!(host(Some("[::1]:15001"), "/"), None);
        assert_eq!(host(None, "/"), None);
    }
}
