//! The HTTP side of the adapter: one place that builds the agent's URLs, sends, and turns every
//! failure into [`Error::Unavailable`] naming the agent.

use std::fmt::Display;

use reqwest::{RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

use super::BACKEND;
use super::config::{AgentConfig, FIELD};
use super::wire::check_names;
use crate::error::{Error, Result};
use crate::secret::Secret;

/// How long a kept-alive connection to the agent may wait for the next call: under the agent's
/// default header timeout (`chi agent --header-timeout`, 30 s).
const IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// A client of one agent's registry API.
#[derive(Debug)]
pub(super) struct Client {
    /// The agent's base URL, for messages.
    base: String,
    /// `{base}/v1/services`, to which each call appends its percent-encoded path segments.
    services: Url,
    /// For calls: a deadline on the whole exchange.
    http: reqwest::Client,
    /// For watches: no deadline on the whole response (it lasts), only on connecting; the watch
    /// bounds the wait for each line itself.
    streams: reqwest::Client,
    /// Sent as `Authorization: Bearer` when not empty.
    token: Secret,
}

/// The CA and client identity of `config.tls`, read from their PEM files now.
fn tls_settings(
    config: &AgentConfig,
) -> Result<(Option<reqwest::Certificate>, Option<reqwest::Identity>)> {
    let Some(tls) = &config.tls else {
        return Ok((None, None));
    };
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                format!("{FIELD}.tls.{key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let ca = match &tls.ca {
        Some(p) => Some(
            reqwest::Certificate::from_pem(&read(p, "ca")?).map_err(|e| {
                Error::config(format!("{FIELD}.tls.ca"), format!("{}: {e}", p.display()))
            })?,
        ),
        None => None,
    };
    let identity = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "cert")?;
            pem.push(b'\n');
            pem.extend(read(key, "key")?);
            Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::config(
                    format!("{FIELD}.tls.cert"),
                    format!("{} with {}: {e}", cert.display(), key.display()),
                )
            })?)
        }
        _ => None,
    };
    Ok((ca, identity))
}

impl Client {
    /// Checks `config` and builds the HTTP clients; does not connect.
    pub(super) fn new(config: &AgentConfig) -> Result<Client> {
        let base = config.checked()?;
        let mut services = base.clone();
        if let Ok(mut path) = services.path_segments_mut() {
            path.pop_if_empty().extend(["v1", "services"]);
        }
        let tls = tls_settings(config)?;
        // The agent closes a kept-alive connection that waits 30 s for its next request (its
        // header timeout): an idle one is let go sooner here, so no call goes out on a
        // connection the agent is closing.
        let builder = || {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(config.request_timeout)
                .pool_idle_timeout(IDLE);
            if let Some(ca) = &tls.0 {
                b = b.add_root_certificate(ca.clone());
            }
            if let Some(id) = &tls.1 {
                b = b.identity(id.clone());
            }
            b
        };
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| Error::registry(BACKEND, format!("building the HTTP client: {e}")))
        };
        Ok(Client {
            base: base.as_str().trim_end_matches('/').to_owned(),
            services,
            http: build(builder().timeout(config.request_timeout))?,
            streams: build(builder())?,
            token: config.token.clone(),
        })
    }

    /// `{base}/v1/services`.
    pub(super) fn services_url(&self) -> Url {
        self.services.clone()
    }

    /// `{base}/v1/services/{service}[/instances/{id}][/{tail}]`, each segment percent-encoded: a
    /// name or id may hold `?`, `#`, `%` or spaces, and must reach the agent as one segment,
    /// unchanged. Names every registry refuses (`..`, `/`, empty) are refused here, before a
    /// request is built.
    pub(super) fn url(&self, service: &str, id: Option<&str>, tail: Option<&str>) -> Result<Url> {
        check_names(service, id)?;
        let mut url = self.services.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.push(service);
            if let Some(id) = id {
                path.extend(["instances", id]);
            }
            if let Some(tail) = tail {
                path.push(tail);
            }
        }
        Ok(url)
    }

    /// A call to `url` with `method`, under the call deadline.
    pub(super) fn call(&self, method: reqwest::Method, url: Url) -> RequestBuilder {
        self.authorized(self.http.request(method, url))
    }

    /// `req` with the token, if there is one (reqwest marks the header sensitive).
    fn authorized(&self, req: RequestBuilder) -> RequestBuilder {
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(self.token.expose())
        }
    }

    /// A watch request: only connecting has a deadline.
    pub(super) fn stream(&self, url: Url) -> RequestBuilder {
        self.authorized(self.streams.get(url))
    }

    /// Sends `req`; a status other than 2xx is an error carrying the agent's message.
    pub(super) async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| self.err(e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(resp)
        } else {
            let body = resp.text().await.unwrap_or_default();
            Err(self.err(format!("HTTP {status}: {}", body.trim())))
        }
    }

    /// Sends `req` and reads a JSON answer.
    pub(super) async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        self.send(req).await?.json().await.map_err(|e| self.err(e))
    }

    /// An error of this agent: unavailable, with the reason.
    pub(super) fn err(&self, e: impl Display) -> Error {
        Error::Unavailable {
            backend: BACKEND.into(),
            message: format!("{}: {e}", self.base),
        }
    }
}
