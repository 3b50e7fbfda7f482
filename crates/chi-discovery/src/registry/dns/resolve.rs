//! The queries: hickory-resolver set up for discovery, and what its answers and errors mean.
//!
//! - **Every refresh asks the server.** hickory's response cache is off (`cache_size` 0): the
//!   watch decides when to ask again (the records' TTL within the configured bounds), and a cache
//!   would answer a `max_refresh` shorter than the TTL with the old records.
//! - **No answer is not an error.** NXDOMAIN, and NOERROR without a record of the asked type
//!   (NODATA), mean the name has no such records now: an empty [`Answer`], with the zone's
//!   negative TTL (RFC 2308) when its SOA came along.
//! - **Everything else is.** A timeout, SERVFAIL, REFUSED, an unreachable server: an error, so
//!   the caller keeps the list it had (chi's stale-on-error rule).
//! - **A and AAAA are asked apart**, both at once: hickory's dual-stack lookup answers with one
//!   family when the other query fails, which would drop the other family's addresses on a
//!   transient error instead of keeping them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::BACKEND;
use super::config::{DnsConfig, FIELD, SYSTEM_RESOLV_CONF};
use super::convert::{SrvRecord, host};
use crate::error::{Error, Result, display_chain};

/// Records of one name and type, or none; `ttl` is the smallest TTL of the records (or the
/// negative TTL of an empty answer, when the server gave one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer<T> {
    pub(super) records: Vec<T>,
    pub(super) ttl: Option<u32>,
}

impl<T> Answer<T> {
    fn none(ttl: Option<u32>) -> Self {
        Answer {
            records: Vec::new(),
            ttl,
        }
    }
}

/// An SRV answer with the addresses the server sent along (its additional section), by target.
pub(super) type SrvAnswer = (Answer<SrvRecord>, HashMap<String, Vec<IpAddr>>);

/// The resolver of one DNS registry.
pub(super) struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

/// Retries of a query that got no answer (hickory's `attempts`): three tries in all.
const RETRIES: usize = 2;

impl Resolver {
    /// A resolver asking `server`, or the servers of the resolver configuration.
    pub(super) fn new(config: &DnsConfig, server: Option<SocketAddr>) -> Result<Resolver> {
        let (resolver_config, mut opts) = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let mut opts = ResolverOpts::default();
                opts.use_hosts_file = ResolveHosts::Never;
                (ResolverConfig::from_parts(None, vec![], vec![server]), opts)
            }
            None => system(config)?,
        };
        opts.cache_size = 0;
        opts.timeout = config.timeout;
        opts.attempts = RETRIES;
        opts.preserve_intermediates = false;
        let inner =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
                .map_err(|e| Error::config(FIELD, format!("cannot set up the resolver: {e}")))?;
        Ok(Resolver {
            inner,
            timeout: config.timeout,
        })
    }

    /// The SRV records at `name`, and the target addresses the server sent along.
    pub(super) async fn srv(&self, name: &Name) -> Result<SrvAnswer> {
        let lookup = match self.inner.lookup(name.clone(), RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return self
                    .empty_or_error("SRV", name, e)
                    .map(|a| (a, HashMap::new()));
            }
        };
        let mut ttl = None;
        let mut records = Vec::new();
        for r in lookup.answers() {
            if let RData::SRV(srv) = &r.data {
                ttl = min(ttl, Some(r.ttl));
                records.push(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: host(&srv.target.to_ascii()),
                });
            }
        }
        let mut addresses: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for r in lookup.additionals() {
            if let Some(ip) = r.data.ip_addr() {
                ttl = min(ttl, Some(r.ttl));
                addresses
                    .entry(host(&r.name.to_ascii()))
                    .or_default()
                    .push(ip);
            }
        }
        Ok((Answer { records, ttl }, addresses))
    }

    /// The A and AAAA records at `name`, asked at once.
    pub(super) async fn addresses(&self, name: &Name) -> Result<Answer<IpAddr>> {
        let (v4, v6) = futures_util::future::join(
            self.addresses_of(name, RecordType::A),
            self.addresses_of(name, RecordType::AAAA),
        )
        .await;
        let (v4, v6) = (v4?, v6?);
        let mut records = v4.records;
        records.extend(v6.records);
        let ttl = if records.is_empty() {
            min(v4.ttl, v6.ttl)
        } else {
            v4.ttl.into_iter().chain(v6.ttl).min()
        };
        Ok(Answer { records, ttl })
    }

    async fn addresses_of(&self, name: &Name, kind: RecordType) -> Result<Answer<IpAddr>> {
        let lookup = match self.inner.lookup(name.clone(), kind).await {
            Ok(lookup) => lookup,
            Err(e) => return self.empty_or_error(kind.into(), name, e),
        };
        let mut answer = Answer::none(None);
        for r in lookup.answers() {
            if r.record_type() == kind
                && let Some(ip) = r.data.ip_addr()
            {
                answer.ttl = min(answer.ttl, Some(r.ttl));
                answer.records.push(ip);
            }
        }
        Ok(answer)
    }

    /// NXDOMAIN and NODATA are an empty answer; everything else an error naming the query.
    fn empty_or_error<T>(&self, kind: &str, name: &Name, e: NetError) -> Result<Answer<T>> {
        if let NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(no)) = &e {
            return Ok(Answer::none(no.negative_ttl));
        }
        let message = match &e {
            NetError::Timeout => format!(
                "no answer to {kind} {name} within {} ({} tries)",
                humantime::format_duration(self.timeout),
                RETRIES + 1
            ),
            NetError::Dns(hickory_resolver::net::DnsError::ResponseCode(code)) => {
                let mnemonic = format!("{code:?}").to_uppercase();
                format!("the server answered {mnemonic} ({code}) to {kind} {name}")
            }
            other => format!("{kind} {name}: {}", display_chain(other)),
        };
        Err(Error::Unavailable {
            backend: BACKEND.into(),
            message,
        })
    }
}

fn min(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The system resolver: servers, search list and `ndots` from the resolver configuration.
fn system(config: &DnsConfig) -> Result<(ResolverConfig, ResolverOpts)> {
    let path = config
        .resolv_conf
        .clone()
        .unwrap_or_else(|| SYSTEM_RESOLV_CONF.into());
    let field = format!("{FIELD}.resolv_conf");
    let text = std::fs::read(&path).map_err(|e| {
        Error::config(
            &field,
            format!(
                "no server is given, so the system resolver is used, but {} cannot be read: {e}",
                path.display()
            ),
        )
    })?;
    #[cfg(unix)]
    let parsed = hickory_resolver::system_conf::parse_resolv_conf(text);
    #[cfg(not(unix))]
    let parsed = {
        let _ = text;
        hickory_resolver::system_conf::read_system_conf()
    };
    let (resolver_config, opts) = parsed.map_err(|e| {
        Error::config(
            &field,
            format!("{}: not a resolver configuration: {e}", path.display()),
        )
    })?;
    if resolver_config.name_servers().is_empty() {
        return Err(Error::config(
            field,
            format!(
                "{} names no nameserver; give the DNS server in `server` instead",
                path.display()
            ),
        ));
    }
    Ok((resolver_config, opts))
}

/// `name` (checked by [`check_name`](super::config::check_name)) as hickory's [`Name`].
pub(super) fn dns_name(name: &str) -> Result<Name> {
    Name::from_ascii(name).map_err(|e| Error::invalid("DNS name", name, e.to_string()))
}
