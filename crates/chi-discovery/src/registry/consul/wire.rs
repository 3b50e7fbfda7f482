//! The JSON bodies of the Consul calls chi makes, as Consul spells them.
//!
//! Only the fields chi reads or writes; unknown fields of an answer are ignored, and Consul's
//! `null` for an empty list or map reads as empty. Apart from the client (`api`) so that the
//! mapping (`convert`) and the fuzzable decoder need no HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::ApiErrorKind;

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "Name")]
    pub(crate) name: String,
    #[serde(rename = "Tags")]
    pub(crate) tags: Vec<String>,
    #[serde(rename = "Address")]
    pub(crate) address: String,
    #[serde(rename = "Port")]
    pub(crate) port: u16,
    #[serde(rename = "Meta")]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(rename = "Weights")]
    pub(crate) weights: Weights,
    #[serde(rename = "Checks")]
    pub(crate) checks: Vec<CheckDefinition>,
}

/// Consul's DNS / load-balancing weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Weights {
    #[serde(rename = "Passing")]
    pub(crate) passing: u32,
    #[serde(rename = "Warning")]
    pub(crate) warning: u32,
}

/// One check of a registration. Durations are Go duration strings (`"1500ms"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CheckDefinition {
    #[serde(rename = "CheckID")]
    pub(crate) check_id: String,
    #[serde(rename = "Name")]
    pub(crate) name: String,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub(crate) ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub(crate) http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub(crate) tcp: Option<String>,
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub(crate) grpc: Option<String>,
    #[serde(rename = "Interval", skip_serializing_if = "Option::is_none")]
    pub(crate) interval: Option<String>,
    #[serde(rename = "Timeout", skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<String>,
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) deregister_critical_service_after: Option<String>,
    /// Passing results in a row before the check turns passing (Consul 1.7+).
    #[serde(
        rename = "SuccessBeforePassing",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) success_before_passing: Option<u32>,
    /// Failing results in a row before the check turns critical (Consul 1.7+).
    #[serde(
        rename = "FailuresBeforeCritical",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) failures_before_critical: Option<u32>,
}

/// One element of a `/v1/health/service/:name` answer.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServiceEntry {
    #[serde(rename = "Node", default)]
    pub(crate) node: NodeInfo,
    #[serde(rename = "Service")]
    pub(crate) service: AgentService,
    #[serde(rename = "Checks", default, deserialize_with = "null_default")]
    pub(crate) checks: Vec<CheckInfo>,
}

/// The node part of a health entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct NodeInfo {
    #[serde(rename = "Address", default)]
    pub(crate) address: String,
}

/// The service part of a health entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AgentService {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "Service")]
    pub(crate) service: String,
    #[serde(rename = "Tags", default, deserialize_with = "null_default")]
    pub(crate) tags: Vec<String>,
    #[serde(rename = "Address", default)]
    pub(crate) address: String,
    #[serde(rename = "Meta", default, deserialize_with = "null_default")]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(rename = "Port", default)]
    pub(crate) port: u16,
    #[serde(rename = "Weights", default)]
    pub(crate) weights: Option<Weights>,
}

/// One check of a health entry (node checks included).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CheckInfo {
    #[serde(rename = "Status", default)]
    pub(crate) status: String,
}

/// Parses the body of a `/v1/health/service/:name` answer (a JSON array of entries).
pub(crate) fn parse_health(body: &[u8]) -> Result<Vec<ServiceEntry>, ApiErrorKind> {
    serde_json::from_slice(body)
        .map_err(|e| ApiErrorKind::Body(format!("not a health answer: {e}")))
}

/// Consul sends `null` for empty lists and maps; treat it as empty.
fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A Go duration string Consul parses (`"1500ms"`); at least one millisecond.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn parses_health_entries_with_nulls() {
        let json = r#"[{"Node":{"Node":"n","Address":"10.0.0.9"},
            "Service":{"ID":"a","Service":"s","Tags":null,"Address":"","Meta":null,"Port":80,
                       "Weights":{"Passing":3,"Warning":1}},
            "Checks":[{"CheckID":"serfHealth","Status":"passing"}]}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("parse");
        assert_eq!(entries[0].node.address, "10.0.0.9");
        assert!(entries[0].service.tags.is_empty());
        assert_eq!(
            entries[0].service.weights,
            Some(Weights {
                passing: 3,
                warning: 1
            })
        );
    }
}
