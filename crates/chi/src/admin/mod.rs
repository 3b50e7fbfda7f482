//! The admin HTTP port of `chi agent` and `chi proxy`: `/health`, `/metrics`, the console, and
//! on `chi agent` only the registry API under `/v1` that `chi://host:port` (the library's
//! `registry::chi`) speaks; its JSON is the library's `registry::chi::wire`, shared with that
//! client. `chi proxy`'s admin port has no `/v1`: it serves what it says, nothing that writes.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /health` | 200 when the process is healthy, else 503; a JSON body says why |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/services` | names of services with instances |
//! | `GET /v1/services/{name}` | its instances (JSON array) |
//! | `GET /v1/services/{name}/watch` | its changes as they happen: JSON lines, a `reset` first, a `heartbeat` while quiet |
//! | `PUT /v1/services/{name}/instances/{id}` | register (body: an instance); 502 when a registry behind the agent failed (with several, the message names which hold it and which do not) |
//! | `DELETE /v1/services/{name}/instances/{id}` | deregister |
//! | `POST /v1/services/{name}/instances/{id}/keepalive` | keep alive (body: instance and health) |
//! | `GET /ui` ... | the console ([`crate::console`]) |
//!
//! Each `/v1` call passes [`Access`] first: reads need the read token when one is set, writes
//! the write token or a scope matching the service (401/403 with a JSON body otherwise, nothing
//! changed). An agent fronting a registry other than its embedded one refuses writes (403)
//! unless `service_discovery.agent.forward_writes` is on. It binds to loopback by default; the
//! agent refuses a wider address without a write token unless started with `--insecure`. It is
//! served through a [`Door`], over TLS or not: its connections, requests, timeouts and request
//! bodies are bounded (`--max-body`: a larger JSON body is `413`, naming the bound).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::extract::{FromRequest, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chi_discovery::registry::chi::wire::{Alive, Event, HEARTBEAT, KeepAlive, check_names};
use chi_discovery::{Instance, Registry};
use futures_util::StreamExt;

use crate::auth::{Access, Need, Refusal};
use crate::failure::Failure;
use crate::limits::{Door, Reason};

/// Answers `/health`: healthy or not, and a JSON body.
pub(crate) type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;
/// Renders `/metrics`.
pub(crate) type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    health: HealthFn,
    metrics: MetricsFn,
}

/// The registry API under `/v1` (`chi agent` only): the registry it serves and who may use it.
#[derive(Clone)]
pub(crate) struct RegistryApi {
    /// The registry the API reads and writes.
    pub(crate) registry: Arc<dyn Registry>,
    /// The tokens.
    pub(crate) access: Arc<Access>,
    /// `None` when writes go through; else why they do not (an agent fronting another
    /// registry without `forward_writes`).
    pub(crate) writes_off: Option<String>,
}

impl RegistryApi {
    /// Lets a call through (`None`), or answers the refusal.
    fn refuses(&self, headers: &HeaderMap, need: Need<'_>) -> Option<Response> {
        if let Err(r) = self.access.check(headers, need) {
            return Some(deny(r));
        }
        match (need, &self.writes_off) {
            (Need::Write(_), Some(why)) => Some(deny(self.access.refuse(
                StatusCode::FORBIDDEN,
                "forwarding_off",
                why.clone(),
            ))),
            _ => None,
        }
    }
}

fn deny(r: Refusal) -> Response {
    tracing::warn!(
        reason = r.reason,
        "registry API call refused: {}",
        r.message
    );
    r.into_response()
}

/// Binds the admin port and serves `/health`, `/metrics`, the registry API when `api` is given,
/// and `extra` (the console's routes) through `door` in the background, request bodies capped at
/// `max_body` bytes, over TLS with `tls`; returns the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    api: Option<RegistryApi>,
    (health, metrics): (HealthFn, MetricsFn),
    extra: Router,
    (door, max_body): (Door, usize),
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<SocketAddr> {
    let state = AdminState { health, metrics };
    let mut app = Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
        .merge(extra);
    if let Some(api) = api {
        app = app.merge(registry_api(api));
    }
    let app = capped(app, &door, max_body);
    match tls {
        Some(acceptor) => {
            let (listener, bound) = bind(addr).await?;
            tokio::spawn(crate::tls::serve(listener, app, acceptor, door));
            Ok(bound)
        }
        None => listen(addr, app, door).await,
    }
}

/// The `/v1` routes.
fn registry_api(api: RegistryApi) -> Router {
    Router::new()
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(instances))
        .route("/v1/services/{name}/watch", get(watch))
        .route(
            "/v1/services/{name}/instances/{id}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/services/{name}/instances/{id}/keepalive",
            post(keep_alive),
        )
        .with_state(api)
}

/// Binds `addr` and serves `app` on it through `door` in the background; returns the bound
/// address.
pub(crate) async fn listen(
    addr: SocketAddr,
    app: Router,
    door: Door,
) -> anyhow::Result<SocketAddr> {
    let (listener, bound) = bind(addr).await?;
    door.serve_router(listener, app);
    Ok(bound)
}

/// `GET /metrics` answering `metrics` (`chi xds --admin`).
pub(crate) fn metrics_route(metrics: MetricsFn) -> Router {
    Router::new().route(
        "/metrics",
        get(move || std::future::ready(exposition(&metrics))),
    )
}

async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::failed(format!("cannot listen on the admin address {addr}: {e}"))
            .hint("pick another with --admin 127.0.0.1:PORT (port 0 picks a free one)")
    })?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// `router` with request bodies capped at `max_body` bytes: a declared length over it is
/// refused before reading, a chunked body once it passes it, both with a `413` that says the
/// bound (axum's own says only "length limit exceeded").
pub(crate) fn capped(router: Router, door: &Door, max_body: usize) -> Router {
    let door = door.clone();
    let message: Arc<str> = Arc::from(format!(
        "chi {}: the request body is over the limit: at most {max_body} bytes (--max-body)\n",
        door.server()
    ));
    router
        .layer(axum::middleware::map_response(move |resp: Response| {
            let (door, message) = (door.clone(), message.clone());
            async move {
                if resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
                    return resp;
                }
                door.count(Reason::BodySize);
                (StatusCode::PAYLOAD_TOO_LARGE, message.to_string()).into_response()
            }
        }))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Response {
    (status, e.to_string()).into_response()
}

async fn health_handler(State(s): State<AdminState>) -> Response {
    let (ok, body) = (s.health)();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_handler(State(s): State<AdminState>) -> Response {
    exposition(&s.metrics)
}

fn exposition(metrics: &MetricsFn) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics(),
    )
        .into_response()
}

async fn services(State(s): State<RegistryApi>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refuses(&headers, Need::Read) {
        return r;
    }
    match s.registry.services().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// A refusal when the path's service name or instance id is not one chi accepts (the same rule
/// every registry applies), so a bad name is a clear 400 here, never a different instance.
fn invalid(name: &str, id: Option<&str>) -> Option<Response> {
    check_names(name, id)
        .err()
        .map(|e| error(StatusCode::BAD_REQUEST, e))
}

async fn instances(
    State(s): State<RegistryApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.refuses(&headers, Need::Read) {
        return r;
    }
    if let Some(r) = invalid(&name, None) {
        return r;
    }
    match s.registry.instances(&name).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// Streams the registry's watch of the service as JSON lines ([`Event`]), until the client goes.
async fn watch(
    State(s): State<RegistryApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.refuses(&headers, Need::Read) {
        return r;
    }
    if let Some(r) = invalid(&name, None) {
        return r;
    }
    let changes = match s.registry.watch(&name).await {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let lines = futures_util::stream::unfold(changes, |mut changes| async move {
        let event = tokio::select! {
            item = changes.next() => match item? {
                Ok(change) => Event::from(change),
                Err(e) => Event::Error { message: e.to_string() },
            },
            () = tokio::time::sleep(HEARTBEAT) => Event::Heartbeat,
        };
        let mut line = serde_json::to_vec(&event).unwrap_or_else(|e| {
            let message = format!("cannot encode a change: {e}");
            serde_json::json!({"type": "error", "message": message})
                .to_string()
                .into_bytes()
        });
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), changes))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The JSON body of a write, read only after the token check passed (so a caller without a
/// token cannot make the agent read a body), with axum's own checks and refusals.
async fn json_body<T: serde::de::DeserializeOwned>(request: Request) -> Result<T, Response> {
    Json::<T>::from_request(request, &())
        .await
        .map(|Json(v)| v)
        .map_err(IntoResponse::into_response)
}

/// A refusal when the body's name and id differ from the path's.
fn mismatch(name: &str, id: &str, instance: &Instance) -> Option<Response> {
    if let Some(r) = invalid(name, Some(id)) {
        return Some(r);
    }
    (instance.name != name || instance.id != id).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "the body's name and id must match the path",
        )
    })
}

async fn register(
    State(s): State<RegistryApi>,
    Path((name, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    if let Some(r) = s.refuses(request.headers(), Need::Write(&name)) {
        return r;
    }
    let instance: Instance = match json_body(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Some(r) = mismatch(&name, &id, &instance) {
        return r;
    }
    match s.registry.register(&instance).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        // A registry that failed (some of several, with a multi-registry: the message names
        // which hold it and which do not); the caller's manager retries.
        Err(e) if e.is_transient() => error(StatusCode::BAD_GATEWAY, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn deregister(
    State(s): State<RegistryApi>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.refuses(&headers, Need::Write(&name)) {
        return r;
    }
    if let Some(r) = invalid(&name, Some(&id)) {
        return r;
    }
    match s.registry.deregister(&name, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

async fn keep_alive(
    State(s): State<RegistryApi>,
    Path((name, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    if let Some(r) = s.refuses(request.headers(), Need::Write(&name)) {
        return r;
    }
    let body: KeepAlive = match json_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = mismatch(&name, &id, &body.instance) {
        return r;
    }
    match s.registry.keep_alive(&body.instance, body.health).await {
        Ok(l) => Json(Alive::from(l)).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

#[cfg(test)]
mod tests;
