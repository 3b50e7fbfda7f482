//! One request through the proxy: which service, which instance, and the attempts.
//!
//! The request is read once (its body kept to replay it on a retry; most requests, GETs, have
//! none) and its headers are made ready once; every attempt then copies them, picks an instance
//! that no earlier attempt of the request tried, and sends. An attempt fails on a connect error,
//! a timeout, or a 502/503/504; each outcome feeds the outlier detector. Routing costs no
//! allocation per request: the service and path are borrowed from the request, the instance from
//! the routed subset, and its `Host` value and connections from its [`Target`].

use crate::output::human;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chi_discovery::Snapshot;
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri};

use super::Proxy;
use super::headers::{client_address, forwarded_for, strip_hop_by_hop};
use super::response::{ProxyBody, plain, upstream_response};
use super::route::{forwarded_path, target};
use super::service::{Service, Target};
use super::upstream;
use crate::cli::RouteBy;
use crate::pick::{self, Picked};
use chi_discovery::Instance;
use chi_discovery::routing::{Slot, Usable};

/// Largest request body the proxy buffers (bodies are kept to replay them on retries).
const MAX_BODY: usize = 16 << 20;
/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// The request as every attempt sends it.
struct Outgoing {
    method: Method,
    /// Origin form (`/path?query`): the connection is to the instance itself, and the `Host`
    /// header names it.
    path: PathAndQuery,
    /// Hop-by-hop headers gone, `X-Forwarded-For` added. `Host` stays: each attempt replaces
    /// its value in place with the instance's (a map cloned to its length would grow to take a
    /// new entry).
    headers: HeaderMap,
    body: Bytes,
    /// A failed attempt may be retried after the request reached the instance.
    retry_any: bool,
}

impl Outgoing {
    /// This request, to `target`.
    fn to(&self, target: &Target) -> Request<Full<Bytes>> {
        let mut up = Request::new(Full::new(self.body.clone()));
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = Uri::from(self.path.clone());
        *up.headers_mut() = self.headers.clone();
        up.headers_mut().insert(header::HOST, target.host.clone());
        up
    }
}

/// How one attempt ended.
enum Attempt {
    /// An answer for the client (a success, or the last failure worth passing on).
    Answered(Response<ProxyBody>),
    /// A failure of instance `id`; `stop` when no other attempt may follow.
    Failed {
        id: String,
        error: String,
        stop: bool,
    },
}

impl Proxy {
    /// The cached snapshot of `service`, else a discovery (which waits for the registry).
    /// Requests that the cache answers are not counted as discovery requests.
    async fn snapshot(&self, service: &str) -> chi_discovery::Result<Snapshot> {
        match self.client.cached(service) {
            Some(s) => Ok(s),
            None => self.client.discover(service).await,
        }
    }

    /// Serves one request of a client (`peer`, whose address is `peer_ip` as a header value) on
    /// `worker`.
    pub(super) async fn handle(
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
        let Some((name, path)) = target(self.route_by, host, pq) else {
            return plain(StatusCode::BAD_REQUEST, self.route_by.hint());
        };
        let snapshot = match self.snapshot(name).await {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("chi proxy: service `{name}` has no instances"),
                );
            }
            Err(e) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("chi proxy: cannot discover `{name}`: {e}"),
                );
            }
        };
        let service = self.service(name);
        let Some(path) = forwarded_path(&parts.uri, path) else {
            return plain(
                StatusCode::BAD_REQUEST,
                "chi proxy: the path to forward is not a valid URI path",
            );
        };
        self.track(&service, &snapshot);
        let response = self
            .forward(
                worker,
                &service,
                snapshot,
                (parts, body),
                path,
                (peer, peer_ip),
            )
            .await;
        let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
        service.metrics.by_class[class].inc();
        service
            .metrics
            .latency
            .observe(start.elapsed().as_secs_f64());
        response
    }

    /// Reads the request, then runs the attempts.
    async fn forward(
        &self,
        worker: usize,
        service: &Service,
        first: Snapshot,
        (parts, body): (hyper::http::request::Parts, Incoming),
        path: PathAndQuery,
        (peer, peer_ip): (SocketAddr, Option<&HeaderValue>),
    ) -> Response<ProxyBody> {
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
        // Where a request that does not say is from: its client's address, read before this hop
        // joins `X-Forwarded-For`.
        let placed = if self.client_regions.is_empty() {
            None
        } else {
            let client = client_address(&headers, peer, &self.trusted_proxies);
            self.client_regions.region_of(client)
        };
        strip_hop_by_hop(&mut headers);
        forwarded_for(&mut headers, peer, peer_ip);
        let retry_any = self.retry_all_methods || idempotent(&parts.method);
        let request = Outgoing {
            method: parts.method,
            path,
            headers,
            body,
            retry_any,
        };
        self.attempts(worker, service, first, &request, placed)
            .await
    }

    /// Up to `max_attempts` attempts, each on an instance no earlier one tried; a retry sees the
    /// latest snapshot (ejections are laid over it). `placed`: the client's region by its
    /// address, for a request that names no region nor zone.
    async fn attempts(
        &self,
        worker: usize,
        service: &Service,
        first: Snapshot,
        request: &Outgoing,
        placed: Option<&str>,
    ) -> Response<ProxyBody> {
        let name = service.name.as_str();
        let mut route = pick::route_of(&request.headers, self.routers.hash_key_header());
        if route.region.is_none() && route.zone.is_none() {
            route.region = placed;
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = String::from("no instance could be picked");
        let mut first = Some(first);
        for attempt in 1..=self.max_attempts {
            let snapshot = match first.take() {
                Some(s) => s,
                None => match self.snapshot(name).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = e.to_string();
                        break;
                    }
                },
            };
            let breaker = service.state.breaker();
            let room = |i: &Instance| breaker.is_none_or(|b| b.has_room(&i.id));
            let room: Option<&Usable<'_>> = breaker.map(|_| &room as &Usable<'_>);
            let Some(picked) = pick::pick(service.state.router(), &snapshot, &route, &tried, room)
            else {
                break;
            };
            // Circuit breaking: every instance it could go to is at its bound: fail fast.
            let slot = match breaker {
                None => None,
                Some(b) => match b.try_acquire(&picked.instance().id) {
                    Some(slot) => Some(slot),
                    None => {
                        service.metrics.overflows.inc();
                        return plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "chi proxy: every instance of `{name}` has {} requests in flight (load_balancer.circuit_breaker.max_requests)",
                                b.max_requests()
                            ),
                        );
                    }
                },
            };
            let last = attempt == self.max_attempts;
            match self
                .attempt(worker, service, picked, slot, request, last)
                .await
            {
                Attempt::Answered(response) => return response,
                Attempt::Failed { id, error, stop } => {
                    tracing::debug!(service = name, attempt, "attempt failed: {error}");
                    last_error = error;
                    tried.push(id);
                    if stop {
                        break;
                    }
                }
            }
        }
        plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "chi proxy: `{name}` failed after {} attempt(s): {last_error}",
                tried.len()
            ),
        )
    }

    /// One attempt on the picked instance; `last` when no retry may follow.
    async fn attempt(
        &self,
        worker: usize,
        service: &Service,
        picked: Picked,
        slot: Option<Slot>,
        request: &Outgoing,
        last: bool,
    ) -> Attempt {
        let instance = picked.instance();
        let id = instance.id.as_str();
        let target = match self.target_of(service, instance) {
            Ok(t) => t,
            Err(error) => {
                return Attempt::Failed {
                    id: id.to_owned(),
                    error,
                    stop: false,
                };
            }
        };
        target.selections.inc();
        target.picks.record();
        let to = (instance.address.as_str(), instance.port);
        let sent = upstream::send(
            target.idle.clone(),
            worker,
            to,
            CONNECT_TIMEOUT,
            request.to(&target),
        );
        let (error, stop) = match tokio::time::timeout(self.attempt_timeout, sent).await {
            Ok(Ok((resp, lease)))
                if !failed_status(resp.status()) || last || !request.retry_any =>
            {
                self.record(service, id, !failed_status(resp.status()));
                return Attempt::Answered(upstream_response(resp, picked, slot, &target, lease));
            }
            Ok(Ok((resp, _))) => (format!("{id} answered {}", resp.status()), false),
            Ok(Err(e)) => {
                // A request that surely did not reach the instance may go to another.
                let stop = !(request.retry_any || e.nothing_sent());
                (format!("{id}: {e}"), stop)
            }
            Err(_) => (
                format!("{id}: no answer within {}", human(self.attempt_timeout)),
                !request.retry_any,
            ),
        };
        self.record(service, id, false);
        Attempt::Failed {
            id: id.to_owned(),
            error,
            stop,
        }
    }
}
