//! The settings of the `chi://` adapter: where the agent's admin port is, and the checks that
//! turn it into the base URL of the registry API.
//!
//! The checks live here, next to the type, so a config file and a program building an
//! [`AgentConfig`] by hand are refused for the same reasons, with errors at the same YAML path
//! (`service_discovery.registries.chi...`).

use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};

/// YAML path of the `chi` block, the prefix of every config error of this adapter.
pub const FIELD: &str = "service_discovery.registries.chi";
const ADDRESS_FIELD: &str = "service_discovery.registries.chi.address";
/// The admin address of a `chi agent` started without `--admin`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9901";

/// How to reach a running `chi agent`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The agent's admin address: `host:port` (as `chi agent` prints it at start), or an
    /// `http://` URL, with an optional path prefix behind a proxy.
    pub address: String,
    /// Deadline of one call, and of connecting a watch (a watch itself lasts).
    pub request_timeout: Duration,
}

impl Default for AgentConfig {
    /// The agent on [`DEFAULT_ADDRESS`], 5 s call deadline.
    fn default() -> Self {
        AgentConfig {
            address: DEFAULT_ADDRESS.into(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl AgentConfig {
    /// The agent at `address`, other settings default.
    pub fn new(address: impl Into<String>) -> Self {
        AgentConfig {
            address: address.into(),
            ..AgentConfig::default()
        }
    }

    /// Checks the values, as [`Agent::new`](super::Agent) does; errors name the YAML path.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(|_| ())
    }

    /// Checks the values; answers the agent's base URL.
    pub(crate) fn checked(&self) -> Result<Url> {
        if self.request_timeout.is_zero() {
            return Err(Error::config(
                format!("{FIELD}.request_timeout"),
                "must be > 0",
            ));
        }
        base_url(&self.address)
    }
}

/// `127.0.0.1:9901` → `http://127.0.0.1:9901/`; an `http://` URL is taken as it is.
fn base_url(address: &str) -> Result<Url> {
    let address = address.trim();
    if address.is_empty() {
        return Err(Error::config(ADDRESS_FIELD, "must not be empty"));
    }
    let full = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let url = Url::parse(&full).map_err(|e| {
        Error::config(
            ADDRESS_FIELD,
            format!("`{address}` is not host:port or an http:// URL: {e}"),
        )
    })?;
    if url.scheme() != "http" || url.cannot_be_a_base() {
        return Err(Error::config(
            ADDRESS_FIELD,
            format!("`{address}`: the scheme must be http"),
        ));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(Error::config(
            ADDRESS_FIELD,
            format!("`{address}`: expected host:port, without credentials, a query or a fragment"),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_the_base_url() {
        for (address, url) in [
            ("127.0.0.1:9901", "http://127.0.0.1:9901/"),
            ("http://agent.local:9901/", "http://agent.local:9901/"),
            ("http://h:1/chi", "http://h:1/chi"),
            (" [::1]:9901 ", "http://[::1]:9901/"),
        ] {
            let got = AgentConfig::new(address).checked().expect(address);
            assert_eq!(got.as_str(), url, "{address}");
        }
    }

    #[test]
    fn bad_addresses_name_the_field() {
        for (address, part) in [
            ("", "must not be empty"),
            ("https://h:1", "the scheme must be http"),
            ("ftp://h:1", "the scheme must be http"),
            ("http://u:p@h:1", "without credentials"),
            ("h:1?x=1", "without credentials, a query"),
            ("h:99999", "not host:port"),
        ] {
            let e = AgentConfig::new(address).validate().expect_err(address);
            let shown = e.to_string();
            assert!(shown.starts_with(ADDRESS_FIELD), "{address}: {shown}");
            assert!(shown.contains(part), "{address}: {shown}");
        }
        let zero = AgentConfig {
            request_timeout: Duration::ZERO,
            ..AgentConfig::default()
        };
        let shown = zero.validate().expect_err("zero").to_string();
        assert!(
            shown.starts_with(&format!("{FIELD}.request_timeout")),
            "{shown}"
        );
    }
}
