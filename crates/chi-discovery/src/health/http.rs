//! HTTP probe: `GET` a path on the instance (or a configured URL); healthy on 2xx, or on a
//! configured status range (HAProxy's `http-check expect status`, Envoy's `expected_statuses`).
//!
//! Each probe opens a fresh connection (no idle pool), so a server that stopped accepting is seen
//! at once rather than hidden behind a kept-alive connection. Redirects are not followed and proxy
//! environment variables are ignored: the probe talks to the instance and nothing else.

use std::ops::RangeInclusive;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;

use super::{CheckError, Probe, is_own_host};
use crate::error::display_chain;
use crate::error::{Error, Result};
use crate::instance::Instance;

#[derive(Debug, Clone)]
enum Target {
    /// A path resolved against the instance's `address:port`.
    Path(String),
    /// An absolute URL.
    Url(Url),
}

/// `GET` health probe.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    target: Target,
    https: bool,
    timeout: Duration,
    expected: RangeInclusive<u16>,
    host: Option<String>,
    allow_other_hosts: bool,
}

impl HttpProbe {
    /// A check of `path_or_url`: a path (`/health`; empty means `/`) on the instance's own
    /// `address:port`, or an absolute `http(s)://` URL (which must point at the instance unless
    /// [`HttpProbe::allow_other_hosts`]). Defaults: plain HTTP, 3 s timeout, healthy on 2xx.
    pub fn new(path_or_url: impl Into<String>) -> Result<Self> {
        let raw = path_or_url.into();
        let trimmed = raw.trim();
        let target = if trimmed.is_empty() {
            Target::Path("/".to_owned())
        } else if trimmed.starts_with('/') {
            Target::Path(trimmed.to_owned())
        } else if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
            let url = Url::parse(trimmed)
                .map_err(|e| Error::invalid("http check target", trimmed, e.to_string()))?;
            if url.host_str().is_none() {
                return Err(Error::invalid("http check target", trimmed, "no host"));
            }
            Target::Url(url)
        } else {
            return Err(Error::invalid(
                "http check target",
                trimmed,
                "expected a path starting with `/` or an http(s):// URL",
            ));
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| Error::invalid("http check", raw.clone(), e.to_string()))?;
        Ok(HttpProbe {
            client,
            target,
            https: false,
            timeout: Duration::from_secs(3),
            expected: 200..=299,
            host: None,
            allow_other_hosts: false,
        })
    }

    /// Sets the timeout of the whole exchange (connect, request, response head).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Statuses that count as healthy (default `200..=299`).
    pub fn expect_status(mut self, range: RangeInclusive<u16>) -> Self {
        self.expected = range;
        self
    }

    /// Sends this `Host` header (virtual hosts behind one address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Uses `https` for path targets (default `http`).
    pub fn https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// Allows an absolute URL on another host or port than the instance's (off by default).
    pub fn allow_other_hosts(mut self, allow: bool) -> Self {
        self.allow_other_hosts = allow;
        self
    }

    /// The URL probed for `instance`, or why it is refused.
    pub fn url_for(&self, instance: &Instance) -> Result<Url, CheckError> {
        match &self.target {
            Target::Path(path) => {
                let scheme = if self.https { "https" } else { "http" };
                let raw = format!("{scheme}://{}{path}", instance.authority());
                let url = Url::parse(&raw).map_err(|e| CheckError::Target {
                    message: format!("{raw}: {e}"),
                })?;
                // A registered address with URL syntax in it must not move the probe elsewhere.
                match url.host_str() {
                    Some(h)
                        if is_own_host(instance, h)
                            && url.port_or_known_default() == Some(instance.port) =>
                    {
                        Ok(url)
                    }
                    _ => Err(CheckError::Target {
                        message: format!("{raw} does not resolve to the instance's address"),
                    }),
                }
            }
            Target::Url(url) => {
                let own = url.host_str().is_some_and(|h| is_own_host(instance, h))
                    && url.port_or_known_default() == Some(instance.port);
                if own || self.allow_other_hosts {
                    Ok(url.clone())
                } else {
                    Err(CheckError::Target {
                        message: format!(
                            "{url} is not on the instance's address {}; \
                             enable allow_other_hosts to probe it",
                            instance.authority()
                        ),
                    })
                }
            }
        }
    }
}

#[async_trait]
impl Probe for HttpProbe {
    async fn check(&self, instance: &Instance) -> Result<(), CheckError> {
        let url = self.url_for(instance)?;
        let mut req = self.client.get(url.clone()).timeout(self.timeout);
        if let Some(host) = &self.host {
            req = req.header(reqwest::header::HOST, host);
        }
        let exchange = async {
            let resp = req.send().await?;
            Ok::<u16, reqwest::Error>(resp.status().as_u16())
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) if self.expected.contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(CheckError::HttpStatus {
                status,
                expected: format!("{}..={}", self.expected.start(), self.expected.end()),
            }),
            Ok(Err(e)) if e.is_timeout() => Err(CheckError::Timeout {
                after: self.timeout,
            }),
            Ok(Err(e)) if e.is_connect() => Err(CheckError::Connect {
                message: format!("{url}: {}", display_chain(&e)),
            }),
            Ok(Err(e)) => Err(CheckError::Protocol {
                message: format!("{url}: {}", display_chain(&e)),
            }),
            Err(_) => Err(CheckError::Timeout {
                after: self.timeout,
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance::new("s", "127.0.0.1", 8080)
    }

    #[test]
    fn paths_resolve_against_the_instance() {
        let c = HttpProbe::new("/health").expect("path");
        assert_eq!(
            c.url_for(&inst()).expect("url").as_str(),
            "http://127.0.0.1:8080/health"
        );
        let c = HttpProbe::new("").expect("empty");
        assert_eq!(
            c.url_for(&inst()).expect("url").as_str(),
            "http://127.0.0.1:8080/"
        );
        let c = HttpProbe::new("/h").expect("path").https(true);
        assert_eq!(
            c.url_for(&Instance::new("s", "::1", 8443))
                .expect("url")
                .as_str(),
            "https://[::1]:8443/h"
        );
    }

    #[test]
    fn urls_elsewhere_need_opt_in() {
        let own = HttpProbe::new("http://127.0.0.1:8080/status").expect("url");
        assert!(own.url_for(&inst()).is_ok());
        for other in [
            "http://127.0.0.1:9090/status",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let c = HttpProbe::new(other).expect("url");
            assert!(
                matches!(c.url_for(&inst()), Err(CheckError::Target { .. })),
                "{other}"
            );
            assert!(c.allow_other_hosts(true).url_for(&inst()).is_ok());
        }
    }

    #[test]
    fn registered_addresses_cannot_smuggle_a_host() {
        let c = HttpProbe::new("/health").expect("path");
        let evil = Instance::new("s", "evil.example@127.0.0.1", 8080);
        assert!(c.url_for(&evil).is_err());
        let evil = Instance::new("s", "127.0.0.1:1/x#", 8080);
        assert!(c.url_for(&evil).is_err());
    }

    #[test]
    fn bad_targets_are_rejected() {
        for bad in ["health", "ftp://h/x", "http://"] {
            assert!(HttpProbe::new(bad).is_err(), "{bad}");
        }
    }
}
