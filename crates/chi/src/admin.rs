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
mod tests {
    use chi_discovery::config::{AgentSettings, WriteScope};
    use chi_discovery::registry::Memory;
    use chi_discovery::registry::chi::{Agent, AgentConfig};
    use chi_discovery::{Change, Error, HealthStatus, Liveness, Secret};

    use super::*;

    /// The admin API over an embedded registry, and the library's `chi://` client of it.
    async fn agent() -> (Arc<Memory>, Agent) {
        let (memory, addr) = guarded(AgentSettings::default(), None).await;
        let remote = Agent::new(AgentConfig::new(addr.to_string())).expect("client");
        (memory, remote)
    }

    /// The admin API over an embedded registry with `settings`' tokens (writes refused with
    /// `writes_off`); its address.
    async fn guarded(
        settings: AgentSettings,
        writes_off: Option<String>,
    ) -> (Arc<Memory>, SocketAddr) {
        let memory = Arc::new(Memory::new());
        let access = Arc::new(Access::new(&settings));
        let metrics_access = access.clone();
        let api = RegistryApi {
            registry: memory.clone(),
            access,
            writes_off,
        };
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            Some(api),
            (
                Arc::new(|| (true, serde_json::Value::Null)),
                Arc::new(move || {
                    let mut registry = prometheus_client::registry::Registry::default();
                    metrics_access.register_metrics(&mut registry);
                    let mut out = String::new();
                    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
                    out
                }),
            ),
            Router::new(),
            (Door::for_tests("agent"), 256 << 10),
            None,
        )
        .await
        .expect("admin");
        (memory, addr)
    }

    fn tokens() -> AgentSettings {
        AgentSettings {
            read_token: Some(Secret::new("read-token")),
            write_token: Some(Secret::new("write-token")),
            write_scopes: vec![WriteScope {
                token: Secret::new("orders-token"),
                services: vec!["orders-*".into()],
            }],
            forward_writes: false,
            tls: None,
        }
    }

    fn client(addr: SocketAddr, token: &str) -> Agent {
        Agent::new(AgentConfig::new(addr.to_string()).with_token(token)).expect("client")
    }

    #[tokio::test]
    async fn the_chi_client_with_each_token_does_what_the_token_may() {
        let (memory, addr) = guarded(tokens(), None).await;
        let held = Instance::new("billing", "127.0.0.1", 1).with_id("billing-1");
        memory.register(&held).await.expect("seed");
        let orders = Instance::new("orders-api", "127.0.0.1", 2).with_id("orders-1");

        // No token, a wrong one: 401 on reads and writes, nothing changed.
        for token in ["", "wrong-token"] {
            let c = client(addr, token);
            for e in [
                c.instances("billing").await.expect_err("read"),
                c.register(&orders).await.expect_err("write"),
                c.deregister("billing", "billing-1")
                    .await
                    .expect_err("write"),
            ] {
                assert!(e.to_string().contains("401"), "{token:?}: {e}");
            }
        }
        // The read token reads, and may not write.
        let reader = client(addr, "read-token");
        assert_eq!(
            ids(&reader.instances("billing").await.expect("read")),
            ["billing-1"]
        );
        let e = reader
            .deregister("billing", "billing-1")
            .await
            .expect_err("403");
        assert!(
            e.to_string().contains("403") && e.to_string().contains("may not write"),
            "{e}"
        );
        // The scoped token writes its services only.
        let scoped = client(addr, "orders-token");
        scoped.register(&orders).await.expect("in scope");
        assert_eq!(
            scoped
                .keep_alive(&orders, HealthStatus::Healthy)
                .await
                .expect("keep alive"),
            Liveness::Alive
        );
        let e = scoped
            .deregister("billing", "billing-1")
            .await
            .expect_err("out of scope");
        assert!(e.to_string().contains("403"), "{e}");
        // Watches need a token too.
        assert!(client(addr, "").watch("billing").await.is_err());
        let mut w = scoped.watch("billing").await.expect("watch");
        assert!(matches!(
            futures_util::StreamExt::next(&mut w).await,
            Some(Ok(Change::Reset(_)))
        ));
        assert_eq!(
            ids(&memory.instances("billing").await.expect("list")),
            ["billing-1"]
        );
        assert_eq!(
            ids(&memory.instances("orders-api").await.expect("list")),
            ["orders-1"]
        );
        // The write token writes anything.
        client(addr, "write-token")
            .deregister("billing", "billing-1")
            .await
            .expect("write token");
        assert!(memory.instances("billing").await.expect("list").is_empty());

        // The refusals are counted, by reason.
        let http = reqwest::Client::new();
        let scrape = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        for reason in ["missing", "invalid", "scope"] {
            assert!(
                scrape.contains(&format!(
                    "chi_agent_auth_refusals_total{{reason=\"{reason}\"}}"
                )),
                "{reason}: {scrape}"
            );
        }
    }

    #[tokio::test]
    async fn refusals_are_json_and_a_refused_body_is_not_read() {
        let (memory, addr) = guarded(tokens(), None).await;
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/services/orders-api/instances/o-1");
        // A body that is not even JSON: the token check answers first.
        let resp = http.put(&url).body("not json").send().await.expect("put");
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Bearer")),
            "{body}"
        );
        let resp = http
            .put(&url)
            .bearer_auth("read-token")
            .json(&Instance::new("orders-api", "127.0.0.1", 1).with_id("o-1"))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 403);
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        assert_eq!(body["error"], "forbidden");
        assert!(memory.services().await.expect("services").is_empty());
        // With the right token, a bad body is still a clear 4xx.
        let resp = http
            .put(&url)
            .bearer_auth("write-token")
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn an_agent_fronting_another_registry_refuses_writes_unless_told() {
        let (memory, addr) = guarded(
            AgentSettings::default(),
            Some("forward_writes is off".into()),
        )
        .await;
        let seeded = Instance::new("web", "127.0.0.1", 1).with_id("web-1");
        memory.register(&seeded).await.expect("seed");
        let c = client(addr, "");
        let e = c
            .register(&Instance::new("web", "127.0.0.1", 2).with_id("web-2"))
            .await;
        assert!(
            e.expect_err("refused")
                .to_string()
                .contains("forward_writes is off")
        );
        let e = c.deregister("web", "web-1").await.expect_err("refused");
        assert!(e.to_string().contains("403"), "{e}");
        assert!(c.keep_alive(&seeded, HealthStatus::Healthy).await.is_err());
        // Reads still go through; nothing changed.
        assert_eq!(ids(&c.instances("web").await.expect("read")), ["web-1"]);
    }

    fn ids(list: &[Instance]) -> Vec<&str> {
        let mut ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn ids_with_url_characters_reach_the_agent_unchanged() {
        let (memory, remote) = agent().await;
        let hostile = [
            "web?x",
            "web#x",
            "web%2Fx",
            "web%x",
            "with space",
            "ünï-名前-🚀",
            "a;b=c",
        ];
        let plain = Instance::new("web", "127.0.0.1", 8080).with_id("web");
        remote.register(&plain).await.expect("register web");
        for (n, id) in hostile.iter().enumerate() {
            let i = Instance::new("web", "127.0.0.1", 9000 + n as u16).with_id(*id);
            remote.register(&i).await.expect(id);
            assert_eq!(
                remote
                    .keep_alive(&i, HealthStatus::Healthy)
                    .await
                    .expect(id),
                Liveness::Alive,
                "{id}"
            );
        }
        let mut want: Vec<&str> = hostile.to_vec();
        want.push("web");
        want.sort_unstable();
        assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
        assert_eq!(ids(&remote.instances("web").await.expect("list")), want);

        // Removing `web?x` removes it alone (it was once read as `web`).
        remote.deregister("web", "web?x").await.expect("deregister");
        want.retain(|id| *id != "web?x");
        assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
    }

    #[tokio::test]
    async fn service_names_with_url_characters_watch_and_list() {
        let (_memory, remote) = agent().await;
        let name = "svc?a=1#frag %";
        let i = Instance::new(name, "127.0.0.1", 8080).with_id("i-1");
        remote.register(&i).await.expect("register");
        assert_eq!(remote.services().await.expect("services"), [name]);
        let mut watch = remote.watch(name).await.expect("watch");
        match futures_util::StreamExt::next(&mut watch).await {
            Some(Ok(Change::Reset(list))) => assert_eq!(ids(&list), ["i-1"]),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn names_every_registry_refuses_are_refused_before_a_request() {
        let (_memory, remote) = agent().await;
        for (name, id, field) in [
            ("..", "i", "service name"),
            ("web", "..", "instance id"),
            ("web", "a/b", "instance id"),
            ("web", " ", "instance id"),
        ] {
            let e = remote.deregister(name, id).await.expect_err("refused");
            assert!(matches!(e, Error::Invalid { .. }), "{name:?} {id:?}: {e}");
            assert!(e.to_string().contains(field), "{name:?} {id:?}: {e}");
        }
    }

    #[tokio::test]
    async fn the_agent_refuses_names_the_registries_refuse() {
        let (_memory, remote) = agent().await;
        let http = reqwest::Client::new();
        for (path, field) in [
            ("/v1/services/a%2Fb", "service name"),
            ("/v1/services/a..b/watch", "service name"),
            ("/v1/services/web/instances/a%2Fb", "instance id"),
            ("/v1/services/web/instances/%20", "instance id"),
        ] {
            let url = format!("http://{}{path}", remote.config().address);
            let get = http.get(&url).send().await.expect("get");
            let delete = http.delete(&url).send().await.expect("delete");
            let resp = if path.contains("instances") {
                delete
            } else {
                get
            };
            assert_eq!(resp.status(), 400, "{path}");
            let body = resp.text().await.expect("body");
            assert!(body.contains(field), "{path}: {body}");
        }
    }
}
