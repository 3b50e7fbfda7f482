//! The settings of the etcd adapter: what the user writes (or the config file gives), the
//! defaults, the `CHI_ETCD_*` environment names, and the checks that turn them into the
//! [`Settings`] an [`Etcd`](super::Etcd) runs with.
//!
//! Errors name the YAML path (`service_discovery.registries.etcd...`), whether the values came
//! from a config file or from a program building an [`EtcdConfig`] by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// YAML path of the etcd block, for config errors.
pub const FIELD: &str = "service_discovery.registries.etcd";

/// Environment variable read by [`EtcdConfig::with_env_credentials`] for the user name.
pub const ENV_USERNAME: &str = "CHI_ETCD_USERNAME";
/// Environment variable read by [`EtcdConfig::with_env_credentials`] for the password.
pub const ENV_PASSWORD: &str = "CHI_ETCD_PASSWORD";
/// The member chi talks to when none is given.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
/// Where instances live when no prefix is given.
pub const DEFAULT_PREFIX: &str = "/chi/services";

/// How to reach etcd and how to lay out the keys.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Client URLs of the cluster members (`127.0.0.1:2379`, `http://10.0.0.1:2379`,
    /// `https://...`). Requests go to one member and move to the next when it is unreachable or
    /// has no leader.
    pub endpoints: Vec<String>,
    /// User name when etcd has auth enabled.
    pub username: Option<String>,
    /// Password of `username` (never printed).
    pub password: Option<Secret>,
    /// Key prefix of the registry; instances live at `{prefix}/{service}/{id}`.
    pub prefix: String,
    /// TTL of the session lease: how long after its last keep-alive a crashed registrant
    /// disappears. Whole seconds (rounded up); etcd raises very small TTLs to its minimum (2 s
    /// with default settings).
    pub lease_ttl: Duration,
    /// Deadline for establishing a connection to a member.
    pub connect_timeout: Duration,
    /// Deadline of every request.
    pub request_timeout: Duration,
    /// TLS settings, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

impl Default for EtcdConfig {
    /// `127.0.0.1:2379`, no auth, prefix `/chi/services`, lease TTL 10 s, timeouts 5 s.
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![DEFAULT_ENDPOINT.into()],
            username: None,
            password: None,
            prefix: DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// TLS files for `https://` endpoints (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate that signed the members' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub key: Option<PathBuf>,
    /// Name to verify the members' certificates against (default: the endpoint's host).
    pub domain: Option<String>,
}

impl EtcdConfig {
    /// A config for `endpoints`, everything else default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Fills `username` and `password` from `CHI_ETCD_USERNAME` / `CHI_ETCD_PASSWORD` when the
    /// config leaves them empty, so the password need not sit in a file.
    pub fn with_env_credentials(mut self) -> Self {
        crate::secret::credentials_from_env(
            &mut self.username,
            &mut self.password,
            (ENV_USERNAME, ENV_PASSWORD),
        );
        self
    }

    /// Checks the values, as [`Etcd::connect`](super::Etcd) does before connecting; errors name
    /// the YAML path.
    pub fn validate(&self) -> Result<()> {
        self.validated().map(|_| ())
    }

    /// Checks the values and normalises the prefix (leading `/`, no trailing `/`).
    pub(super) fn validated(&self) -> Result<Settings> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config(
                format!("{FIELD}.endpoints"),
                "must list at least one endpoint, none of them empty",
            ));
        }
        let trimmed = self.prefix.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(Error::config(
                format!("{FIELD}.prefix"),
                "must not be empty or `/`: chi's keys would mix with everything else in etcd",
            ));
        }
        for part in trimmed.trim_start_matches('/').split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(Error::config(
                    format!("{FIELD}.prefix"),
                    format!("`{}` has an empty, `.` or `..` segment", self.prefix),
                ));
            }
        }
        let prefix = if trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Error::config(
                format!("{FIELD}.lease_ttl"),
                format!("must be at least 1s, got {:?}", self.lease_ttl),
            ));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!("{FIELD}.{name}"), "must be > 0"));
            }
        }
        let username = self.username.clone().filter(|u| !u.is_empty());
        let password = self.password.clone().filter(|p| !p.is_empty());
        if password.is_some() && username.is_none() {
            return Err(Error::config(
                format!("{FIELD}.username"),
                "a password is set but no username",
            ));
        }
        Ok(Settings {
            prefix,
            ttl_secs: self.lease_ttl.as_secs() as i64
                + i64::from(self.lease_ttl.subsec_nanos() > 0),
            lease_ttl: self.lease_ttl,
            request_timeout: self.request_timeout,
            username,
            password,
        })
    }
}

impl EtcdConfig {
    /// How often the lease is renewed: [`keep_alive_every`] its TTL.
    pub(crate) fn keep_alive_interval(&self) -> Duration {
        keep_alive_every(self.lease_ttl)
    }
}

/// A third of the lease's TTL (at least 300 ms): two renewals may fail before it runs out.
pub(super) fn keep_alive_every(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).max(Duration::from_millis(300))
}

/// The validated settings an [`Etcd`] runs with.
#[derive(Debug)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(super) struct Settings {
    pub(super) prefix: String,
    pub(super) ttl_secs: i64,
    pub(super) lease_ttl: Duration,
    pub(super) request_timeout: Duration,
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
}
