//! Curator's service discovery layout: the node `ROOT/NAME/ID` holds the JSON of Curator's
//! `ServiceInstance` (Apache Curator, `curator-x-discovery`, `JsonInstanceSerializer`), with the
//! payload Spring Cloud Zookeeper writes, so Curator's `ServiceDiscovery` and Spring Cloud
//! Zookeeper list chi's instances and chi lists theirs:
//!
//! ```json
//! {"name":"orders","id":"orders-10.0.0.7-8080","address":"10.0.0.7","port":8080,"sslPort":null,
//!  "payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
//!             "id":"orders-10.0.0.7-8080","name":"orders",
//!             "metadata":{"region":"eu","chi.version":"v2","instance_status":"UP"}},
//!  "registrationTimeUTC":1764900000000,"serviceType":"DYNAMIC",
//!  "uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},
//!                      {"value":"address","variable":true},{"value":":","variable":false},
//!                      {"value":"port","variable":true}]}}
//! ```
//!
//! chi's fields that Curator has no place for live in the payload's metadata:
//!
//! | chi | metadata key | written | read |
//! | --- | --- | --- | --- |
//! | version | `chi.version` | when not empty | `chi.version`, else the `version` key |
//! | tags | `chi.tags` | a JSON array, when any | a JSON array, or a comma-separated list |
//! | weight | `chi.weight` | when not 1 | `chi.weight`, else 1 |
//! | health | `instance_status` | `UP` healthy, `OUT_OF_SERVICE` unhealthy, absent unknown | `UP` healthy, absent unknown, anything else unhealthy |
//! | meta | every other key | as is | as is (non-string JSON values as their JSON text) |
//!
//! `instance_status` is Spring Cloud Zookeeper's own key: its load balancer skips instances whose
//! status is set and not `UP`, so an unhealthy chi instance is skipped there too. User metadata
//! keys starting with `chi.` and the key `instance_status` are refused at registration (they
//! would not come back as written). An instance Curator marks `"enabled": false` is left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{bad, parse_tags, tags_json};
use crate::error::{Error, Result};
use crate::instance::{DEFAULT_WEIGHT, HealthStatus, Instance};

/// Metadata key of the version.
pub const META_VERSION: &str = "chi.version";
/// Metadata key of the tags (a JSON array of strings).
pub const META_TAGS: &str = "chi.tags";
/// Metadata key of the weight.
pub const META_WEIGHT: &str = "chi.weight";
/// Prefix reserved for chi's own metadata keys.
pub const META_PREFIX: &str = "chi.";
/// Spring Cloud Zookeeper's status key (`UP`, `OUT_OF_SERVICE`).
pub const META_STATUS: &str = "instance_status";
/// The payload class Spring Cloud Zookeeper writes and reads.
pub const PAYLOAD_CLASS: &str = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance";

const STATUS_UP: &str = "UP";
const STATUS_OUT: &str = "OUT_OF_SERVICE";

/// Curator's `ServiceInstance`, as its Jackson serializer writes it (field order kept).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceInstance {
    name: String,
    id: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    ssl_port: Option<i64>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(rename = "registrationTimeUTC", default)]
    registration_time_utc: i64,
    #[serde(default)]
    service_type: Option<String>,
    #[serde(default)]
    uri_spec: Option<Value>,
    /// Curator 4+ writes it; older ones do not (absent: enabled).
    #[serde(default, skip_serializing)]
    enabled: Option<bool>,
}

/// Spring Cloud Zookeeper's payload.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    #[serde(rename = "@class")]
    class: &'static str,
    id: &'a str,
    name: &'a str,
    metadata: BTreeMap<&'a str, String>,
}

/// Spring Cloud Zookeeper's default `uriSpec`, `{scheme}://{address}:{port}`, as Curator's
/// `UriSpec` serializes it.
fn uri_spec() -> Value {
    let part =
        |value: &str, variable: bool| serde_json::json!({"value": value, "variable": variable});
    serde_json::json!({"parts": [
        part("scheme", true), part("://", false), part("address", true),
        part(":", false), part("port", true),
    ]})
}

/// The JSON chi writes for `instance`, registered at `now_ms` (milliseconds since the epoch).
pub fn encode(instance: &Instance, now_ms: i64) -> Result<Vec<u8>> {
    if let Some(key) = instance
        .meta
        .keys()
        .find(|k| k.starts_with(META_PREFIX) || k.as_str() == META_STATUS)
    {
        return Err(Error::invalid(
            "metadata key",
            key.clone(),
            format!(
                "the prefix `{META_PREFIX}` and the key `{META_STATUS}` are reserved for chi's \
                 own fields in ZooKeeper's Curator layout"
            ),
        ));
    }
    let mut metadata: BTreeMap<&str, String> = instance
        .meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if !instance.version.is_empty() {
        metadata.insert(META_VERSION, instance.version.clone());
    }
    if !instance.tags.is_empty() {
        metadata.insert(META_TAGS, tags_json(instance)?);
    }
    if instance.weight != DEFAULT_WEIGHT {
        metadata.insert(META_WEIGHT, instance.weight.to_string());
    }
    match instance.health {
        HealthStatus::Healthy => {
            metadata.insert(META_STATUS, STATUS_UP.into());
        }
        HealthStatus::Unhealthy => {
            metadata.insert(META_STATUS, STATUS_OUT.into());
        }
        HealthStatus::Unknown => {}
    }
    let payload = Payload {
        class: PAYLOAD_CLASS,
        id: &instance.id,
        name: &instance.name,
        metadata,
    };
    let si = ServiceInstance {
        name: instance.name.clone(),
        id: instance.id.clone(),
        address: Some(instance.address.clone()),
        port: Some(i64::from(instance.port)),
        ssl_port: None,
        payload: Some(
            serde_json::to_value(&payload)
                .map_err(|e| Error::registry(super::super::BACKEND, e))?,
        ),
        registration_time_utc: now_ms,
        service_type: Some("DYNAMIC".into()),
        uri_spec: Some(uri_spec()),
        enabled: None,
    };
    serde_json::to_vec(&si).map_err(|e| Error::registry(super::super::BACKEND, e))
}

/// The instance of the node `ROOT/{service}/{child}` holding `data`.
pub fn decode(service: &str, child: &str, data: &[u8]) -> Result<Instance> {
    let si: ServiceInstance = serde_json::from_slice(data).map_err(|e| {
        bad(
            service,
            child,
            format!("not a Curator ServiceInstance: {e}"),
        )
    })?;
    if si.name != service || si.id != child {
        return Err(bad(
            service,
            child,
            format!(
                "holds instance `{}/{}`, which does not match its node",
                si.name.escape_debug(),
                si.id.escape_debug()
            ),
        ));
    }
    if si.enabled == Some(false) {
        return Err(bad(service, child, "disabled (\"enabled\": false)"));
    }
    let port = si
        .port
        .or(si.ssl_port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(service, child, "has no port between 1 and 65535"))?;
    let mut meta: BTreeMap<String, String> = match si
        .payload
        .as_ref()
        .and_then(|p| p.get("metadata"))
        .and_then(Value::as_object)
    {
        Some(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let version = meta
        .get(META_VERSION)
        .or_else(|| meta.get("version"))
        .cloned()
        .unwrap_or_default();
    let tags = meta
        .get(META_TAGS)
        .map(|t| parse_tags(t))
        .unwrap_or_default();
    let weight = meta
        .get(META_WEIGHT)
        .and_then(|w| w.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_WEIGHT);
    let health = match meta.remove(META_STATUS).as_deref() {
        None => HealthStatus::Unknown,
        Some(s) if s.eq_ignore_ascii_case(STATUS_UP) => HealthStatus::Healthy,
        Some(_) => HealthStatus::Unhealthy,
    };
    meta.retain(|k, _| !k.starts_with(META_PREFIX));
    Ok(Instance {
        id: si.id,
        name: si.name,
        version,
        address: si.address.unwrap_or_default(),
        port,
        tags,
        meta,
        weight,
        health,
    })
}
