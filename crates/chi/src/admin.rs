//! The admin HTTP port of `chi agent` and `chi proxy`: `/health`, `/metrics`, and the registry
//! API under `/v1` that `chi://host:port` (the library's `registry::chi`) speaks; its JSON is the
//! library's `registry::chi::wire`, shared with that client.
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
//! It binds to loopback by default: whoever reaches it can register instances.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chi_discovery::registry::chi::wire::{Alive, Event, HEARTBEAT, KeepAlive, check_names};
use chi_discovery::{Instance, Registry};
use futures_util::StreamExt;

use crate::failure::Failure;

/// Answers `/health`: healthy or not, and a JSON body.
pub(crate) type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;
/// Renders `/metrics`.
pub(crate) type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: Arc<dyn Registry>,
    health: HealthFn,
    metrics: MetricsFn,
}

/// Binds the admin port and serves it, with the console's routes, in the background; returns
/// the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    registry: Arc<dyn Registry>,
    health: HealthFn,
    metrics: MetricsFn,
    console: Router,
) -> anyhow::Result<SocketAddr> {
    let state = AdminState {
        registry,
        health,
        metrics,
    };
    let app = Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
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
        .with_state(state)
        .merge(console);
    listen(addr, app).await
}

/// Binds `addr` and serves `app` on it in the background; returns the bound address.
pub(crate) async fn listen(addr: SocketAddr, app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::failed(format!("cannot listen on the admin address {addr}: {e}"))
            .hint("pick another with --admin 127.0.0.1:PORT (port 0 picks a free one)")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin server stopped: {e}");
        }
    });
    Ok(bound)
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (s.metrics)(),
    )
        .into_response()
}

async fn services(State(s): State<AdminState>) -> Response {
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

async fn instances(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    if let Some(r) = invalid(&name, None) {
        return r;
    }
    match s.registry.instances(&name).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// Streams the registry's watch of the service as JSON lines ([`Event`]), until the client goes.
async fn watch(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
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
    State(s): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    Json(instance): Json<Instance>,
) -> Response {
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
    State(s): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = invalid(&name, Some(&id)) {
        return r;
    }
    match s.registry.deregister(&name, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

async fn keep_alive(
    State(s): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    Json(body): Json<KeepAlive>,
) -> Response {
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
    use chi_discovery::registry::Memory;
    use chi_discovery::registry::chi::{Agent, AgentConfig};
    use chi_discovery::{Change, Error, HealthStatus, Liveness};

    use super::*;

    /// The admin API over an embedded registry, and the library's `chi://` client of it.
    async fn agent() -> (Arc<Memory>, Agent) {
        let memory = Arc::new(Memory::new());
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            memory.clone(),
            Arc::new(|| (true, serde_json::Value::Null)),
            Arc::new(String::new),
            Router::new(),
        )
        .await
        .expect("admin");
        let remote = Agent::new(AgentConfig::new(addr.to_string())).expect("client");
        (memory, remote)
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
