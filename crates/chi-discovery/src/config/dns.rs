//! The `dns` registry: the config block and the `dns://` URL, checked into one [`DnsConfig`] by
//! the same rules, and the refusal of a registration that only DNS, read-only, would get.
//!
//! ```yaml
//! registries:
//!   dns:
//!     enabled: true
//!     server: "10.96.0.10:53"                 # optional: the system resolver without it
//!     srv: "_{service}._tcp.svc.cluster.local" # or a: "{service}.ns.svc.cluster.local" + port
//!     min_refresh: 1s                          # the records' TTL, within these bounds
//!     max_refresh: 30s
//!     timeout: 2s
//! ```
//!
//! The URL takes the same keys as query parameters:
//! `dns://[SERVER[:PORT]]?srv=TEMPLATE[&min_refresh=..&max_refresh=..&timeout=..]` or
//! `dns://[SERVER[:PORT]]?a=TEMPLATE&port=N`.

use super::{Field, non_empty, positive_duration, raw};
use crate::error::{Error, Result};
use crate::instance::ServiceConfig;
use crate::registry::Registries;
use crate::registry::dns::{DnsConfig, DnsQuery, FIELD};

/// The keys of the block and of the URL's query.
const KEYS: [&str; 8] = [
    "server",
    "resolv_conf",
    "srv",
    "a",
    "port",
    "min_refresh",
    "max_refresh",
    "timeout",
];

/// The settings as written, before their checks.
#[derive(Default)]
struct Settings {
    server: Option<String>,
    resolv_conf: Option<String>,
    srv: Option<String>,
    a: Option<String>,
    port: Option<u16>,
    min_refresh: Option<String>,
    max_refresh: Option<String>,
    timeout: Option<String>,
}

/// `service_discovery.registries.dns`, when enabled.
pub(super) fn block(d: raw::Dns, at: &Field) -> Result<DnsConfig> {
    let settings = Settings {
        server: non_empty(d.server),
        resolv_conf: non_empty(d.resolv_conf),
        srv: d.srv,
        a: d.a,
        port: d.port,
        min_refresh: d.min_refresh,
        max_refresh: d.max_refresh,
        timeout: d.timeout,
    };
    build(settings, &|key| match key {
        "" => at.clone(),
        key => at.join(key),
    })
}

/// What follows `dns://`: `[SERVER[:PORT]][/]?KEY=VALUE&...`. Errors name the `--registry`
/// parameter.
pub(super) fn from_url(rest: &str) -> Result<DnsConfig> {
    let at = |key: &str| match key {
        "" => Field("--registry".into()),
        key => Field(format!("--registry {key}")),
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_matches('/');
    if authority.contains('/') {
        return Err(at("").err(format!(
            "expected dns://[SERVER[:PORT]]?srv=TEMPLATE or ?a=TEMPLATE&port=N, got a path in {rest:?}"
        )));
    }
    let mut settings = Settings {
        server: (!authority.is_empty()).then(|| authority.to_owned()),
        ..Settings::default()
    };
    let mut seen = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        if seen.contains(&key) {
            return Err(at(&key).err("is given twice"));
        }
        let slot = match key.as_ref() {
            "server" => {
                return Err(at("server").err(
                    "goes before the `?`: dns://SERVER[:PORT]?srv=..., as in dns://10.96.0.10?srv=...",
                ));
            }
            "resolv_conf" => &mut settings.resolv_conf,
            "srv" => &mut settings.srv,
            "a" => &mut settings.a,
            "min_refresh" => &mut settings.min_refresh,
            "max_refresh" => &mut settings.max_refresh,
            "timeout" => &mut settings.timeout,
            "port" => {
                settings.port = Some(value.trim().parse().map_err(|_| {
                    at("port").err(format!(
                        "expected a port number between 1 and 65535, got {value:?}"
                    ))
                })?);
                seen.push(key);
                continue;
            }
            other => {
                return Err(at("").err(format!(
                    "unknown dns:// parameter {other:?}, expected one of {}",
                    KEYS[1..].join(", ")
                )));
            }
        };
        *slot = Some(value);
        seen.push(key);
    }
    build(settings, &at)
}

/// The checks both forms share; `at(key)` names where `key` was written (`""`: the block).
fn build(s: Settings, at: &dyn Fn(&str) -> Field) -> Result<DnsConfig> {
    let query = match (s.srv, s.a) {
        (Some(_), Some(_)) => {
            return Err(at("a")
                .err("takes one of srv (SRV records) or a (A/AAAA records at a port), got both"));
        }
        (Some(template), None) => {
            if let Some(port) = s.port {
                return Err(at("port").err(format!(
                    "applies to a only: SRV records carry their own port, got {port}"
                )));
            }
            DnsQuery::Srv(template)
        }
        (None, Some(template)) => {
            let port = s.port.ok_or_else(|| {
                at("port").err("is required with a (the port every address serves on)")
            })?;
            DnsQuery::A { template, port }
        }
        (None, None) => {
            return Err(at("").err(
                "needs srv (SRV records, e.g. \"_{service}._tcp.svc.cluster.local\") or a \
                 (A/AAAA records, e.g. \"{service}.default.svc.cluster.local\", with port)",
            ));
        }
    };
    if s.server.is_some() && s.resolv_conf.is_some() {
        return Err(at("resolv_conf").err(
            "applies only without a server (it configures the system resolver); give one or the other",
        ));
    }
    let mut config = DnsConfig {
        server: s.server,
        resolv_conf: s.resolv_conf.map(Into::into),
        ..match query {
            DnsQuery::Srv(t) => DnsConfig::srv(t),
            DnsQuery::A { template, port } => DnsConfig::a(template, port),
        }
    };
    for (key, value, slot) in [
        ("min_refresh", s.min_refresh, &mut config.min_refresh),
        ("max_refresh", s.max_refresh, &mut config.max_refresh),
        ("timeout", s.timeout, &mut config.timeout),
    ] {
        if let Some(v) = value {
            *slot = positive_duration(&v, &at(key))?;
        }
    }
    // The adapter's own checks, reported where the user wrote the value.
    config.validate().map_err(|e| match e {
        Error::Config { field, message } => {
            let key = field
                .strip_prefix(FIELD)
                .map(|k| k.trim_start_matches('.'))
                .unwrap_or_default();
            at(key).err(message)
        }
        other => other,
    })?;
    Ok(config)
}

/// A registration with DNS as the only registry: refused, since DNS takes no writes.
pub(super) fn validate_registration(
    registries: &Registries,
    registration: Option<&ServiceConfig>,
    sd: &Field,
) -> Result<()> {
    if registration.is_none() || registries.dns.is_none() || !registries.writable().is_empty() {
        return Ok(());
    }
    Err(sd.join("registration").err(format!(
        "DNS is read-only and the only registry enabled ({FIELD}): it serves discovery and \
         cannot take this registration; enable a registry to register in (consul, etcd, nacos \
         or memory) beside it, or remove registration"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls_give_the_configs_the_block_gives() {
        let c = from_url("127.0.0.1:5353?srv=_{service}._tcp.svc.test&max_refresh=5s")
            .expect("srv url");
        assert_eq!(c.server.as_deref(), Some("127.0.0.1:5353"));
        assert_eq!(c.query, DnsQuery::Srv("_{service}._tcp.svc.test".into()));
        assert_eq!(c.max_refresh, Duration::from_secs(5));
        assert_eq!(c.min_refresh, Duration::from_secs(1));
        let c = from_url("/?a={service}.ns.svc&port=8080").expect("system resolver");
        assert_eq!(c.server, None);
        assert_eq!(
            c.query,
            DnsQuery::A {
                template: "{service}.ns.svc".into(),
                port: 8080
            }
        );
        let c = from_url("[::1]:53/?srv=_%7Bservice%7D._tcp.x").expect("encoded braces");
        assert_eq!(c.query.template(), "_{service}._tcp.x");
    }

    #[test]
    fn url_mistakes_name_the_parameter() {
        let err = |rest: &str| from_url(rest).unwrap_err().to_string();
        assert_eq!(
            err("127.0.0.1?a={service}.x"),
            "--registry port: is required with a (the port every address serves on)"
        );
        assert!(
            err("127.0.0.1?srv={service}&port=80")
                .starts_with("--registry port: applies to a only")
        );
        assert!(err("127.0.0.1?srv=_web._tcp").starts_with("--registry srv: must hold {service}"));
        assert!(
            err("dns.local?srv={service}")
                .starts_with("--registry server: expected the DNS server's IP")
        );
        assert!(err("127.0.0.1?srv={service}&ttl=5s").contains("unknown dns:// parameter \"ttl\""));
        assert!(
            err("127.0.0.1?srv={service}&timeout=0s")
                .starts_with("--registry timeout: must be greater than zero")
        );
        assert!(err("127.0.0.1").starts_with("--registry: needs srv"));
        assert!(
            err("127.0.0.1?a={service}&port=x")
                .starts_with("--registry port: expected a port number")
        );
    }

    fn yaml(registries: &str, registration: bool) -> Result<crate::config::Config> {
        let reg = if registration {
            "  registration:\n    name: web\n    address: 127.0.0.1\n    port: 8080\n"
        } else {
            ""
        };
        crate::config::Config::from_yaml_with_env(
            &format!("service_discovery:\n{reg}  registries:\n{registries}"),
            |_| None,
        )
    }

    #[test]
    fn the_block_is_checked_at_its_yaml_path() {
        let c = yaml(
            "    dns:\n      enabled: true\n      server: 10.96.0.10\n      srv: \"_{service}._tcp.svc.cluster.local\"\n      max_refresh: 10s\n",
            false,
        )
        .expect("dns only, no registration");
        assert_eq!(
            c.registries.enabled(),
            vec!["dns"],
            "no embedded registry beside it"
        );
        let d = c.registries.dns.expect("dns");
        assert_eq!(d.server.as_deref(), Some("10.96.0.10"));
        assert_eq!(d.max_refresh, Duration::from_secs(10));
        let err = |block: &str| yaml(block, false).unwrap_err().to_string();
        assert_eq!(
            err("    dns:\n      enabled: true\n      a: \"{service}.ns\"\n"),
            "service_discovery.registries.dns.port: is required with a (the port every address serves on)"
        );
        assert!(
            err("    dns:\n      enabled: true\n      srv: \"_{service}._tcp\"\n      min_refresh: 10s\n      max_refresh: 1s\n")
                .starts_with("service_discovery.registries.dns.max_refresh: must not be shorter than min_refresh")
        );
        assert!(
            err("    dns:\n      enabled: true\n      srv: \"_{service}._tcp\"\n      server: dns.local\n")
                .starts_with("service_discovery.registries.dns.server:")
        );
        assert!(
            err("    dns:\n      enabled: true\n")
                .starts_with("service_discovery.registries.dns: needs srv")
        );
        assert!(
            err("    dns:\n      enabled: true\n      srv: x\n      ttl: 5s\n")
                .contains("unknown field `ttl`")
        );
        // Disabled: not checked, not used.
        let c = yaml("    dns:\n      enabled: false\n", false).expect("disabled");
        assert_eq!(c.registries.enabled(), vec!["memory"]);
    }

    #[test]
    fn registering_needs_a_writable_registry_beside_dns() {
        let dns = "    dns:\n      enabled: true\n      srv: \"_{service}._tcp.svc.test\"\n";
        let err = yaml(dns, true).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "service_discovery.registration: DNS is read-only and the only registry enabled"
            ),
            "{err}"
        );
        let both = format!("{dns}    memory:\n      enabled: true\n");
        let c = yaml(&both, true).expect("memory takes the registration");
        assert_eq!(c.registries.enabled(), vec!["memory", "dns"]);
        assert_eq!(c.registries.writable(), vec!["memory"]);
        // checked_by: registry counts the writable registries only.
        let consul = format!("{dns}    consul:\n      enabled: true\n");
        let checked = "service_discovery:\n  registration:\n    name: web\n    address: 127.0.0.1\n    port: 8080\n    health_check:\n      http: /health\n      checked_by: registry\n  registries:\n";
        crate::config::Config::from_yaml_with_env(&format!("{checked}{consul}"), |_| None)
            .expect("Consul runs the check, DNS takes no registration");
    }
}
