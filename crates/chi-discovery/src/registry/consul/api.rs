//! A thin typed client for the part of Consul's HTTP API v1 that chi uses.
//!
//! Five calls: `PUT /v1/agent/service/register`, `PUT /v1/agent/service/deregister/:id`,
//! `PUT /v1/agent/check/update/:id` (the TTL check), `GET /v1/health/service/:name` (plain or as a
//! blocking query) and `GET /v1/catalog/services`. Every path segment built from a name or an id
//! is percent-encoded by [`Url::path_segments_mut`]; every response body is read with a size
//! limit; the ACL token travels only in the `X-Consul-Token` header, marked sensitive so that even
//! reqwest's own `Debug` output hides it, and never in a URL (so it cannot leak through an error
//! that quotes the URL). The bodies themselves are in `wire`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;

use crate::error::Error;
use crate::secret::Secret;

use super::wire::{ServiceEntry, ServiceRegistration, go_duration, parse_health};
use super::{BACKEND, Consistency, MAX_BODY};

/// Error bodies are plain text from Consul; keep at most this much of them.
const MAX_ERROR_BODY: usize = 4 * 1024;

/// A body that did not parse says what it claimed to be when that was not JSON (an HTML page
/// from a proxy in front of the agent is the usual case).
fn with_content_type(kind: ApiErrorKind, headers: &HeaderMap) -> ApiErrorKind {
    let claimed = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.contains("json"));
    match (kind, claimed) {
        (ApiErrorKind::Body(m), Some(t)) => ApiErrorKind::Body(format!(
            "{m} (the answer is `{}`, not JSON)",
            t.escape_debug()
        )),
        (kind, _) => kind,
    }
}

/// What `/v1/health/service/:name` is asked for, beyond the name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HealthQuery {
    /// `passing`: only instances whose checks all pass.
    pub(crate) passing: bool,
    /// `tag=...`, once per tag (all must match).
    pub(crate) tags: Vec<String>,
    /// A `filter` expression (go-bexpr), e.g. `Service.Meta.region == "eu"`.
    pub(crate) filter: Option<String>,
}

/// An answer of `/v1/health/service/:name`.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) entries: Vec<ServiceEntry>,
    /// `X-Consul-Index` (0 when absent).
    pub(crate) index: u64,
    /// `X-Consul-KnownLeader`: false when the server that answered a stale read knew no leader
    /// (true when the header is absent).
    pub(crate) known_leader: bool,
}

/// What a TTL update found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckUpdate {
    /// The agent holds the check and took the new status.
    Updated,
    /// The agent does not know the check (it was restarted, or the service was deregistered).
    Unknown,
}

/// Why a call failed. The token never appears here: it is only ever in a header.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// `PUT /v1/agent/service/register`, with the name or id as sent (decoded).
    pub(crate) call: String,
    pub(crate) kind: ApiErrorKind,
}

#[derive(Debug)]
pub(crate) enum ApiErrorKind {
    /// The agent could not be reached.
    Connect(String),
    /// No answer within the deadline.
    Timeout(Duration),
    /// Consul answered with a non-success status; `message` is its body (trimmed).
    Status {
        status: StatusCode,
        message: String,
        hint: Option<&'static str>,
    },
    /// The answer could not be read or parsed.
    Body(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ApiErrorKind::Connect(m) => write!(f, "{}: cannot reach the agent: {m}", self.call),
            ApiErrorKind::Timeout(d) => write!(f, "{}: no answer within {d:?}", self.call),
            ApiErrorKind::Status {
                status,
                message,
                hint,
            } => {
                write!(f, "{} answered {status}: {message}", self.call)?;
                if let Some(h) = hint {
                    write!(f, " ({h})")?;
                }
                Ok(())
            }
            ApiErrorKind::Body(m) => write!(f, "{}: bad answer: {m}", self.call),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// The HTTP status Consul answered, if it answered.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ApiErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        match e.kind {
            ApiErrorKind::Connect(_) => Error::Unavailable {
                backend: BACKEND.into(),
                message: e.to_string(),
            },
            ApiErrorKind::Timeout(after) => Error::Timeout {
                backend: BACKEND.into(),
                after,
            },
            _ => Error::registry(BACKEND, e),
        }
    }
}

/// The HTTP client: one connection pool, the base URL, the datacenter.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    datacenter: Option<String>,
    consistency: Consistency,
    request_timeout: Duration,
    has_token: bool,
}

impl Client {
    /// A client for `base` (`http://host:port`, optionally with a path prefix). `builder` carries
    /// TLS settings; the token becomes a default header.
    pub(crate) fn new(
        base: Url,
        token: &Secret,
        datacenter: Option<String>,
        request_timeout: Duration,
        builder: reqwest::ClientBuilder,
    ) -> crate::error::Result<Self> {
        let mut headers = HeaderMap::new();
        if !token.is_empty() {
            let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                Error::config(
                    format!("{}.token", super::FIELD),
                    "contains characters that cannot be sent in an HTTP header",
                )
            })?;
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        let http = builder
            .default_headers(headers)
            .connect_timeout(request_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| Error::config("consul", format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            datacenter: datacenter.filter(|d| !d.is_empty()),
            consistency: Consistency::Default,
            request_timeout,
            has_token: !token.is_empty(),
        })
    }

    /// Discovery reads in this consistency mode.
    pub(crate) fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// `base` + `/v1/...segments`, each segment percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    /// Registers a service on the local agent.
    pub(crate) async fn register(&self, reg: &ServiceRegistration) -> Result<(), ApiError> {
        let url = self.url(&["agent", "service", "register"]);
        let req = self.http.put(url).json(reg);
        self.send(Method::PUT, "/v1/agent/service/register", req, None)
            .await
            .map(drop)
    }

    /// Deregisters a service from the local agent; an unknown id is fine.
    pub(crate) async fn deregister(&self, id: &str) -> Result<(), ApiError> {
        let url = self.url(&["agent", "service", "deregister", id]);
        let call = format!("/v1/agent/service/deregister/{id}");
        match self
            .send(Method::PUT, &call, self.http.put(url), None)
            .await
        {
            Ok(_) => Ok(()),
            // Consul 1.8 answers 200 for an unknown id, later versions 404.
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the status of a TTL check (`passing`, `warning`, `critical`).
    pub(crate) async fn update_check(
        &self,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Result<CheckUpdate, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "Status")]
            status: &'a str,
            #[serde(rename = "Output")]
            output: &'a str,
        }
        let url = self.url(&["agent", "check", "update", check_id]);
        let call = format!("/v1/agent/check/update/{check_id}");
        let req = self.http.put(url).json(&Body { status, output });
        match self.send(Method::PUT, &call, req, None).await {
            Ok(_) => Ok(CheckUpdate::Updated),
            Err(e) if is_unknown_check(&e) => Ok(CheckUpdate::Unknown),
            Err(e) => Err(e),
        }
    }

    /// `/v1/health/service/:name`, in the configured consistency mode. With `block =
    /// Some((index, wait))` it is a blocking query that answers when the index moves past
    /// `index` or `wait` passes.
    pub(crate) async fn health_service(
        &self,
        name: &str,
        query: &HealthQuery,
        block: Option<(u64, Duration)>,
    ) -> Result<Health, ApiError> {
        let url = self.health_url(name, query, block);
        // A blocking query may hold the answer for `wait` plus Consul's own jitter of wait/16.
        let deadline = match block {
            Some((_, wait)) => wait + wait / 16 + self.request_timeout,
            None => self.request_timeout,
        };
        let call = format!("/v1/health/service/{name}");
        let (headers, body) = self
            .send(Method::GET, &call, self.http.get(url), Some(deadline))
            .await?;
        let index = headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let known_leader = headers
            .get("X-Consul-KnownLeader")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| !v.trim().eq_ignore_ascii_case("false"));
        let entries = health_entries(&body).map_err(|kind| ApiError {
            call: format!("GET {call}"),
            kind: with_content_type(kind, &headers),
        })?;
        Ok(Health {
            entries,
            index,
            known_leader,
        })
    }

    /// The URL of a health query: datacenter, consistency mode, filters, blocking parameters.
    fn health_url(&self, name: &str, query: &HealthQuery, block: Option<(u64, Duration)>) -> Url {
        let mut url = self.url(&["health", "service", name]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
            match self.consistency {
                Consistency::Default => {}
                Consistency::Stale => {
                    q.append_key_only("stale");
                }
                Consistency::Consistent => {
                    q.append_key_only("consistent");
                }
            }
            if query.passing {
                q.append_pair("passing", "true");
            }
            for t in &query.tags {
                q.append_pair("tag", t);
            }
            if let Some(f) = &query.filter {
                q.append_pair("filter", f);
            }
            if let Some((index, wait)) = block {
                q.append_pair("index", &index.to_string());
                q.append_pair("wait", &go_duration(wait));
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// `/v1/catalog/services`: every service name in the datacenter.
    pub(crate) async fn catalog_services(&self) -> Result<Vec<String>, ApiError> {
        let mut url = self.url(&["catalog", "services"]);
        if let Some(dc) = &self.datacenter {
            url.query_pairs_mut().append_pair("dc", dc);
        }
        let call = "/v1/catalog/services".to_owned();
        let (_, body) = self
            .send(Method::GET, &call, self.http.get(url), None)
            .await?;
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| ApiError {
                call: format!("GET {call}"),
                kind: ApiErrorKind::Body(format!("not a service map: {e}")),
            })?;
        let mut names: Vec<String> = map.into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// Sends a request and reads a success body (size-limited), or turns the failure into an
    /// [`ApiError`] that names the call, the status and Consul's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        req: reqwest::RequestBuilder,
        deadline: Option<Duration>,
    ) -> Result<(HeaderMap, Vec<u8>), ApiError> {
        let deadline = deadline.unwrap_or(self.request_timeout);
        let call = format!("{method} {path}");
        let fail = |kind| ApiError {
            call: call.clone(),
            kind,
        };
        let mut resp = req
            .timeout(deadline)
            .send()
            .await
            .map_err(|e| fail(transport_error(e, deadline)))?;
        let status = resp.status();
        let limit = if status.is_success() {
            MAX_BODY
        } else {
            MAX_ERROR_BODY
        };
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        let room = limit - body.len();
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(fail(transport_error(e, deadline))),
            }
        }
        if status.is_success() {
            if truncated {
                return Err(fail(ApiErrorKind::Body(format!(
                    "answer larger than the limit of {} MiB (consul::MAX_BODY); reading stopped there",
                    MAX_BODY / (1024 * 1024)
                ))));
            }
            return Ok((resp.headers().clone(), body));
        }
        let mut message = String::from_utf8_lossy(&body).trim().to_owned();
        if truncated {
            message.push_str("...");
        }
        if message.is_empty() {
            message = status.canonical_reason().unwrap_or("no message").to_owned();
        }
        let hint = if status == StatusCode::FORBIDDEN {
            Some(if self.has_token {
                "the ACL token was refused or lacks the permission; check \
                 `service_discovery.registries.consul.token` (or CHI_CONSUL_TOKEN)"
            } else {
                "no ACL token was sent; set `service_discovery.registries.consul.token` \
                 (or CHI_CONSUL_TOKEN)"
            })
        } else if status.is_server_error() && message.contains("No cluster leader") {
            Some(
                "the Consul servers have no leader: an election, or a lost quorum; reads with \
                 `consistency: stale` are answered without one",
            )
        } else {
            None
        };
        Err(fail(ApiErrorKind::Status {
            status,
            message,
            hint,
        }))
    }
}

/// Consul 1.8 answers an update of an unknown TTL check with 500 and `CheckID "x" does not have
/// associated TTL`; later versions with 404 `Unknown check ID`.
/// The entries of a `/v1/health/service/:name` answer; a body that is not one is a bad answer.
pub(crate) fn health_entries(body: &[u8]) -> Result<Vec<ServiceEntry>, ApiErrorKind> {
    parse_health(body).map_err(|e| ApiErrorKind::Body(format!("not a health answer: {e}")))
}

fn is_unknown_check(e: &ApiError) -> bool {
    match &e.kind {
        ApiErrorKind::Status {
            status, message, ..
        } => {
            *status == StatusCode::NOT_FOUND
                || (status.is_server_error()
                    && (message.contains("does not have associated TTL")
                        || message.contains("Unknown check")))
        }
        _ => false,
    }
}

/// A reqwest error as a kind, without the URL (it holds names, never the token, but the call is
/// already named) and with the chain of causes, which is where "connection refused" lives.
fn transport_error(e: reqwest::Error, deadline: Duration) -> ApiErrorKind {
    if e.is_timeout() {
        return ApiErrorKind::Timeout(deadline);
    }
    let is_connect = e.is_connect() || e.is_request();
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    if is_connect {
        ApiErrorKind::Connect(message)
    } else {
        ApiErrorKind::Body(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(
            Url::parse("http://127.0.0.1:8500").expect("url"),
            &Secret::new("tok"),
            Some("dc1".into()),
            Duration::from_secs(1),
            reqwest::Client::builder(),
        )
        .expect("client")
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let c = client();
        let url = c.url(&["health", "service", "a b?c#d%e"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/health/service/a%20b%3Fc%23d%25e"
        );
        let prefixed = Client {
            base: Url::parse("https://proxy.example/consul/").expect("url"),
            ..c
        };
        assert_eq!(
            prefixed.url(&["catalog", "services"]).as_str(),
            "https://proxy.example/consul/v1/catalog/services"
        );
    }

    #[test]
    fn token_is_a_sensitive_header_and_never_debug_printed() {
        let c = client();
        assert!(!format!("{c:?}").contains("tok\""));
        let bad = Client::new(
            Url::parse("http://h").expect("url"),
            &Secret::new("bad\ntoken"),
            None,
            Duration::from_secs(1),
            reqwest::Client::builder(),
        )
        .unwrap_err()
        .to_string();
        assert!(!bad.contains("bad"), "{bad}");
    }

    #[test]
    fn the_consistency_mode_is_a_query_parameter_of_every_health_read() {
        let c = Client {
            datacenter: None,
            ..client()
        };
        let block = Some((7, Duration::from_secs(5)));
        let url = |c: &Client, block| {
            c.health_url("web", &HealthQuery::default(), block)
                .query()
                .map(str::to_owned)
        };
        assert_eq!(url(&c, None), None);
        assert_eq!(url(&c, block).as_deref(), Some("index=7&wait=5s"));
        let stale = c.clone().with_consistency(Consistency::Stale);
        assert_eq!(url(&stale, None).as_deref(), Some("stale"));
        assert_eq!(url(&stale, block).as_deref(), Some("stale&index=7&wait=5s"));
        let consistent = c.with_consistency(Consistency::Consistent);
        assert_eq!(url(&consistent, None).as_deref(), Some("consistent"));
    }

    #[test]
    fn unknown_check_answers_are_recognised() {
        let mk = |status: u16, message: &str| ApiError {
            call: "PUT x".into(),
            kind: ApiErrorKind::Status {
                status: StatusCode::from_u16(status).expect("status"),
                message: message.into(),
                hint: None,
            },
        };
        assert!(is_unknown_check(&mk(
            500,
            "CheckID \"x\" does not have associated TTL"
        )));
        assert!(is_unknown_check(&mk(404, "Unknown check ID \"x\"")));
        assert!(!is_unknown_check(&mk(500, "rpc error")));
        assert!(!is_unknown_check(&mk(403, "Permission denied")));
    }
}
