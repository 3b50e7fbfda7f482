//! The console at `/ui`: what this process sees, in a browser. Served by `chi agent` and
//! `chi proxy` on their admin ports and by `chi xds` on `--admin`, from assets built into the
//! binary (no CDN, nothing fetched at run time, no framework: one HTML page rendered here, one
//! stylesheet and one script module).
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /ui` | the page: services, balancing, registries (and xDS clients), complete without JavaScript; `?q=TEXT&healthy=1` filters the services |
//! | `GET /ui/console.js`, `/ui/console.css`, `/ui/favicon.svg` | the script (live updates, filters, charts, writes), the stylesheet, the icon |
//! | `GET /ui/api/state` | the status model as JSON ([`model::Status`]) |
//! | `GET /ui/api/events` | server-sent events: a `view` event with the sections' HTML and the charts' data, at once and whenever it changes |
//! | `DELETE /ui/api/services/{name}/instances/{id}` | deregister, when [`WriteGate`] allows it (read-only by default) |
//!
//! Where things come from: the registries, each read and watched on its own while someone looks
//! ([`collect`], [`live`]); the process's [`Feed`] (own probes and registrations, picks counted
//! per instance over the last minute ([`picks`]), ejections, breaker refusals, slow-start ramps,
//! xDS clients). Pages are rendered once per change ([`render`]), whatever the number of viewers.

mod collect;
mod feed;
mod live;
pub(crate) mod model;
pub(crate) mod picks;
mod render;
mod writes;
mod xds;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get};
use chi_discovery::Registry;
use chi_discovery::registry::chi::wire::check_names;
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;

pub(crate) use collect::Merged;
pub(crate) use feed::{AgentFeed, Feed, Verdict, Verdicts};
pub(crate) use writes::WriteGate;
pub(crate) use xds::{XdsFeed, serve_xds};

use live::Live;
use model::Process;
use render::Filter;

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
const ICON: &str = include_str!("assets/favicon.svg");

/// What every answer of the console carries: no script, style or connection from elsewhere, no
/// framing, no sniffing, no referrer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One process's console; see the module docs.
pub(crate) struct Console {
    live: Live,
    gate: WriteGate,
    registry: Arc<dyn Registry>,
}

impl Console {
    /// The console of `chi COMMAND` over `registry`, told the rest by `feed`; writes as `gate`
    /// says.
    pub(crate) fn new(
        command: &'static str,
        registry: Arc<dyn Registry>,
        feed: Arc<dyn Feed>,
        gate: WriteGate,
    ) -> Arc<Console> {
        let process = Process {
            command,
            version: env!("CARGO_PKG_VERSION"),
            writes: gate.describe(),
        };
        Arc::new(Console {
            live: Live::new(registry.clone(), feed, process),
            gate,
            registry,
        })
    }

    /// The routes under `/ui`, to merge into an admin port's router.
    pub(crate) fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/ui", get(page))
            .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
            .route("/ui/console.js", get(script))
            .route("/ui/console.css", get(style))
            .route("/ui/favicon.svg", get(icon))
            .route("/ui/api/state", get(state))
            .route("/ui/api/events", get(events))
            .route("/ui/api/services/{name}/instances/{id}", delete(deregister))
            .layer(axum::middleware::map_response(secure))
            .with_state(self)
    }
}

/// Adds [`POLICY`] and its companions to every answer.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the console is still reading the registries; try again in a moment",
    )
        .into_response()
}

async fn page(
    State(c): State<Arc<Console>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(frame) = c.live.current().await else {
        return unavailable();
    };
    let filter = Filter {
        text: query
            .get("q")
            .map(|q| q.trim().to_owned())
            .unwrap_or_default(),
        healthy_only: query.get("healthy").is_some_and(|v| v == "1" || v == "on"),
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render::page(&frame.status, &filter),
    )
        .into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn state(State(c): State<Arc<Console>>) -> Response {
    match c.live.current().await {
        Some(frame) => (
            [(header::CONTENT_TYPE, "application/json")],
            frame.json.clone(),
        )
            .into_response(),
        None => unavailable(),
    }
}

async fn events(
    State(c): State<Arc<Console>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let frames = WatchStream::new(c.live.subscribe()).filter_map(|frame| async move {
        frame.map(|f| Ok(Event::default().event("view").data(f.event.as_str())))
    });
    Sse::new(frames).keep_alive(KeepAlive::default())
}

async fn deregister(
    State(c): State<Arc<Console>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = c.gate.check(&headers) {
        tracing::warn!(service = %name, %id, "console write refused: {}", refusal.message);
        return (refusal.status, refusal.message).into_response();
    }
    if let Err(e) = check_names(&name, Some(&id)) {
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    match c.registry.deregister(&name, &id).await {
        Ok(()) => {
            tracing::info!(service = %name, %id, "deregistered from the console");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("cannot deregister: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests;
