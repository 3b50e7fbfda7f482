//! A serde mirror of `chi-config.yaml`, field for field.
//!
//! Everything here is as written in the file: durations are still strings, numbers are whatever
//! YAML gave. `deny_unknown_fields` everywhere, so a typo is an error that names the field instead
//! of a setting silently ignored. [`super::Config`] validates this into typed values.

#![allow(missing_docs)]

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub service_discovery: Option<ServiceDiscovery>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDiscovery {
    pub registration: Option<Registration>,
    pub registries: Option<Registries>,
    pub discovery: Option<Discovery>,
    pub load_balancer: Option<LoadBalancer>,
    pub routing: Option<Routing>,
    pub metrics: Option<Metrics>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub id: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub weight: Option<u32>,
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub grpc: Option<String>,
    pub ttl: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub deregister_critical_service_after: Option<String>,
    pub checked_by: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    pub memory: Option<Memory>,
    pub consul: Option<Consul>,
    pub etcd: Option<Etcd>,
    pub nacos: Option<Nacos>,
    pub zookeeper: Option<crate::registry::zookeeper::RawZookeeper>,
    pub chi: Option<Chi>,
    pub dns: Option<Dns>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    #[serde(default)]
    pub enabled: bool,
    pub ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consul {
    #[serde(default)]
    pub enabled: bool,
    pub address: Option<String>,
    pub token: Option<Secret>,
    pub datacenter: Option<String>,
    pub consistency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub prefix: Option<String>,
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nacos {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub server_configs: Vec<NacosServer>,
    pub client_config: Option<NacosClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chi {
    #[serde(default)]
    pub enabled: bool,
    pub address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NacosServer {
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub context_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NacosClient {
    pub namespace_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub group_name: Option<String>,
    pub cluster_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub enabled: bool,
    pub server: Option<String>,
    pub resolv_conf: Option<String>,
    pub srv: Option<String>,
    pub a: Option<String>,
    pub port: Option<u16>,
    pub min_refresh: Option<String>,
    pub max_refresh: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    pub cache: Option<Cache>,
    pub retry: Option<Retry>,
    pub restart_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub ttl: Option<String>,
    pub refresh_interval: Option<String>,
    pub max_size: Option<usize>,
    pub enable_metrics: Option<bool>,
    pub last_known_good_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub max_attempts: Option<u32>,
    pub initial_interval: Option<String>,
    pub max_interval: Option<String>,
    pub multiplier: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub strategy: Option<String>,
    pub health_check_enabled: Option<bool>,
    pub consistent_hash: Option<ConsistentHash>,
    pub zone_aware: Option<ZoneAware>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub subset_size: Option<usize>,
    pub slow_start: Option<SlowStart>,
    pub hash_key_header: Option<String>,
    pub orca: Option<Orca>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Orca {
    pub blackout_period: Option<String>,
    pub weight_expiration_period: Option<String>,
    pub weight_update_period: Option<String>,
    pub error_utilization_penalty: Option<f64>,
    pub out_of_band: Option<bool>,
    pub oob_reporting_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStart {
    pub window: Option<String>,
    pub aggression: Option<f64>,
    pub min_weight_percent: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub max_requests: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneAware {
    pub enabled: Option<bool>,
    pub min_instances: Option<usize>,
    pub load_aware: Option<bool>,
    pub load_band: Option<f64>,
    #[serde(default)]
    pub clients: IndexMap<String, f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistentHash {
    pub partition_count: Option<usize>,
    pub replication_factor: Option<usize>,
    pub load: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    pub enable_version_routing: Option<bool>,
    pub enable_geo_routing: Option<bool>,
    pub default_version: Option<String>,
    #[serde(default)]
    pub regions: IndexMap<String, Vec<String>>,
    /// Address block (`10.1.0.0/16`, `2001:db8::/32`) -> region.
    #[serde(default)]
    pub client_regions: IndexMap<String, String>,
    /// Address blocks of the proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub per_instance_labels: Option<bool>,
}
