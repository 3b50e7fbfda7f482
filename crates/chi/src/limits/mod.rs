//! Every door bounded: the limits of the ports `chi agent`, `chi proxy` and `chi xds` serve on.
//!
//! A server that takes whatever comes is a server anyone can exhaust: connections that send a
//! request head one byte a minute (slowloris), uploads that stall before their end, a flood of
//! connections, a request held while its backend thinks. Each port gets a [`Door`] that holds it
//! to these bounds, each with a clear refusal and a count in `chi_refused_total{server,reason}`:
//!
//! | bound | default | refusal | reason |
//! | --- | --- | --- | --- |
//! | `--max-connections` | proxy 4096, agent and xds 1024, admin ports 64 | `503` with `Retry-After: 1` (`RESOURCE_EXHAUSTED` on `chi xds`), then closed | `connections` |
//! | `--max-requests` in flight | proxy 4096, agent 1024 | `503` with `Retry-After: 1` | `requests` |
//! | `--header-timeout`: a request head, and a first request on a new connection | 30 s | closed | `header_timeout` |
//! | `--idle-timeout`: a connection with no request in flight | 60 s | closed | `idle_timeout` |
//! | `--body-timeout`: between two reads of a request body | 30 s | `408` | `body_timeout` |
//! | `--max-body` (the agent's JSON) | 256 KiB | `413` naming the bound | `body_size` |
//!
//! The pieces compose, so authentication or TLS can sit beside them: [`Door::admit`] takes or
//! refuses a connection (the listener's side), [`Door::serve`] drives an admitted HTTP connection
//! with its timeouts and request bound around any hyper service, [`Door::serve_router`] does both
//! for an axum router, and [`Door::incoming`] hands tonic admitted connections that the idle
//! timeout can close. An HTTP/1.1 connection waiting for its next request is closed at the
//! header timeout (hyper's timer runs from the moment it waits for a head), so for HTTP/1.1 the
//! idle bound is the smaller of the two.

mod activity;
mod body;
mod door;
mod refuse;
mod service;
mod tonic_io;

use std::time::Duration;

use clap::Args;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cli::parse_duration;

pub(crate) use activity::InFlight;
pub(crate) use body::{BodyError, BodyState, Timed};
pub(crate) use door::{Door, READ_BUFFER, Ticket};
pub(crate) use refuse::Refusal;
pub(crate) use tonic_io::{ConnInfo, Watched};

/// The bounds of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Time to send a request head; also the time a new connection has for its first request.
    pub(crate) header_timeout: Duration,
    /// Longest wait between two reads of a request body.
    pub(crate) body_timeout: Duration,
    /// Longest a connection stays open without a request in flight.
    pub(crate) idle_timeout: Duration,
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Requests in flight at once (to the end of their response body).
    pub(crate) max_requests: usize,
}

impl Limits {
    /// The bounds of an admin port (`/health`, `/metrics`) beside a server with `self`: the same
    /// timeouts, few connections.
    pub(crate) fn admin(&self) -> Limits {
        Limits {
            max_connections: ADMIN_CONNECTIONS,
            max_requests: ADMIN_CONNECTIONS,
            ..*self
        }
    }
}

/// Connections (and requests) at once on an admin port that serves no clients' traffic.
pub(crate) const ADMIN_CONNECTIONS: usize = 64;

/// `--header-timeout`, `--idle-timeout` and `--max-connections`: every server's.
#[derive(Debug, Args, Clone)]
pub(crate) struct ConnArgs {
    /// Time a client has to send a request head (a new connection, its first request); an
    /// HTTP/1.1 connection waiting for its next request is closed after it too.
    #[arg(long, env = "CHI_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) header_timeout: Duration,
    /// A connection without a request in flight (an HTTP/2 connection without a stream) is
    /// closed after this long.
    #[arg(long, env = "CHI_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) idle_timeout: Duration,
    /// Most connections open at once; more are answered 503 with Retry-After (chi xds:
    /// RESOURCE_EXHAUSTED) and closed. Default: proxy 4096, agent and xds 1024.
    #[arg(long, env = "CHI_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: Option<u32>,
}

/// `--body-timeout` and `--max-requests`: the HTTP servers' (`chi agent`, `chi proxy`).
#[derive(Debug, Args, Clone)]
pub(crate) struct RequestArgs {
    /// Longest wait between two reads of a request body; a stalled upload is answered 408.
    #[arg(long, env = "CHI_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) body_timeout: Duration,
    /// Most requests in flight at once (a response counts until its body ends); more are
    /// answered 503 with Retry-After. Default: proxy 4096, agent 1024.
    #[arg(long, env = "CHI_MAX_REQUESTS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_requests: Option<u32>,
}

impl Limits {
    /// The bounds from the flags, with `connections` and `requests` where the flags say none.
    pub(crate) fn from_args(
        conn: &ConnArgs,
        requests: Option<&RequestArgs>,
        (connections, in_flight): (usize, usize),
    ) -> Limits {
        let n = |v: Option<u32>, default: usize| v.map_or(default, |v| v as usize);
        Limits {
            header_timeout: conn.header_timeout,
            body_timeout: requests.map_or(Duration::from_secs(30), |r| r.body_timeout),
            idle_timeout: conn.idle_timeout,
            max_connections: n(conn.max_connections, connections),
            max_requests: n(requests.and_then(|r| r.max_requests), in_flight),
        }
    }
}

/// Why a door refused or cut something: the `reason` label of `chi_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Over `--max-connections`.
    Connections,
    /// Over `--max-requests`.
    Requests,
    /// No request head (or first request) within `--header-timeout`.
    HeaderTimeout,
    /// No request in flight for `--idle-timeout`.
    IdleTimeout,
    /// A request body stalled for `--body-timeout`.
    BodyTimeout,
    /// A request body over its size bound.
    BodySize,
    /// A request body that is not well framed (a malformed chunk).
    MalformedBody,
    /// Over `chi xds --max-streams`.
    Streams,
    /// Over `chi xds`'s bound on names the registry does not know.
    UnknownNames,
    /// An ADS request `chi xds` cannot take (undecodable, too many names).
    BadRequest,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Connections => "connections",
            Reason::Requests => "requests",
            Reason::HeaderTimeout => "header_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodySize => "body_size",
            Reason::MalformedBody => "malformed_body",
            Reason::Streams => "streams",
            Reason::UnknownNames => "unknown_names",
            Reason::BadRequest => "bad_request",
        }
    }
}

type Labels = [(&'static str, &'static str); 2];

/// `chi_refused_total{server,reason}` and `chi_connections{server}`: one family each, shared by
/// every door of a process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refusals {
    refused: Family<Labels, Counter>,
    open: Family<[(&'static str, &'static str); 1], Gauge>,
}

impl Refusals {
    /// Registers the families in a process's metrics.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "chi_refused",
            "Connections, requests and streams refused or cut by a bound (--max-connections, --max-requests, --header-timeout, --idle-timeout, --body-timeout, --max-body, --max-streams), by server and reason",
            self.refused.clone(),
        );
        registry.register(
            "chi_connections",
            "Connections open, by server",
            self.open.clone(),
        );
    }

    /// Counts one refusal of `server` for `reason`.
    pub(crate) fn count(&self, server: &'static str, reason: Reason) {
        self.refused
            .get_or_create(&[("server", server), ("reason", reason.as_str())])
            .inc();
    }

    fn open(&self, server: &'static str) -> Gauge {
        self.open.get_or_create(&[("server", server)]).clone()
    }
}
