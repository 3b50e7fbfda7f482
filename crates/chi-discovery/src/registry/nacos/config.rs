//! [`NacosConfig`]: where the Nacos servers are (server list, namespace, credentials, group and
//! cluster), plus the timings chi needs, validated before anything is sent.
//!
//! Names follow Nacos' own rules so a bad value fails here, with the field named, instead of as
//! an opaque server error later: namespace ids, group and cluster names use the characters Nacos
//! accepts (`[0-9A-Za-z_.:-]`), at most 128 of them, and never contain `@@`, the separator
//! Nacos puts between group and service (`DEFAULT_GROUP@@user-service`).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// YAML path of the Nacos block, the prefix of every config error of this adapter.
pub const FIELD: &str = "service_discovery.registries.nacos";
/// Environment variable that overrides [`NacosConfig::username`] in the config file and the CLI.
pub const ENV_USERNAME: &str = "CHI_NACOS_USERNAME";
/// Environment variable that overrides [`NacosConfig::password`] in the config file and the CLI.
pub const ENV_PASSWORD: &str = "CHI_NACOS_PASSWORD";
/// The namespace the config file gives when it names none (Nacos' public namespace).
pub const DEFAULT_NAMESPACE: &str = "public";
/// The HTTP context path of a server when none is given.
pub const DEFAULT_CONTEXT_PATH: &str = "/nacos";
/// The HTTP port of a server when none is given.
pub const DEFAULT_PORT: u16 = 8848;

/// Nacos' default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Nacos' default cluster.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// The offset Nacos 2.x puts between a server's HTTP port and its gRPC port.
pub const GRPC_PORT_OFFSET: u16 = 1000;

/// One Nacos server (`server_configs[i]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosServerConfig {
    /// Host name or IP address.
    pub ip: String,
    /// HTTP port (the gRPC port is this + 1000 unless [`NacosConfig::grpc_port`] says otherwise).
    pub port: u16,
    /// HTTP context path, used for the login call (`/nacos`).
    pub context_path: String,
}

impl NacosServerConfig {
    /// A server at `ip:port` with the default context path `/nacos`.
    pub fn new(ip: impl Into<String>, port: u16) -> Self {
        NacosServerConfig {
            ip: ip.into(),
            port,
            context_path: DEFAULT_CONTEXT_PATH.into(),
        }
    }

    /// `ip:port`, IPv6 in brackets.
    #[cfg_attr(not(feature = "nacos"), allow(dead_code))]
    pub(crate) fn authority(&self) -> String {
        if self.ip.contains(':') && !self.ip.starts_with('[') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }

    /// `ip:port` of its gRPC port: `grpc_port`, else the HTTP port + [`GRPC_PORT_OFFSET`].
    #[cfg_attr(not(feature = "nacos"), allow(dead_code))]
    pub(crate) fn grpc_authority(&self, grpc_port: Option<u16>) -> String {
        let port = grpc_port.unwrap_or_else(|| self.port.saturating_add(GRPC_PORT_OFFSET));
        NacosServerConfig {
            port,
            ..self.clone()
        }
        .authority()
    }

    /// The context path with one leading `/` and no trailing one (`""` for none).
    #[cfg_attr(not(feature = "nacos"), allow(dead_code))]
    pub(crate) fn context_path(&self) -> String {
        let p = self.context_path.trim().trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("/{p}")
        }
    }
}

/// Settings of a [`Nacos`](super::Nacos) registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosConfig {
    /// The servers of one Nacos cluster (at least one).
    pub server_configs: Vec<NacosServerConfig>,
    /// Namespace id; empty or `public` is Nacos' public namespace.
    pub namespace_id: String,
    /// User name, when the server has auth enabled.
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<Secret>,
    /// Group of every registered and discovered service (default `DEFAULT_GROUP`).
    pub group_name: String,
    /// Cluster the instances registered here join (default `DEFAULT`). Discovery sees all
    /// clusters.
    pub cluster_name: String,
    /// gRPC port of the servers, when it is not the HTTP port + 1000.
    pub grpc_port: Option<u16>,
    /// Deadline of one call to the server (default 5 s).
    pub timeout: Duration,
    /// Deadline of [`Nacos::connect`](super::Nacos::connect) (default 10 s).
    pub connect_timeout: Duration,
    /// How often the [`ServiceManager`](crate::ServiceManager) checks that the server still
    /// holds each registration (default 5 s).
    pub keep_alive_interval: Duration,
    /// How often a watch asks the server directly, besides listening to pushes (default 5 s):
    /// this is what notices an outage, resyncs after it, and repairs a lost push.
    pub watch_check_interval: Duration,
    /// Push-empty protection (default on): an empty list for a service that had instances is
    /// only believed once the server has been reachable for [`NacosConfig::empty_grace`] and a
    /// direct query confirms it.
    pub push_empty_protection: bool,
    /// How long the server must have been reachable before its "no instances" is believed
    /// (default 10 s): after a server restart, registrants need a moment to come back.
    pub empty_grace: Duration,
    /// Application name sent to the server (default `chi`).
    pub app_name: String,
    /// Where nacos-sdk keeps its on-disk naming cache (default `$TMPDIR/chi-nacos`; nacos-sdk's
    /// own default is `~/nacos`).
    pub cache_dir: Option<PathBuf>,
}

impl Default for NacosConfig {
    fn default() -> Self {
        NacosConfig {
            server_configs: vec![NacosServerConfig::new("127.0.0.1", DEFAULT_PORT)],
            namespace_id: String::new(),
            username: None,
            password: None,
            group_name: DEFAULT_GROUP.into(),
            cluster_name: DEFAULT_CLUSTER.into(),
            grpc_port: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(5),
            watch_check_interval: Duration::from_secs(5),
            push_empty_protection: true,
            empty_grace: Duration::from_secs(10),
            app_name: "chi".into(),
            cache_dir: None,
        }
    }
}

impl NacosConfig {
    /// The default config pointed at one server `ip:port`.
    pub fn new(ip: impl Into<String>, port: u16) -> Self {
        NacosConfig {
            server_configs: vec![NacosServerConfig::new(ip, port)],
            ..Self::default()
        }
    }

    /// Checks every field; errors name the field by its YAML path
    /// (`service_discovery.registries.nacos.client_config.group_name`).
    pub fn validate(&self) -> Result<()> {
        if self.server_configs.is_empty() {
            return Err(Error::config(
                format!("{FIELD}.server_configs"),
                "needs at least one server",
            ));
        }
        for (i, s) in self.server_configs.iter().enumerate() {
            if s.ip.trim().is_empty() {
                return Err(Error::config(
                    format!("{FIELD}.server_configs[{i}].ip"),
                    "must not be empty",
                ));
            }
            if s.port == 0 {
                return Err(Error::config(
                    format!("{FIELD}.server_configs[{i}].port"),
                    "must be between 1 and 65535",
                ));
            }
            if self.grpc_port.is_none() && s.port > u16::MAX - GRPC_PORT_OFFSET {
                return Err(Error::config(
                    format!("{FIELD}.server_configs[{i}].port"),
                    format!(
                        "the gRPC port is the HTTP port + {GRPC_PORT_OFFSET}, so the HTTP port \
                         must be at most {}; or set grpc_port",
                        u16::MAX - GRPC_PORT_OFFSET
                    ),
                ));
            }
        }
        if !self.namespace_id.is_empty() {
            check_nacos_name(
                &format!("{FIELD}.client_config.namespace_id"),
                &self.namespace_id,
            )?;
        }
        check_nacos_name(
            &format!("{FIELD}.client_config.group_name"),
            &self.group_name,
        )?;
        check_nacos_name(
            &format!("{FIELD}.client_config.cluster_name"),
            &self.cluster_name,
        )?;
        if self.password.is_some() && self.username.as_deref().unwrap_or("").is_empty() {
            return Err(Error::config(
                format!("{FIELD}.client_config.username"),
                "a password is set but no username",
            ));
        }
        for (field, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("watch_check_interval", self.watch_check_interval),
        ] {
            if d.is_zero() {
                return Err(Error::config(
                    format!("{FIELD}.{field}"),
                    "must be greater than zero",
                ));
            }
        }
        Ok(())
    }

    /// The namespace as nacos-sdk wants it (`public` is the empty string).
    #[cfg_attr(not(feature = "nacos"), allow(dead_code))]
    pub(crate) fn namespace(&self) -> &str {
        if self.namespace_id == "public" {
            ""
        } else {
            &self.namespace_id
        }
    }
}

/// Nacos' rule for namespace ids, group and cluster names.
fn check_nacos_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(Error::config(
            field,
            format!("must be at most 128 characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(Error::config(
            field,
            format!(
                "`{}` has the character {bad:?}; Nacos accepts only letters, digits, `_`, `-`, \
                 `.` and `:`",
                value.escape_debug()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = NacosConfig::default();
        c.validate().expect("valid");
        assert_eq!(c.group_name, "DEFAULT_GROUP");
        assert_eq!(c.cluster_name, "DEFAULT");
        assert_eq!(
            NacosConfig {
                namespace_id: "public".into(),
                ..c.clone()
            }
            .namespace(),
            ""
        );
    }

    #[test]
    fn bad_names_are_rejected_with_the_field() {
        for (cfg, field) in [
            (
                NacosConfig {
                    group_name: "a@@b".into(),
                    ..NacosConfig::default()
                },
                "client_config.group_name",
            ),
            (
                NacosConfig {
                    namespace_id: "ns/1".into(),
                    ..NacosConfig::default()
                },
                "client_config.namespace_id",
            ),
            (
                NacosConfig {
                    cluster_name: String::new(),
                    ..NacosConfig::default()
                },
                "client_config.cluster_name",
            ),
            (
                NacosConfig {
                    server_configs: vec![],
                    ..NacosConfig::default()
                },
                "server_configs",
            ),
            (
                NacosConfig {
                    password: Some(Secret::new("pw")),
                    ..NacosConfig::default()
                },
                "client_config.username",
            ),
            (NacosConfig::new("h", 65000), "server_configs[0].port"),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{FIELD}.{field}")),
                "{field}: {err}"
            );
            assert!(!err.contains("pw"), "{err}");
        }
        NacosConfig {
            namespace_id: "team-a_1.x:y".into(),
            ..NacosConfig::default()
        }
        .validate()
        .expect("valid namespace");
    }

    #[test]
    fn context_path_is_normalised() {
        let mut s = NacosServerConfig::new("::1", 8848);
        assert_eq!(s.authority(), "[::1]:8848");
        assert_eq!(s.context_path(), "/nacos");
        s.context_path = "nacos/".into();
        assert_eq!(s.context_path(), "/nacos");
        s.context_path = "/".into();
        assert_eq!(s.context_path(), "");
    }

    #[test]
    fn the_grpc_address_is_the_http_port_plus_1000_unless_set() {
        let s = NacosServerConfig::new("::1", 8848);
        assert_eq!(s.grpc_authority(None), "[::1]:9848");
        assert_eq!(s.grpc_authority(Some(7000)), "[::1]:7000");
    }
}
