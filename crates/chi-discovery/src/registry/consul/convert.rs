//! Between chi's [`Instance`] and Consul's bodies: the register body (with chi's TTL check and
//! the agent-run checks), the health answer back into instances, and a [`Filter`] into the query
//! parameters Consul can filter by itself.
//!
//! Pure functions, no I/O: the mapping rules are in the module docs of `registry::consul`.

use std::collections::BTreeMap;

use reqwest::Url;

use super::api::{self, HealthQuery};
use super::config::ConsulConfig;
use super::wire::{CheckDefinition, ServiceEntry, ServiceRegistration, Weights, go_duration};
use super::{META_VERSION, META_WEIGHT};
use crate::error::{Error, Result};
use crate::instance::{CheckTarget, Filter, HealthCheck, HealthStatus, Instance};

/// Id of chi's TTL check of an instance.
pub(super) fn ttl_check_id(id: &str) -> String {
    format!("chi:{id}:ttl")
}

pub(super) fn ttl_status(health: HealthStatus) -> &'static str {
    match health {
        HealthStatus::Unhealthy => "critical",
        HealthStatus::Healthy | HealthStatus::Unknown => "passing",
    }
}

/// The register body of `instance` with its active `checks` and chi's TTL check.
pub(super) fn registration(
    instance: &Instance,
    checks: &[HealthCheck],
    config: &ConsulConfig,
) -> ServiceRegistration {
    let mut meta = instance.meta.clone();
    if !instance.version.is_empty() {
        meta.insert(META_VERSION.into(), instance.version.clone());
    }
    if instance.weight == 0 {
        meta.insert(META_WEIGHT.into(), "0".into());
    }
    let weight = instance.weight.max(1);
    let authority = instance.authority();
    let mut ttl_deregister = config.deregister_critical_after;
    let mut defs = Vec::new();
    for (n, c) in checks.iter().enumerate() {
        let dereg = c.deregister_critical_service_after.map(go_duration);
        let mut def = CheckDefinition {
            check_id: format!("chi:{}:{n}", instance.id),
            interval: Some(go_duration(c.interval)),
            timeout: Some(go_duration(c.timeout)),
            deregister_critical_service_after: dereg,
            success_before_passing: c.rise,
            failures_before_critical: c.fall,
            ..CheckDefinition::default()
        };
        match &c.target {
            CheckTarget::Http(target) => {
                def.name = format!("HTTP {target}");
                def.http = Some(http_target(target, &authority));
            }
            CheckTarget::Tcp(target) => {
                let t = if target.is_empty() {
                    authority.clone()
                } else {
                    target.clone()
                };
                def.name = format!("TCP {t}");
                def.tcp = Some(t);
            }
            CheckTarget::Grpc(service) => {
                def.name = format!("gRPC {service}");
                def.grpc = Some(if service.is_empty() {
                    authority.clone()
                } else {
                    format!("{authority}/{service}")
                });
            }
            CheckTarget::Ttl => {
                // The TTL check is chi's own, kept alive at the registry's cadence.
                if c.deregister_critical_service_after.is_some() {
                    ttl_deregister = c.deregister_critical_service_after;
                }
                continue;
            }
        }
        defs.push(def);
    }
    defs.push(CheckDefinition {
        check_id: ttl_check_id(&instance.id),
        name: "chi keep-alive".into(),
        ttl: Some(go_duration(config.check_ttl)),
        status: Some(ttl_status(instance.health).into()),
        deregister_critical_service_after: ttl_deregister.map(go_duration),
        ..CheckDefinition::default()
    });
    ServiceRegistration {
        id: instance.id.clone(),
        name: instance.name.clone(),
        tags: instance.tags.clone(),
        address: instance.address.clone(),
        port: instance.port,
        meta,
        weights: Weights {
            passing: weight,
            warning: weight,
        },
        checks: defs,
    }
}

/// Refuses an agent-run check whose target is not the instance's own address and port (see
/// [`ConsulConfig::allow_other_check_hosts`]).
pub(super) fn check_target_is_own(instance: &Instance, target: &CheckTarget) -> Result<()> {
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    let authority = instance.authority();
    let (shown, own) = match target {
        CheckTarget::Http(t) => {
            let full = http_target(t, &authority);
            let own = Url::parse(&full).is_ok_and(|u| {
                u.host_str()
                    .is_some_and(|h| bare(h) == bare(&instance.address))
                    && u.port_or_known_default() == Some(instance.port)
            });
            (full, own)
        }
        CheckTarget::Tcp(t) if !t.is_empty() => {
            let own = t.rsplit_once(':').is_some_and(|(h, p)| {
                bare(h) == bare(&instance.address) && p.parse::<u16>() == Ok(instance.port)
            });
            (t.clone(), own)
        }
        CheckTarget::Tcp(_) | CheckTarget::Grpc(_) | CheckTarget::Ttl => return Ok(()),
    };
    if own {
        Ok(())
    } else {
        Err(Error::invalid(
            "health check target",
            shown,
            format!(
                "is not the instance's address {authority}, and the Consul agent would probe it; \
                 set `allow_other_check_hosts` to allow other hosts"
            ),
        ))
    }
}

/// An HTTP check target: a full URL as is, a path against the instance.
pub(super) fn http_target(target: &str, authority: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        target.to_owned()
    } else if target.starts_with('/') {
        format!("http://{authority}{target}")
    } else {
        format!("http://{authority}/{target}")
    }
}

/// What Consul can filter of `filter` itself.
pub(super) fn health_query(filter: &Filter) -> HealthQuery {
    let exprs: Vec<String> = filter
        .meta
        .iter()
        .filter(|(k, _)| bexpr_identifier(k))
        .map(|(k, v)| format!("Service.Meta.{k} == {}", bexpr_string(v)))
        .collect();
    HealthQuery {
        passing: filter.healthy_only,
        tags: filter.tags.clone(),
        filter: (!exprs.is_empty()).then(|| exprs.join(" and ")),
    }
}

/// Meta keys that go-bexpr accepts as a selector part; others are filtered here only.
pub(super) fn bexpr_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A double-quoted go-bexpr string literal.
pub(super) fn bexpr_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn aggregate_health(entry: &ServiceEntry) -> HealthStatus {
    let mut any = false;
    for c in &entry.checks {
        match c.status.as_str() {
            "critical" => return HealthStatus::Unhealthy,
            "passing" | "warning" => any = true,
            _ => {}
        }
    }
    if any {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unknown
    }
}

pub(super) fn to_instance(entry: ServiceEntry) -> Instance {
    let health = aggregate_health(&entry);
    let s = entry.service;
    let mut meta: BTreeMap<String, String> = s.meta;
    let version = meta.remove(META_VERSION).unwrap_or_default();
    let weight = match meta.remove(META_WEIGHT).and_then(|w| w.parse::<u32>().ok()) {
        Some(w) => w,
        None => s.weights.map(|w| w.passing).unwrap_or(1),
    };
    Instance {
        id: s.id,
        name: s.service,
        version,
        address: if s.address.is_empty() {
            entry.node.address
        } else {
            s.address
        },
        port: s.port,
        tags: s.tags,
        meta,
        weight,
        health,
    }
}

/// Entries to instances, sorted by id (several nodes may answer; the order is stable).
///
/// An entry that is not a valid [`Instance`] (an id or name chi could not use in a key or URL,
/// no address, port 0: services registered by other tools can be like that) is skipped with a
/// warning, never served: what discovery hands out always passes [`Instance::validate`].
pub(super) fn to_instances(entries: Vec<ServiceEntry>) -> Vec<Instance> {
    let mut list: Vec<Instance> = entries
        .into_iter()
        .map(to_instance)
        .filter(|i| match i.validate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(service = %i.name.escape_debug(), id = %i.id.escape_debug(), error = %e, "consul entry is not a usable instance; skipped");
                false
            }
        })
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

/// Decodes the body of a `/v1/health/service/:name` answer into instances, exactly as
/// discovery and watches do: entries that are not valid instances are skipped (see
/// [`Instance::validate`]), and a body that is not a health answer is an
/// [`Error::Registry`] naming the call. Public for fuzzing and for tools that read saved answers.
pub fn decode_health(body: &[u8]) -> Result<Vec<Instance>> {
    let entries = super::wire::parse_health(body).map_err(|kind| {
        Error::from(api::ApiError {
            call: "GET /v1/health/service".into(),
            kind,
        })
    })?;
    Ok(to_instances(entries))
}
