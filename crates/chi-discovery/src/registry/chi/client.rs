//! The HTTP side of the adapter: one place that builds the agent's URLs, sends, and turns every
//! failure into [`Error::Unavailable`] naming the agent.

use std::fmt::Display;

use reqwest::{RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

use super::BACKEND;
use super::config::AgentConfig;
use super::wire::check_names;
use crate::error::{Error, Result};

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
}

impl Client {
    /// Checks `config` and builds the HTTP clients; does not connect.
    pub(super) fn new(config: &AgentConfig) -> Result<Client> {
        let base = config.checked()?;
        let mut services = base.clone();
        if let Ok(mut path) = services.path_segments_mut() {
            path.pop_if_empty().extend(["v1", "services"]);
        }
        let builder = || {
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(config.request_timeout)
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
        self.http.request(method, url)
    }

    /// A watch request: only connecting has a deadline.
    pub(super) fn stream(&self, url: Url) -> RequestBuilder {
        self.streams.get(url)
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
