//! `service_discovery.agent`: who may use the registry API that `chi agent` serves on its admin
//! port, and whether an agent fronting another registry passes writes on to it.
//!
//! ```yaml
//! service_discovery:
//!   agent:
//!     read_token: "..."        # GET /v1/...: lists and watches (else open)
//!     write_token: "..."       # register, keep alive, deregister any service (and read)
//!     write_scopes:            # tokens that may write only some services (and read)
//!       - token: "..."
//!         services: ["orders-*", "billing"]
//!     forward_writes: false    # an agent fronting consul/etcd/nacos/zookeeper/chi: pass writes on
//!     tls:                     # HTTPS on the admin port (PEM files, reloaded when they change)
//!       cert: "/etc/chi/agent.pem"
//!       key: "/etc/chi/agent-key.pem"
//!       client_ca: "/etc/chi/clients-ca.pem"   # optional: clients must show a certificate it signed
//! ```
//!
//! The tokens may come from the environment instead (`CHI_AGENT_READ_TOKEN`,
//! `CHI_AGENT_WRITE_TOKEN`, which win over the file). They are [`Secret`]s: never printed. The
//! binary compares them in constant time; this module only checks and holds them.

use std::path::PathBuf;

use super::raw;
use super::{Field, non_empty};
use crate::error::Result;
use crate::secret::Secret;

/// The environment variable of [`AgentSettings::read_token`].
pub const ENV_READ_TOKEN: &str = "CHI_AGENT_READ_TOKEN";
/// The environment variable of [`AgentSettings::write_token`].
pub const ENV_WRITE_TOKEN: &str = "CHI_AGENT_WRITE_TOKEN";

/// `service_discovery.agent`: the access rules of `chi agent`'s registry API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSettings {
    /// Needed to read (list, watch) when set; any write token reads too.
    pub read_token: Option<Secret>,
    /// May write (register, keep alive, deregister) every service.
    pub write_token: Option<Secret>,
    /// Tokens that may write only the services their patterns match.
    pub write_scopes: Vec<WriteScope>,
    /// An agent whose registry is not its embedded one passes the API's writes on to it only
    /// when this is true (they would go out with the agent's own credentials).
    pub forward_writes: bool,
    /// HTTPS on the admin port, when set.
    pub tls: Option<ServerTls>,
}

/// `agent.tls`: the admin port's certificate and key, and the CA its clients' certificates
/// must chain to (mTLS), as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, a client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

impl AgentSettings {
    /// True when some token may write (`write_token` or a scope).
    pub fn guards_writes(&self) -> bool {
        self.write_token.is_some() || !self.write_scopes.is_empty()
    }
}

/// A token that may write the services its patterns match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteScope {
    /// The token.
    pub token: Secret,
    /// Service name patterns: `*` matches any run of characters (`orders-*`), anything else
    /// itself.
    pub services: Vec<String>,
}

impl WriteScope {
    /// True when one of the patterns matches `service`.
    pub fn allows(&self, service: &str) -> bool {
        self.services.iter().any(|p| matches(p, service))
    }
}

/// `*`-wildcard match of a whole name: the pieces between the stars appear in order, the first
/// at the start and the last at the end.
fn matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No star: the whole name.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Validates the block, with the tokens from `env` winning over the file.
pub(super) fn settings(
    a: raw::Agent,
    at: &Field,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentSettings> {
    let token = |key: &str, file: Option<Secret>, field: &str| -> Result<Option<Secret>> {
        let from_env = env(key).filter(|v| !v.is_empty()).map(Secret::from);
        let value = from_env.or(file);
        match value {
            Some(t) if t.expose().trim().is_empty() => Err(at
                .join(field)
                .err("must not be blank; leave it out for no token")),
            Some(t) if t.expose().trim() != t.expose() => {
                Err(at.join(field).err("must not start or end with whitespace"))
            }
            other => Ok(other),
        }
    };
    let read_token = token(ENV_READ_TOKEN, a.read_token, "read_token")?;
    let write_token = token(ENV_WRITE_TOKEN, a.write_token, "write_token")?;
    let mut write_scopes = Vec::with_capacity(a.write_scopes.len());
    for (i, s) in a.write_scopes.into_iter().enumerate() {
        let p = at.join("write_scopes").index(i);
        let Some(token) = s.token.filter(|t| !t.expose().trim().is_empty()) else {
            return Err(p
                .join("token")
                .err("is required (the bearer token of this scope)"));
        };
        if s.services.is_empty() {
            return Err(p
                .join("services")
                .err("must list at least one service name or pattern, e.g. [\"orders-*\"]"));
        }
        for (j, pattern) in s.services.iter().enumerate() {
            if pattern.trim().is_empty() {
                return Err(p.join("services").index(j).err(format!(
                    "must be a service name or pattern, got {pattern:?}"
                )));
            }
        }
        write_scopes.push(WriteScope {
            token,
            services: s.services,
        });
    }
    let tls = a.tls.map(|t| server_tls(t, &at.join("tls"))).transpose()?;
    Ok(AgentSettings {
        read_token,
        write_token,
        write_scopes,
        forward_writes: a.forward_writes.unwrap_or(false),
        tls,
    })
}

fn server_tls(t: raw::TlsFiles, at: &Field) -> Result<ServerTls> {
    if t.ca.is_some() {
        return Err(at
            .join("ca")
            .err("is a client's setting; the agent's clients' CA is client_ca"));
    }
    let file = |v: Option<String>, key: &str| {
        non_empty(v)
            .map(PathBuf::from)
            .ok_or_else(|| at.join(key).err("is required with tls (a PEM file)"))
    };
    Ok(ServerTls {
        cert: file(t.cert, "cert")?,
        key: file(t.key, "key")?,
        client_ca: non_empty(t.client_ca).map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn patterns_match_whole_names() {
        for (pattern, name, want) in [
            ("orders-*", "orders-api", true),
            ("orders-*", "orders-", true),
            ("orders-*", "my-orders-api", false),
            ("orders", "orders", true),
            ("orders", "orders-api", false),
            ("*-api", "orders-api", true),
            ("*-api", "orders-api-v2", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("*", "anything", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(matches(pattern, name), want, "{pattern} {name}");
        }
    }

    #[test]
    fn tokens_come_from_the_file_or_the_environment_and_never_print() {
        let yaml = "service_discovery:\n  agent:\n    read_token: \"file-read\"\n    write_token: \"file-write\"\n    write_scopes:\n      - token: \"orders-token\"\n        services: [\"orders-*\"]\n    forward_writes: true\n";
        let c = Config::from_yaml_with_env(yaml, |k| {
            (k == ENV_WRITE_TOKEN).then(|| "env-write".to_owned())
        })
        .expect("valid");
        let a = &c.agent;
        assert_eq!(a.read_token.as_ref().map(Secret::expose), Some("file-read"));
        assert_eq!(
            a.write_token.as_ref().map(Secret::expose),
            Some("env-write")
        );
        assert!(a.write_scopes[0].allows("orders-api"));
        assert!(!a.write_scopes[0].allows("billing"));
        assert!(a.forward_writes && a.guards_writes());
        let shown = format!("{c:?}");
        for secret in ["file-read", "env-write", "orders-token"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // None at all: nothing guarded, nothing forwarded.
        let none = Config::from_yaml_with_env("", |_| None).expect("valid");
        assert_eq!(none.agent, AgentSettings::default());
        assert!(!none.agent.guards_writes());
    }

    #[test]
    fn bad_blocks_name_the_field() {
        for (block, field, part) in [
            (
                "    write_token: \" \"\n",
                "service_discovery.agent.write_token",
                "must not be blank",
            ),
            (
                "    read_token: \"x \"\n",
                "service_discovery.agent.read_token",
                "whitespace",
            ),
            (
                "    write_scopes:\n      - services: [\"a\"]\n",
                "service_discovery.agent.write_scopes[0].token",
                "is required",
            ),
            (
                "    write_scopes:\n      - token: \"t\"\n",
                "service_discovery.agent.write_scopes[0].services",
                "at least one",
            ),
            (
                "    tls:\n      cert: \"a.pem\"\n",
                "service_discovery.agent.tls.key",
                "is required",
            ),
            (
                "    write_scopes:\n      - token: \"t\"\n        services: [\"a\", \"\"]\n",
                "service_discovery.agent.write_scopes[0].services[1]",
                "got \"\"",
            ),
        ] {
            let yaml = format!("service_discovery:\n  agent:\n{block}");
            let e = Config::from_yaml_with_env(&yaml, |_| None)
                .expect_err(block)
                .to_string();
            assert!(e.starts_with(field), "{block}: {e}");
            assert!(e.contains(part), "{block}: {e}");
        }
    }
}
