//! Dubbo's ZooKeeper registry layout: a provider is an ephemeral node under
//! `ROOT/INTERFACE/providers/` whose *name* is its URL, encoded as Java's `URLEncoder` does
//! (`application/x-www-form-urlencoded`: space as `+`, everything but `A-Za-z0-9.-*_` as `%XX`):
//!
//! ```text
//! /dubbo/org.example.DemoService/providers/
//!   dubbo%3A%2F%2F10.0.0.7%3A20880%2Forg.example.DemoService%3Fapplication%3Ddemo%26version%3D1.0.0%26weight%3D100
//! ```
//!
//! The node's data is not read (Dubbo writes none, or the provider's IP). The service name is the
//! interface. Mapping of the URL's parts and parameters:
//!
//! | chi | URL | written | read |
//! | --- | --- | --- | --- |
//! | address, port | host and port | | IPv6 in brackets |
//! | version | `version` | when not empty | as is |
//! | weight | `weight` | always | absent: 100, Dubbo's default |
//! | id | `chi.id` | always | absent: `NAME-HOST-PORT`, then `:VERSION` and `@GROUP` when set |
//! | tags | `chi.tags` | a JSON array, when any | a JSON array, or a comma-separated list |
//! | meta `protocol` | the scheme | when set (else `dubbo`) | when not `dubbo` |
//! | meta | every other parameter | percent-encoded | percent-decoded |
//! | health | none: an unhealthy provider is withdrawn (its node deleted) until it is healthy again | | unknown |
//!
//! chi writes `interface`, `side=provider` and `timestamp` too, as Dubbo does; reading drops
//! those and Dubbo's other bookkeeping parameters (`category`, `pid`, `anyhost`), so a chi
//! instance comes back as written. A provider with `enabled=false`, or whose category is not
//! `providers`, is left out, as Dubbo consumers do. User metadata keys that would collide are
//! refused at registration.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::{bad, parse_tags, tags_json};
use crate::error::{Error, Result};
use crate::instance::{HealthStatus, Instance, default_id};

/// Parameter of chi's instance id.
pub const PARAM_ID: &str = "chi.id";
/// Parameter of the tags (a JSON array of strings).
pub const PARAM_TAGS: &str = "chi.tags";
/// Dubbo's weight when a provider gives none.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The metadata key that becomes the URL's scheme.
pub const META_PROTOCOL: &str = "protocol";

/// Parameters Dubbo keeps for itself: dropped when reading, refused as user metadata.
const BOOKKEEPING: [&str; 9] = [
    "interface",
    "side",
    "category",
    "timestamp",
    "pid",
    "anyhost",
    "enabled",
    "version",
    "weight",
];

/// What a parameter key or value may hold unencoded: Dubbo's own values (`methods=a,b`,
/// `release=3.2.0`) stay readable.
const PARAM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b',')
    .remove(b':')
    .remove(b'*');

/// The node name (the encoded provider URL) chi writes for `instance` at `now_ms`.
pub fn encode(instance: &Instance, now_ms: i64) -> Result<String> {
    if let Some(key) = instance
        .meta
        .keys()
        .find(|k| k.starts_with("chi.") || BOOKKEEPING.contains(&k.as_str()))
    {
        return Err(Error::invalid(
            "metadata key",
            key.clone(),
            format!(
                "reserved in ZooKeeper's Dubbo layout (the prefix `chi.` and Dubbo's {})",
                BOOKKEEPING.join(", ")
            ),
        ));
    }
    let scheme = instance.meta(META_PROTOCOL).unwrap_or("dubbo");
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(Error::invalid(
            "metadata value",
            scheme,
            "the `protocol` key is the provider URL's scheme: letters, digits, `+`, `-`, `.`",
        ));
    }
    let mut params: BTreeMap<&str, String> = instance
        .meta
        .iter()
        .filter(|(k, _)| k.as_str() != META_PROTOCOL)
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    params.insert("interface", instance.name.clone());
    params.insert("side", "provider".into());
    params.insert("timestamp", now_ms.to_string());
    params.insert("weight", instance.weight.to_string());
    params.insert(PARAM_ID, instance.id.clone());
    if !instance.version.is_empty() {
        params.insert("version", instance.version.clone());
    }
    if !instance.tags.is_empty() {
        params.insert(PARAM_TAGS, tags_json(instance)?);
    }
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, PARAM),
                utf8_percent_encode(v, PARAM)
            )
        })
        .collect();
    let url = format!(
        "{scheme}://{}/{}?{}",
        instance.authority(),
        utf8_percent_encode(&instance.name, PARAM),
        query.join("&")
    );
    Ok(url::form_urlencoded::byte_serialize(url.as_bytes()).collect())
}

/// The instance of the provider node `child` under `ROOT/{service}/providers`.
pub fn decode(service: &str, child: &str) -> Result<Instance> {
    let url = decode_part(&child.replace('+', " "))
        .ok_or_else(|| bad(service, child, "not a URL-encoded UTF-8 provider URL"))?;
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(service, child, "not a provider URL (no scheme)"))?;
    let (authority, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = host_port(authority)
        .ok_or_else(|| bad(service, child, format!("no host:port in {authority:?}")))?;
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (decode_part(k), decode_part(v)) else {
            return Err(bad(service, child, "a parameter is not UTF-8"));
        };
        params.insert(k, v);
    }
    if params.get("enabled").is_some_and(|e| e == "false") {
        return Err(bad(service, child, "disabled (enabled=false)"));
    }
    if params.get("category").is_some_and(|c| c != "providers") {
        return Err(bad(service, child, "not a provider (category)"));
    }
    let interface = params
        .get("interface")
        .cloned()
        .or_else(|| decode_part(path))
        .unwrap_or_default();
    if interface != service {
        return Err(bad(
            service,
            child,
            format!(
                "provides `{}`, not this interface",
                interface.escape_debug()
            ),
        ));
    }
    let version = params.get("version").cloned().unwrap_or_default();
    let weight = params
        .get("weight")
        .and_then(|w| w.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_WEIGHT);
    let tags = params
        .get(PARAM_TAGS)
        .map(|t| parse_tags(t))
        .unwrap_or_default();
    let id = match params.get(PARAM_ID).filter(|id| !id.is_empty()) {
        Some(id) => id.clone(),
        None => {
            let mut id = default_id(service, &host, port);
            if !version.is_empty() {
                id = format!("{id}:{version}");
            }
            if let Some(group) = params.get("group").filter(|g| !g.is_empty()) {
                id = format!("{id}@{group}");
            }
            id
        }
    };
    let mut meta: BTreeMap<String, String> = params
        .into_iter()
        .filter(|(k, _)| !k.starts_with("chi.") && !BOOKKEEPING.contains(&k.as_str()))
        .collect();
    if scheme != "dubbo" {
        meta.insert(META_PROTOCOL.into(), scheme.to_owned());
    }
    Ok(Instance {
        id,
        name: service.to_owned(),
        version,
        address: host,
        port,
        tags,
        meta,
        weight,
        health: HealthStatus::Unknown,
    })
}

fn decode_part(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `host:port` or `[v6]:port` -> (host without brackets, port).
fn host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':')?)
        }
        None => authority.rsplit_once(':')?,
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}
