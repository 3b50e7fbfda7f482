//! The settings of the Consul adapter: what the user writes (or the config file gives), the
//! defaults, and their checks.
//!
//! The checks live here, next to the types, so that a config file and a program building a
//! [`ConsulConfig`] by hand are refused for the same reasons, with errors at the same YAML path
//! (`service_discovery.registries.consul...`).

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// YAML path of the Consul block, the prefix of every config error of this adapter.
pub const FIELD: &str = "service_discovery.registries.consul";
const ADDRESS_FIELD: &str = "service_discovery.registries.consul.address";
/// Environment variable that overrides [`ConsulConfig::token`] in the config file and the CLI.
pub const ENV_TOKEN: &str = "CHI_CONSUL_TOKEN";
/// The agent chi talks to when none is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// How to reach Consul and how chi uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    /// The agent: `127.0.0.1:8500`, or a URL with scheme (`https://consul.local:8501`, with an
    /// optional path prefix behind a proxy).
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`. Empty: none (the anonymous token).
    ///
    /// A write without the permission fails with 403 and Consul's message; a *read* is filtered
    /// silently by Consul 1.8 (a service the token may not read answers as having no
    /// instances), so give discovery a token with `service:read`.
    pub token: Secret,
    /// Datacenter to discover in (`dc=`); `None` or empty: the agent's own.
    pub datacenter: Option<String>,
    /// Which servers may answer discovery reads, and how fresh the answer must be (Consul's
    /// consistency modes): [`Consistency::Stale`] keeps discovery answering while the servers
    /// have no leader.
    pub consistency: Consistency,
    /// TTL of chi's keep-alive check; keep-alives run every third of it.
    pub check_ttl: Duration,
    /// `DeregisterCriticalServiceAfter` of chi's TTL check: Consul removes an instance whose
    /// keep-alive stopped this long ago. `None`: it stays, critical, until deregistered.
    pub deregister_critical_after: Option<Duration>,
    /// How long one blocking query may wait for a change (Consul caps it at 10 minutes).
    pub wait: Duration,
    /// Deadline of one ordinary call (and of connecting).
    pub request_timeout: Duration,
    /// TLS settings; `Some` makes a scheme-less address `https`.
    pub tls: Option<TlsConfig>,
    /// Let active checks of [`Registry::register_with_checks`](crate::Registry::register_with_checks)
    /// target another host or port than the instance's own (an absolute HTTP URL, a TCP
    /// `host:port`). Off by default: the agent runs those checks, so a registration could
    /// otherwise make it fetch any address its network reaches (a cloud metadata endpoint, an
    /// internal admin page).
    pub allow_other_check_hosts: bool,
}

impl Default for ConsulConfig {
    /// The local agent without a token, 15 s TTL, 5 min blocking waits, 5 s call deadline.
    fn default() -> Self {
        ConsulConfig {
            address: DEFAULT_ADDRESS.into(),
            token: Secret::default(),
            datacenter: None,
            consistency: Consistency::Default,
            check_ttl: Duration::from_secs(15),
            deregister_critical_after: None,
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            tls: None,
            allow_other_check_hosts: false,
        }
    }
}

/// Consul's consistency mode of a discovery read (`/v1/health/service`, plain or blocking), as
/// documented at <https://developer.hashicorp.com/consul/api-docs/features/consistency>. Writes
/// go to the local agent and are not affected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// `default`: the leader answers without first confirming it still is the leader. Always
    /// the current data except in the short window where a deposed leader has not noticed yet;
    /// while the servers elect (or have lost their quorum), reads fail with `No cluster leader`.
    #[default]
    Default,
    /// `stale`: any server answers from its own copy (`?stale`), with or without a leader. Reads
    /// go on through an election and a lost quorum, and spread over the servers; the answer may
    /// lag the leader (Consul says by typically under 50 ms, and by as long as there is no
    /// leader). An empty answer from a server that knows no leader is not believed for a service
    /// that had instances (see the module docs).
    Stale,
    /// `consistent`: the leader confirms its leadership with a quorum before answering
    /// (`?consistent`): never stale, one more round trip per read, and no answer without a
    /// quorum.
    Consistent,
}

impl Consistency {
    /// The name in the config file: `default`, `stale` or `consistent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Default => "default",
            Consistency::Stale => "stale",
            Consistency::Consistent => "consistent",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Consistency {
    type Err = Error;

    /// `default`, `stale` or `consistent`; anything else is an error at
    /// `service_discovery.registries.consul.consistency` naming the value.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim() {
            "default" => Ok(Consistency::Default),
            "stale" => Ok(Consistency::Stale),
            "consistent" => Ok(Consistency::Consistent),
            other => Err(Error::config(
                format!("{FIELD}.consistency"),
                format!("expected \"default\", \"stale\" or \"consistent\", got {other:?}"),
            )),
        }
    }
}

/// TLS to the agent's HTTPS port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the agent's certificate (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for agents with `verify_incoming`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Skip certificate verification. For tests only.
    pub insecure_skip_verify: bool,
}

impl ConsulConfig {
    /// Checks the values, as [`Consul::new`](super::Consul) does; errors name the YAML path.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(|_| ())
    }

    /// Checks the values; answers the agent's base URL.
    pub(crate) fn checked(&self) -> Result<Url> {
        let config = self;
        let base = base_url(&config.address, config.tls.is_some())?;
        if config.check_ttl < Duration::from_millis(100) {
            return Err(Error::config(
                format!("{FIELD}.check_ttl"),
                format!("must be at least 100ms, got {:?}", config.check_ttl),
            ));
        }
        if config.wait.is_zero() || config.wait > Duration::from_secs(600) {
            return Err(Error::config(
                format!("{FIELD}.wait"),
                format!("must be between 1ms and 10m, got {:?}", config.wait),
            ));
        }
        if config.request_timeout.is_zero() {
            return Err(Error::config(
                format!("{FIELD}.request_timeout"),
                "must be > 0",
            ));
        }
        Ok(base)
    }
}

/// `127.0.0.1:8500` → `http://127.0.0.1:8500/`; URLs with a scheme are taken as they are.
pub(super) fn base_url(address: &str, tls: bool) -> Result<Url> {
    let address = address.trim();
    if address.is_empty() {
        return Err(Error::config(ADDRESS_FIELD, "must not be empty"));
    }
    let full = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{}://{address}", if tls { "https" } else { "http" })
    };
    let url = Url::parse(&full).map_err(|e| {
        Error::config(
            ADDRESS_FIELD,
            format!("`{address}` is not host:port or a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::config(
            ADDRESS_FIELD,
            format!("`{address}`: the scheme must be http or https"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(Error::config(
            ADDRESS_FIELD,
            "must not carry credentials or a query; put the ACL token in `token` or CHI_CONSUL_TOKEN",
        ));
    }
    Ok(url)
}
