//! Mapping between chi's [`Instance`] and nacos-sdk's `ServiceInstance`.
//!
//! Nacos instances have ip, port, weight (a float), healthy, enabled, ephemeral, cluster and a
//! string map of metadata, but no id of the caller's choosing (the server derives
//! `ip#port#cluster#group@@service`), no tags and no version. chi keeps those three in reserved
//! metadata keys, so they survive a round trip and stay readable in the Nacos console:
//!
//! | key           | value                                                         |
//! |---------------|---------------------------------------------------------------|
//! | `chi.id`      | the instance id                                               |
//! | `chi.version` | the version (absent when empty)                               |
//! | `chi.tags`    | the tags as a JSON array, `["v1","api"]` (absent when none)   |
//!
//! JSON rather than a comma-joined list because a tag may contain a comma. Instances registered
//! by other Nacos clients have none of these keys: their id is chi's default `name-ip-port`,
//! their version is the common `version` metadata key if present, and a `chi.tags` that is not
//! JSON is read as a comma-separated list. User metadata keys starting with `chi.` are rejected
//! at registration.
//!
//! Health: Nacos has no "unknown", so chi's `Unknown` registers as healthy (the server's own
//! view of an ephemeral instance is "its client is connected"), and a discovered instance is
//! `Healthy` or `Unhealthy` by its flag. Instances an operator disabled (`enabled = false`) are
//! left out of discovery, as every Nacos client does.

use std::collections::{BTreeMap, HashMap};

use nacos_sdk::api::naming::ServiceInstance;

use crate::error::{Error, Result};
use crate::instance::{HealthStatus, Instance, default_id, validate_name};

/// Metadata key of the instance id.
pub const META_ID: &str = "chi.id";
/// Metadata key of the version.
pub const META_VERSION: &str = "chi.version";
/// Metadata key of the tags (a JSON array of strings).
pub const META_TAGS: &str = "chi.tags";
/// Prefix reserved for chi's own metadata keys.
pub const META_PREFIX: &str = "chi.";

/// The Nacos instance chi registers for `instance`.
pub(crate) fn to_nacos(instance: &Instance, cluster: &str) -> Result<ServiceInstance> {
    if let Some(key) = instance.meta.keys().find(|k| k.starts_with(META_PREFIX)) {
        return Err(Error::invalid(
            "metadata key",
            key.clone(),
            format!("the prefix `{META_PREFIX}` is reserved for chi's own keys"),
        ));
    }
    let mut metadata: HashMap<String, String> = instance
        .meta
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(META_ID.into(), instance.id.clone());
    if !instance.version.is_empty() {
        metadata.insert(META_VERSION.into(), instance.version.clone());
    }
    if !instance.tags.is_empty() {
        let tags = serde_json::to_string(&instance.tags).map_err(|e| {
            Error::invalid(
                "tags",
                instance.tags.join(","),
                format!("not encodable: {e}"),
            )
        })?;
        metadata.insert(META_TAGS.into(), tags);
    }
    Ok(ServiceInstance {
        instance_id: None,
        ip: instance.address.clone(),
        port: i32::from(instance.port),
        weight: f64::from(instance.weight),
        healthy: instance.health != HealthStatus::Unhealthy,
        enabled: true,
        ephemeral: true,
        cluster_name: Some(cluster.to_owned()),
        service_name: None,
        metadata,
    })
}

/// The chi instance of a discovered Nacos instance of `service`; `None` for a disabled instance,
/// one whose port is not a TCP port, or one that is not a valid [`Instance`] (a `chi.id` written
/// by someone else with `/` or `..` in it, an empty ip): foreign data is skipped with a
/// warning, never served.
pub(crate) fn from_nacos(service: &str, si: &ServiceInstance) -> Option<Instance> {
    let i = map_instance(service, si)?;
    match i.validate() {
        Ok(()) => Some(i),
        Err(e) => {
            tracing::warn!(service = %service.escape_debug(), id = %i.id.escape_debug(), error = %e, "nacos instance is not a usable instance; skipped");
            None
        }
    }
}

fn map_instance(service: &str, si: &ServiceInstance) -> Option<Instance> {
    if !si.enabled {
        return None;
    }
    let port = u16::try_from(si.port).ok().filter(|p| *p != 0)?;
    let meta: BTreeMap<String, String> = si
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with(META_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let id = si
        .metadata
        .get(META_ID)
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| default_id(service, &si.ip, port));
    let version = si
        .metadata
        .get(META_VERSION)
        .or_else(|| meta.get("version"))
        .cloned()
        .unwrap_or_default();
    let tags = si
        .metadata
        .get(META_TAGS)
        .map(|t| parse_tags(t))
        .unwrap_or_default();
    Some(Instance {
        id,
        name: service.to_owned(),
        version,
        address: si.ip.clone(),
        port,
        tags,
        meta,
        weight: weight(si.weight),
        health: if si.healthy {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        },
    })
}

/// A JSON array of strings, or else a comma-separated list.
fn parse_tags(raw: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(raw).unwrap_or_else(|_| {
        raw.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Nacos weights are floats (default 1.0); chi's are integers. Round to the nearest, but keep
/// a positive weight positive (0.3 is 1, not 0: zero takes an instance out of rotation).
fn weight(w: f64) -> u32 {
    if !w.is_finite() || w <= 0.0 {
        0
    } else if w >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and positive: the cast cannot truncate.
        (w.round() as u32).max(1)
    }
}

/// Decodes a JSON array of Nacos instances (nacos-sdk's `ServiceInstance`, as the Nacos open
/// API and the SDK's serde form write them) of `service` into chi instances, exactly as
/// discovery maps what the SDK hands it: disabled instances, ports that are not TCP ports and
/// instances that fail [`Instance::validate`] are left out. A body that is not such an array is
/// an [`Error::Registry`]. Public for fuzzing and for tools that read saved answers.
pub fn decode_instances(service: &str, json: &[u8]) -> Result<Vec<Instance>> {
    validate_name("service name", service)?;
    let raw: Vec<ServiceInstance> = serde_json::from_slice(json).map_err(|e| {
        Error::registry(
            super::BACKEND,
            format!("not a list of Nacos instances: {e}"),
        )
    })?;
    Ok(map_all(service, &raw))
}

pub(super) fn map_all(service: &str, raw: &[ServiceInstance]) -> Vec<Instance> {
    let mut list: Vec<Instance> = raw
        .iter()
        .filter_map(|si| from_nacos(service, si))
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_id_version_tags_meta_weight_health() {
        let i = Instance::new("svc", "10.0.0.1", 8080)
            .with_id("custom-1")
            .with_version("v1.2.0")
            .with_tag("v1")
            .with_tag("a,b")
            .with_meta("region", "us-east-1")
            .with_weight(7)
            .with_health(HealthStatus::Unhealthy);
        let si = to_nacos(&i, "DEFAULT").expect("convert");
        assert_eq!(si.metadata[META_TAGS], r#"["v1","a,b"]"#);
        assert!(!si.healthy && si.enabled && si.ephemeral);
        assert_eq!(from_nacos("svc", &si), Some(i.clone()));
        // Unknown health registers as healthy and comes back Healthy.
        let unknown = i.with_health(HealthStatus::Unknown);
        let back = from_nacos("svc", &to_nacos(&unknown, "DEFAULT").expect("convert"));
        assert_eq!(back.map(|b| b.health), Some(HealthStatus::Healthy));
    }

    #[test]
    fn foreign_instances_get_default_id_and_plain_tags() {
        let si = ServiceInstance {
            ip: "10.0.0.2".into(),
            port: 9000,
            weight: 0.4,
            metadata: [
                ("version".to_string(), "2.0".to_string()),
                (META_TAGS.to_string(), "x, y".to_string()),
            ]
            .into_iter()
            .collect(),
            ..ServiceInstance::default()
        };
        let i = from_nacos("svc", &si).expect("enabled");
        assert_eq!(i.id, "svc-10.0.0.2-9000");
        assert_eq!(i.version, "2.0");
        assert_eq!(i.tags, vec!["x", "y"]);
        assert_eq!(i.meta("version"), Some("2.0"));
        assert_eq!(i.weight, 1);
        assert!(
            from_nacos(
                "svc",
                &ServiceInstance {
                    enabled: false,
                    ..si.clone()
                }
            )
            .is_none()
        );
        assert!(from_nacos("svc", &ServiceInstance { port: 70000, ..si }).is_none());
    }

    #[test]
    fn foreign_ids_and_addresses_that_fail_validation_are_skipped() {
        let si = |id: &str, ip: &str| ServiceInstance {
            instance_id: None,
            ip: ip.into(),
            port: 80,
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster_name: None,
            service_name: None,
            metadata: [(META_ID.to_owned(), id.to_owned())].into_iter().collect(),
        };
        assert!(from_nacos("svc", &si("ok-1", "10.0.0.1")).is_some());
        assert!(from_nacos("svc", &si("../../etc", "10.0.0.1")).is_none());
        assert!(from_nacos("svc", &si("a/b", "10.0.0.1")).is_none());
        assert!(from_nacos("svc", &si("ok-1", "")).is_none());
    }

    #[test]
    fn weights_round_but_stay_positive() {
        assert_eq!(weight(0.0), 0);
        assert_eq!(weight(-1.0), 0);
        assert_eq!(weight(f64::NAN), 0);
        assert_eq!(weight(0.2), 1);
        assert_eq!(weight(2.5), 3);
        assert_eq!(weight(1e12), u32::MAX);
    }

    #[test]
    fn reserved_meta_keys_are_rejected() {
        let i = Instance::new("svc", "h", 1).with_meta("chi.id", "x");
        let err = to_nacos(&i, "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
    }
}
