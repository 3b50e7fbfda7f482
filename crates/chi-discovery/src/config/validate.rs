//! The checks of the general sections (`registration`, `discovery.cache`, `discovery.retry`,
//! `load_balancer`, `routing`): raw values in, typed values out, errors at the YAML path.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    Field, LoadBalancerConfig, RoutingConfig, duration, name_field, opt_duration,
    positive_duration, raw,
};
use crate::balance::{ConsistentHashConfig, OrcaConfig, Strategy};
use crate::discovery::{CacheConfig, LastKnownGood};
use crate::error::Result;
use crate::instance::{CheckTarget, CheckedBy, HealthCheck, ServiceConfig};
use crate::registry::Registries;
use crate::retry::RetryPolicy;
use crate::routing::{ClientRegions, SlowStartConfig, TrustedProxies, ZoneAwareConfig};

use ipnet::IpNet;

pub(super) fn registration(r: raw::Registration, at: &Field) -> Result<ServiceConfig> {
    let name = r.name.ok_or_else(|| at.join("name").err("is required"))?;
    name_field("service name", &name, &at.join("name"))?;
    let address = r.address.filter(|a| !a.trim().is_empty()).ok_or_else(|| {
        at.join("address")
            .err("is required (the address other services use to reach this one)")
    })?;
    let port = r.port.ok_or_else(|| at.join("port").err("is required"))?;
    if port == 0 {
        return Err(at.join("port").err("must be between 1 and 65535, got 0"));
    }
    if let Some(id) = &r.id {
        name_field("instance id", id, &at.join("id"))?;
    }
    for (i, tag) in r.tags.iter().enumerate() {
        if tag.trim().is_empty() {
            return Err(at.join("tags").index(i).err("must not be empty"));
        }
    }
    let health_check = r
        .health_check
        .map(|h| health_check(h, &at.join("health_check")))
        .transpose()?;
    Ok(ServiceConfig {
        id: r.id,
        name,
        version: r.version.unwrap_or_default(),
        address,
        port,
        tags: r.tags,
        meta: r.meta,
        weight: r.weight.unwrap_or(crate::instance::DEFAULT_WEIGHT),
        health_check,
    })
}

pub(super) fn health_check(h: raw::HealthCheck, at: &Field) -> Result<HealthCheck> {
    let mut targets = Vec::new();
    if let Some(v) = h.http {
        if v.trim().is_empty() {
            return Err(at
                .join("http")
                .err("must be a path such as \"/health\" or a URL, got \"\""));
        }
        if !v.starts_with('/') && !v.starts_with("http://") && !v.starts_with("https://") {
            return Err(at.join("http").err(format!(
                "must be a path starting with \"/\" or an http(s) URL, got {v:?}"
            )));
        }
        targets.push(CheckTarget::Http(v));
    }
    if let Some(v) = h.tcp {
        targets.push(CheckTarget::Tcp(v));
    }
    if let Some(v) = h.grpc {
        targets.push(CheckTarget::Grpc(v));
    }
    let mut ttl = None;
    if let Some(v) = &h.ttl {
        ttl = Some(positive_duration(v, &at.join("ttl"))?);
        targets.push(CheckTarget::Ttl);
    }
    let target = match targets.len() {
        1 => targets.remove(0),
        0 => return Err(at.err("needs one of http, tcp, grpc or ttl")),
        _ => return Err(at.err("takes only one of http, tcp, grpc or ttl, got several")),
    };
    let interval = match ttl {
        Some(t) => t,
        None => opt_duration(
            h.interval.as_deref(),
            &at.join("interval"),
            Duration::from_secs(10),
        )?,
    };
    let timeout = opt_duration(
        h.timeout.as_deref(),
        &at.join("timeout"),
        Duration::from_secs(3),
    )?;
    if target != CheckTarget::Ttl && timeout >= interval {
        return Err(at.join("timeout").err(format!(
            "must be shorter than the interval ({}), got {}",
            humantime::format_duration(interval),
            humantime::format_duration(timeout)
        )));
    }
    let deregister_critical_service_after = h
        .deregister_critical_service_after
        .as_deref()
        .map(|v| positive_duration(v, &at.join("deregister_critical_service_after")))
        .transpose()?;
    let checked_by = match h.checked_by.as_deref().map(str::trim) {
        None | Some("auto") => CheckedBy::Auto,
        Some("registry") => CheckedBy::Registry,
        Some("chi") => CheckedBy::Chi,
        Some(other) => {
            return Err(at.join("checked_by").err(format!(
                "expected \"auto\", \"registry\" or \"chi\", got {other:?}"
            )));
        }
    };
    for (key, value) in [("rise", h.rise), ("fall", h.fall)] {
        if value == Some(0) {
            return Err(at.join(key).err("must be at least 1, got 0"));
        }
    }
    Ok(HealthCheck {
        target,
        interval,
        timeout,
        deregister_critical_service_after,
        checked_by,
        rise: h.rise,
        fall: h.fall,
    })
}

/// `discovery.cache`. The last-known-good files are tagged with the identity of `registries`, so
/// a file is never read by a client of another registry.
pub(super) fn cache(c: raw::Cache, at: &Field, registries: &Registries) -> Result<CacheConfig> {
    let d = CacheConfig::default();
    let ttl = opt_duration(c.ttl.as_deref(), &at.join("ttl"), d.ttl)?;
    let refresh_interval = opt_duration(
        c.refresh_interval.as_deref(),
        &at.join("refresh_interval"),
        d.refresh_interval,
    )?;
    if refresh_interval >= ttl {
        return Err(at.join("refresh_interval").err(format!(
            "must be shorter than cache.ttl ({}), got {}; otherwise every list goes stale between refreshes",
            humantime::format_duration(ttl),
            humantime::format_duration(refresh_interval)
        )));
    }
    let max_size = c.max_size.unwrap_or(d.max_size);
    if max_size == 0 {
        return Err(at.join("max_size").err("must be at least 1, got 0"));
    }
    let last_known_good = c
        .last_known_good_dir
        .map(|dir| last_known_good_dir(&dir, &at.join("last_known_good_dir")))
        .transpose()?
        .map(|dir| LastKnownGood::new(dir, registries.identity()));
    Ok(CacheConfig {
        ttl,
        refresh_interval,
        max_size,
        enable_metrics: c.enable_metrics.unwrap_or(d.enable_metrics),
        last_known_good,
    })
}

/// A directory path for the last-known-good files: not empty, and not something that is there
/// and is not a directory (a missing directory is fine: it is created with the first file).
fn last_known_good_dir(value: &str, at: &Field) -> Result<std::path::PathBuf> {
    if value.trim().is_empty() {
        return Err(at.err(format!(
            "must be a directory path such as \"/var/cache/chi/last-good\", got {value:?}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(at.err(format!(
            "must be a directory path without control characters, got {value:?}"
        )));
    }
    let dir = std::path::PathBuf::from(value);
    if let Ok(meta) = std::fs::metadata(&dir)
        && !meta.is_dir()
    {
        return Err(at.err(format!(
            "must be a directory (created if missing), got {value:?}, which is a file"
        )));
    }
    Ok(dir)
}

pub(super) fn retry(r: raw::Retry, at: &Field) -> Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let max_attempts = r.max_attempts.unwrap_or(d.max_attempts);
    if max_attempts == 0 {
        return Err(at
            .join("max_attempts")
            .err("must be at least 1 (1 = no retry), got 0"));
    }
    let initial_interval = opt_duration(
        r.initial_interval.as_deref(),
        &at.join("initial_interval"),
        d.initial_interval,
    )?;
    let max_interval = opt_duration(
        r.max_interval.as_deref(),
        &at.join("max_interval"),
        d.max_interval,
    )?;
    if max_interval < initial_interval {
        return Err(at.join("max_interval").err(format!(
            "must not be shorter than initial_interval ({}), got {}",
            humantime::format_duration(initial_interval),
            humantime::format_duration(max_interval)
        )));
    }
    let multiplier = r.multiplier.unwrap_or(d.multiplier);
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(at
            .join("multiplier")
            .err(format!("must be a number >= 1.0, got {multiplier}")));
    }
    Ok(RetryPolicy {
        max_attempts,
        initial_interval,
        max_interval,
        multiplier,
    })
}

pub(super) fn load_balancer(l: raw::LoadBalancer, at: &Field) -> Result<LoadBalancerConfig> {
    let strategy = match l.strategy {
        None => Strategy::default(),
        Some(name) => name.parse::<Strategy>().map_err(|expected| {
            at.join("strategy")
                .err(format!("unknown strategy {name:?}: {expected}"))
        })?,
    };
    let ch = l.consistent_hash.unwrap_or_default();
    let cp = at.join("consistent_hash");
    let d = ConsistentHashConfig::default();
    let consistent_hash = ConsistentHashConfig {
        partition_count: ch.partition_count.unwrap_or(d.partition_count),
        replication_factor: ch.replication_factor.unwrap_or(d.replication_factor),
        load: ch.load.unwrap_or(d.load),
    };
    // One set of rules, the balancer's: its messages start with the field's name.
    consistent_hash
        .validate()
        .map_err(|m| match m.split_once(": ") {
            Some((field, message)) => cp.join(field).err(message),
            None => cp.err(m),
        })?;
    let zone_aware = zone_aware(l.zone_aware.unwrap_or_default(), &at.join("zone_aware"))?;
    let slow_start = l
        .slow_start
        .map(|s| slow_start(s, &at.join("slow_start")))
        .transpose()?;
    let orca = orca(l.orca.unwrap_or_default(), &at.join("orca"))?;
    let max_requests = l.circuit_breaker.and_then(|c| c.max_requests);
    if max_requests == Some(0) {
        return Err(at
            .join("circuit_breaker")
            .join("max_requests")
            .err("must be at least 1 (requests in flight per instance), got 0"));
    }
    let hash_key_header = match l.hash_key_header {
        None => http::HeaderName::from_static(crate::routing::HASH_KEY_HEADER),
        Some(name) => header_name(&name, &at.join("hash_key_header"))?,
    };
    Ok(LoadBalancerConfig {
        strategy,
        health_check_enabled: l.health_check_enabled.unwrap_or(true),
        hash_key_header,
        consistent_hash,
        zone_aware,
        max_requests_per_instance: max_requests,
        slow_start,
        orca,
        subset_size: match l.subset_size {
            Some(0) => {
                return Err(at
                    .join("subset_size")
                    .err("must be at least 1 (instances per client), got 0"));
            }
            other => other,
        },
    })
}

/// An HTTP header name (RFC 9110 token), lowercased.
fn header_name(name: &str, at: &Field) -> Result<http::HeaderName> {
    http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        at.err(format!(
            "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, e.g. \"X-Hash-Key\"), got {name:?}"
        ))
    })
}

fn slow_start(s: raw::SlowStart, at: &Field) -> Result<SlowStartConfig> {
    let window = s
        .window
        .as_deref()
        .ok_or_else(|| {
            at.join("window")
                .err("is required (how long the ramp lasts, e.g. \"30s\")")
        })
        .and_then(|w| positive_duration(w, &at.join("window")))?;
    let d = SlowStartConfig::new(window);
    let aggression = s.aggression.unwrap_or(d.aggression);
    if !aggression.is_finite() || aggression <= 0.0 {
        return Err(at.join("aggression").err(format!(
            "must be greater than 0 (1 is linear), got {aggression}"
        )));
    }
    let min_weight_percent = s.min_weight_percent.unwrap_or(d.min_weight_percent);
    if !(0.0..=100.0).contains(&min_weight_percent) {
        return Err(at.join("min_weight_percent").err(format!(
            "must be between 0 and 100, got {min_weight_percent}"
        )));
    }
    Ok(SlowStartConfig {
        window,
        aggression,
        min_weight_percent,
    })
}

/// `load_balancer.orca`: the rules of `orca_weighted_round_robin` (gRFC A58's defaults).
fn orca(o: raw::Orca, at: &Field) -> Result<OrcaConfig> {
    let d = OrcaConfig::default();
    let blackout_period = match o.blackout_period.as_deref() {
        Some(v) => duration(v, &at.join("blackout_period"))?,
        None => d.blackout_period,
    };
    let config = OrcaConfig {
        blackout_period,
        weight_expiration_period: opt_duration(
            o.weight_expiration_period.as_deref(),
            &at.join("weight_expiration_period"),
            d.weight_expiration_period,
        )?,
        weight_update_period: opt_duration(
            o.weight_update_period.as_deref(),
            &at.join("weight_update_period"),
            d.weight_update_period,
        )?,
        error_utilization_penalty: o
            .error_utilization_penalty
            .unwrap_or(d.error_utilization_penalty),
        out_of_band: o.out_of_band.unwrap_or(d.out_of_band),
        oob_reporting_period: opt_duration(
            o.oob_reporting_period.as_deref(),
            &at.join("oob_reporting_period"),
            d.oob_reporting_period,
        )?,
    };
    // One set of rules, the balancer's: its messages start with the field's name.
    config.validate().map_err(|m| match m.split_once(": ") {
        Some((field, message)) => at.join(field).err(message),
        None => at.err(m),
    })?;
    Ok(config)
}

fn zone_aware(z: raw::ZoneAware, at: &Field) -> Result<ZoneAwareConfig> {
    let d = ZoneAwareConfig::enabled();
    let min_instances = z.min_instances.unwrap_or(d.min_instances);
    if min_instances == 0 {
        return Err(at.join("min_instances").err("must be at least 1, got 0"));
    }
    let mut clients = std::collections::BTreeMap::new();
    for (zone, share) in z.clients {
        if !share.is_finite() || share < 0.0 {
            return Err(at.join("clients").join(&zone).err(format!(
                "expected a number of clients (or a share) of at least 0, got {share}"
            )));
        }
        clients.insert(zone, share);
    }
    let load_band = z.load_band.unwrap_or(d.load_band);
    if !load_band.is_finite() || load_band < 0.0 {
        return Err(at.join("load_band").err(format!(
            "expected a fraction of at least 0 (0.25: 25 % above the region's load), got {load_band}"
        )));
    }
    Ok(ZoneAwareConfig {
        enabled: z.enabled.unwrap_or(false),
        min_instances,
        clients,
        load_aware: z.load_aware.unwrap_or(false),
        load_band,
    })
}

pub(super) fn routing(r: raw::Routing, at: &Field) -> Result<RoutingConfig> {
    let enable_version_routing = r.enable_version_routing.unwrap_or(false);
    let default_version = r.default_version.unwrap_or_default();
    if enable_version_routing && default_version.trim().is_empty() {
        return Err(at.join("default_version").err(
            "is required when enable_version_routing is true (the version of requests that name none)",
        ));
    }
    let mut zone_owner: HashMap<&str, &str> = HashMap::new();
    for (region, zones) in &r.regions {
        let rp = at.join("regions").join(region);
        if region.trim().is_empty() {
            return Err(at.join("regions").err("region names must not be empty"));
        }
        for (i, zone) in zones.iter().enumerate() {
            if zone.trim().is_empty() {
                return Err(rp.index(i).err("zone names must not be empty"));
            }
            if let Some(other) = zone_owner.insert(zone, region) {
                return Err(rp.index(i).err(format!(
                    "zone {zone:?} is already listed under region {other:?}; a zone belongs to one region"
                )));
            }
        }
    }
    let mut blocks: Vec<(IpNet, String)> = Vec::new();
    for (block, region) in r.client_regions {
        let bp = at.join("client_regions").key(&block);
        let net = address_block(&block, &bp)?;
        if blocks.iter().any(|(n, _)| *n == net) {
            return Err(bp.err(format!("block {net} is listed twice")));
        }
        let region = region.trim().to_owned();
        if region.is_empty() {
            return Err(bp.err("must name a region, got \"\""));
        }
        if !r.regions.is_empty() && !r.regions.contains_key(&region) {
            let known: Vec<&str> = r.regions.keys().map(String::as_str).collect();
            return Err(bp.err(format!(
                "must be a region of routing.regions ({}), got {region:?}",
                known.join(", ")
            )));
        }
        blocks.push((net, region));
    }
    let trusted_proxies = r
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, block)| address_block(block, &at.join("trusted_proxies").index(i)))
        .collect::<Result<Vec<_>>>()?;
    let enable_geo_routing = r.enable_geo_routing.unwrap_or(false);
    Ok(RoutingConfig {
        enable_version_routing,
        enable_geo_routing,
        default_version,
        regions: r.regions,
        client_regions: ClientRegions::new(blocks),
        trusted_proxies: TrustedProxies::new(trusted_proxies),
    })
}

/// An address block in CIDR notation (`10.1.0.0/16`, `2001:db8::/32`), or one address (a block
/// of one). Host bits set (`10.1.2.3/16`) are refused as the typo they usually are.
fn address_block(value: &str, at: &Field) -> Result<IpNet> {
    let v = value.trim();
    let net = match v.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match v.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(at.err(format!(
                    "expected an address block such as \"10.1.0.0/16\" or \"2001:db8::/32\", got {value:?}"
                )));
            }
        },
    };
    if net.trunc() != net {
        return Err(at.err(format!(
            "must start at the block's first address, got {value:?} (the block is {})",
            net.trunc()
        )));
    }
    Ok(net)
}
