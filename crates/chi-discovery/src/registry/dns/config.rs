//! The settings of the DNS adapter, their defaults and their checks, and the DNS name rules chi
//! applies before a name reaches a resolver.
//!
//! The checks live here, next to the types, so that a config file, a `dns://` URL and a program
//! building a [`DnsConfig`] by hand are refused for the same reasons, at the same YAML path
//! (`service_discovery.registries.dns...`). They need no resolver, so this file is compiled in
//! every build, as every adapter's config is.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// YAML path of the DNS block, the prefix of every config error of this adapter.
pub const FIELD: &str = "service_discovery.registries.dns";
/// The placeholder a name template holds; the service name replaces it.
pub const SERVICE: &str = "{service}";
/// The port of a DNS server given without one.
pub const DEFAULT_PORT: u16 = 53;
/// The resolver configuration read when no server is given.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Which records give a service's instances.
///
/// A template that ends in `.` is an absolute name, asked as written. Without it the resolver's
/// search list applies, as for any program on the host (`resolv.conf`'s `search` and `ndots`; an
/// explicit server has none): each candidate is asked in turn and the last one's answer counts,
/// so write absolute names where a timeout on one candidate must not turn into another's
/// NXDOMAIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// SRV records (RFC 2782) at the name this template gives, e.g.
    /// `_{service}._tcp.svc.cluster.local` or Consul's `_{service}._tcp.service.consul`: each
    /// record's target, resolved to its addresses, at the record's port.
    Srv(String),
    /// A and AAAA records at the name this template gives (a Kubernetes headless service,
    /// `{service}.default.svc.cluster.local`), every address at `port`.
    A {
        /// The name template.
        template: String,
        /// The port every address serves on.
        port: u16,
    },
}

impl DnsQuery {
    /// The name template.
    pub fn template(&self) -> &str {
        match self {
            DnsQuery::Srv(t) | DnsQuery::A { template: t, .. } => t,
        }
    }

    /// The YAML key of the template (`srv` or `a`).
    pub fn key(&self) -> &'static str {
        match self {
            DnsQuery::Srv(_) => "srv",
            DnsQuery::A { .. } => "a",
        }
    }
}

/// How chi finds services in DNS, and how often it looks again.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// The DNS server: `IP` or `IP:PORT` (`[IPv6]:PORT`); port 53 when none is given. `None`:
    /// the system resolver's servers, search list and `ndots`, from [`DnsConfig::resolv_conf`].
    pub server: Option<String>,
    /// Without a server, the resolver configuration to read (default `/etc/resolv.conf`).
    pub resolv_conf: Option<PathBuf>,
    /// Which records to ask for, at which name.
    pub query: DnsQuery,
    /// The shortest time between two resolutions of a watched service: a record's TTL below it
    /// (Consul answers with TTL 0) is raised to it.
    pub min_refresh: Duration,
    /// The longest: a record's TTL above it is lowered to it, so a change is seen within this
    /// bound whatever TTL the zone gives.
    pub max_refresh: Duration,
    /// How long one query may take before it is tried again (twice) or fails.
    pub timeout: Duration,
}

impl DnsConfig {
    /// SRV records at `template`, with the default refresh bounds (1 s to 30 s), a 2 s query
    /// timeout and the system resolver.
    pub fn srv(template: impl Into<String>) -> DnsConfig {
        DnsConfig::with_query(DnsQuery::Srv(template.into()))
    }

    /// A/AAAA records at `template`, every address at `port`, with the defaults of
    /// [`DnsConfig::srv`].
    pub fn a(template: impl Into<String>, port: u16) -> DnsConfig {
        DnsConfig::with_query(DnsQuery::A {
            template: template.into(),
            port,
        })
    }

    fn with_query(query: DnsQuery) -> DnsConfig {
        DnsConfig {
            server: None,
            resolv_conf: None,
            query,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sets the server (`IP[:PORT]`).
    pub fn with_server(mut self, server: impl Into<String>) -> DnsConfig {
        self.server = Some(server.into());
        self
    }

    /// Checks the values, as [`Dns::new`](super::Dns) does; errors name the YAML path.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(|_| ())
    }

    /// Checks the values; answers the server's socket address (`None`: the system resolver).
    pub(crate) fn checked(&self) -> Result<Option<SocketAddr>> {
        let server = self
            .server
            .as_deref()
            .map(|s| server_addr(s).map_err(|m| Error::config(format!("{FIELD}.server"), m)))
            .transpose()?;
        let key = self.query.key();
        check_template(self.query.template())
            .map_err(|m| Error::config(format!("{FIELD}.{key}"), m))?;
        if let DnsQuery::A { port: 0, .. } = self.query {
            return Err(Error::config(
                format!("{FIELD}.port"),
                "must be between 1 and 65535 (the port every address serves on), got 0",
            ));
        }
        for (key, value) in [("min_refresh", self.min_refresh), ("timeout", self.timeout)] {
            if value.is_zero() {
                return Err(Error::config(
                    format!("{FIELD}.{key}"),
                    "must be greater than zero, got 0s",
                ));
            }
        }
        if self.max_refresh < self.min_refresh {
            return Err(Error::config(
                format!("{FIELD}.max_refresh"),
                format!(
                    "must not be shorter than min_refresh ({}), got {}",
                    humantime::format_duration(self.min_refresh),
                    humantime::format_duration(self.max_refresh)
                ),
            ));
        }
        Ok(server)
    }

    /// What selects this registry's data, for [`Registries::identity`](crate::registry::Registries::identity):
    /// the server (or the system resolver) and the query.
    pub fn identity(&self) -> String {
        let server = self.server.as_deref().map_or("system", str::trim);
        match &self.query {
            DnsQuery::Srv(t) => format!("dns(server={server},srv={t})"),
            DnsQuery::A { template, port } => {
                format!("dns(server={server},a={template},port={port})")
            }
        }
    }

    /// The name to ask for `service`: the template with `{service}` replaced, after checking
    /// that `service` is one DNS label.
    pub fn name_of(&self, service: &str) -> Result<String> {
        check_label(service)?;
        let name = self.query.template().replace(SERVICE, service);
        check_name(&name).map_err(|m| {
            Error::invalid(
                "service name",
                service,
                format!("makes the DNS name {name:?}, which does not fit: {m}"),
            )
        })?;
        Ok(name)
    }
}

/// `10.0.0.1`, `10.0.0.1:5353`, `::1`, `[::1]:5353` → a socket address. Host names are refused:
/// the server is how names get resolved, so it must be an address.
pub(crate) fn server_addr(value: &str) -> std::result::Result<SocketAddr, String> {
    let v = value.trim();
    let expected = || {
        format!(
            "expected the DNS server's IP address with an optional port, such as \"10.96.0.10\", \
             \"127.0.0.1:5353\" or \"[::1]:5353\", got {value:?}"
        )
    };
    let addr = if let Ok(ip) = v.parse::<IpAddr>() {
        SocketAddr::new(ip, DEFAULT_PORT)
    } else {
        v.parse::<SocketAddr>().map_err(|_| expected())?
    };
    if addr.port() == 0 {
        return Err(format!(
            "the port must be between 1 and 65535, got 0 in {value:?}"
        ));
    }
    Ok(addr)
}

/// A name template: `{service}` in it, and a valid DNS name once a service name replaces it.
pub(crate) fn check_template(template: &str) -> std::result::Result<(), String> {
    if !template.contains(SERVICE) {
        return Err(format!(
            "must hold {SERVICE}, which the service name replaces, such as \
             \"_{{service}}._tcp.svc.cluster.local\", got {template:?}"
        ));
    }
    check_name(&template.replace(SERVICE, "x"))
        .map_err(|m| format!("{template:?} is not a DNS name: {m}"))
}

/// A DNS name as chi sends it: labels of 1 to 63 letters, digits, `-` and `_`, at most 253
/// characters, an optional final `.` (an absolute name, not tried with the search list).
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    let relative = name.strip_suffix('.').unwrap_or(name);
    if relative.is_empty() {
        return Err("it is empty".into());
    }
    if relative.len() > 253 {
        return Err(format!(
            "it is {} characters long, at most 253 fit in DNS",
            relative.len()
        ));
    }
    for label in relative.split('.') {
        label_rule(label)?;
    }
    Ok(())
}

/// A service name in DNS: one label (the template places it), so no `.`.
pub(crate) fn check_label(service: &str) -> Result<()> {
    crate::instance::validate_name("service name", service)?;
    label_rule(service).map_err(|m| {
        Error::invalid(
            "service name",
            service.escape_debug().to_string(),
            format!(
                "DNS finds services by name, so it must be one DNS label (1 to 63 letters, \
                 digits, `-` or `_`): {m}"
            ),
        )
    })
}

fn label_rule(label: &str) -> std::result::Result<(), String> {
    if label.is_empty() {
        return Err("a label is empty (two dots in a row, or a leading dot)".into());
    }
    if label.len() > 63 {
        return Err(format!(
            "the label {}... is {} characters long, at most 63 fit",
            label.chars().take(16).collect::<String>(),
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{c:?} in {label:?} is not a letter, digit, `-` or `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_addresses_with_an_optional_port() {
        assert_eq!(
            server_addr("10.96.0.10"),
            Ok("10.96.0.10:53".parse().expect("addr"))
        );
        assert_eq!(
            server_addr(" 127.0.0.1:5353 "),
            Ok("127.0.0.1:5353".parse().expect("addr"))
        );
        assert_eq!(server_addr("::1"), Ok("[::1]:53".parse().expect("addr")));
        assert_eq!(
            server_addr("[::1]:5353"),
            Ok("[::1]:5353".parse().expect("addr"))
        );
        for bad in [
            "dns.local",
            "dns.local:53",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(server_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_hold_the_placeholder_and_make_dns_names() {
        assert!(check_template("_{service}._tcp.svc.cluster.local").is_ok());
        assert!(check_template("_{service}._tcp.service.consul.").is_ok());
        assert!(check_template("{service}").is_ok());
        let err = check_template("_web._tcp.svc.test").unwrap_err();
        assert!(err.contains("{service}"), "{err}");
        let err = check_template("_{service}..svc").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = check_template("{service}.svc test").unwrap_err();
        assert!(err.contains("' '"), "{err}");
        let long = format!("{{service}}.{}", "a".repeat(64));
        assert!(check_template(&long).unwrap_err().contains("63"));
    }

    #[test]
    fn service_names_must_be_one_label() {
        assert!(check_label("user-service_2").is_ok());
        for bad in ["a.b", "with space", "ünï", "", "a/b", &"x".repeat(64)] {
            let err = check_label(bad).unwrap_err().to_string();
            assert!(err.contains("service name"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_service_name_that_makes_too_long_a_name_is_refused() {
        let middle = format!("{}.{}", vec!["a".repeat(60); 3].join("."), "b".repeat(50));
        let c = DnsConfig::srv(format!("_{{service}}.{middle}.test"));
        assert!(c.name_of("web").is_ok());
        let err = c.name_of(&"w".repeat(62)).unwrap_err().to_string();
        assert!(
            err.contains("service name") && err.contains("at most 253"),
            "{err}"
        );
    }

    #[test]
    fn checks_name_the_yaml_path() {
        let err = |c: DnsConfig| c.validate().unwrap_err().to_string();
        assert!(
            err(DnsConfig::srv("_web._tcp")).starts_with("service_discovery.registries.dns.srv:")
        );
        assert!(
            err(DnsConfig::a("{service}", 0)).starts_with("service_discovery.registries.dns.port:")
        );
        assert!(
            err(DnsConfig::srv("{service}").with_server("dns.local"))
                .starts_with("service_discovery.registries.dns.server:")
        );
        let mut c = DnsConfig::srv("{service}");
        c.max_refresh = Duration::from_millis(10);
        assert!(err(c).contains("max_refresh: must not be shorter than min_refresh (1s)"));
        assert_eq!(
            DnsConfig::a("{service}.ns", 80)
                .with_server("10.0.0.1")
                .identity(),
            "dns(server=10.0.0.1,a={service}.ns,port=80)"
        );
    }
}
