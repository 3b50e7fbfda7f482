use super::*;
use crate::instance::CheckTarget;
use crate::registry::consul::ConsulConfig;

const SPEC: &str = include_str!("../../../../examples/chi-config.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(yaml: &str) -> Result<Config> {
    Config::from_yaml_with_env(yaml, no_env)
}

/// The example file with one line replaced.
fn spec_with(from: &str, to: &str) -> String {
    assert!(SPEC.contains(from), "the example file has no {from:?}");
    SPEC.replacen(from, to, 1)
}

fn err_of(yaml: &str) -> (String, String) {
    match load(yaml) {
        Err(Error::Config { field, message }) => (field, message),
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(c) => panic!("expected a config error, got {c:?}"),
    }
}

#[track_caller]
fn assert_err(yaml: &str, field: &str, message_parts: &[&str]) {
    let (f, m) = err_of(yaml);
    assert_eq!(f, field, "field of: {m}");
    for part in message_parts {
        assert!(m.contains(part), "message {m:?} lacks {part:?}");
    }
}

#[test]
fn spec_file_loads_as_written() {
    let c = load(SPEC).expect("the example config must load");
    let r = c.registration.as_ref().expect("registration");
    assert_eq!(r.name, "user-service");
    assert_eq!(r.version, "v1.0.0");
    assert_eq!((r.address.as_str(), r.port), ("0.0.0.0", 8080));
    assert_eq!(r.tags, vec!["api", "user", "v1"]);
    assert_eq!(r.meta.get("region").map(String::as_str), Some("us-east-1"));
    let h = r.health_check.as_ref().expect("health check");
    assert_eq!(h.target, CheckTarget::Http("/health".into()));
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(10), Duration::from_secs(3))
    );
    assert_eq!(
        h.deregister_critical_service_after,
        Some(Duration::from_secs(30))
    );
    assert_eq!(c.registries.enabled(), vec!["consul"]);
    let consul = c.registries.consul.as_ref().expect("consul");
    assert_eq!(consul.address, "127.0.0.1:8500");
    assert!(consul.token.is_empty());
    assert_eq!(c.cache.ttl, Duration::from_secs(30));
    assert_eq!(c.cache.refresh_interval, Duration::from_secs(10));
    assert_eq!(c.cache.max_size, 1000);
    assert!(c.cache.enable_metrics);
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.retry.max_interval, Duration::from_secs(10));
    assert_eq!(c.retry.multiplier, 2.0);
    assert_eq!(c.load_balancer.strategy, Strategy::WeightedRoundRobin);
    assert_eq!(
        c.load_balancer.consistent_hash,
        ConsistentHashConfig::default()
    );
    assert!(c.routing.enable_version_routing && c.routing.enable_geo_routing);
    assert_eq!(c.routing.default_version, "v1");
    let regions: Vec<&str> = c.routing.regions.keys().map(String::as_str).collect();
    assert_eq!(
        regions,
        vec!["us-east-1", "us-west-2"],
        "region order is kept"
    );
    assert_eq!(
        c.routing.regions["us-west-2"],
        vec!["us-west-2a", "us-west-2b"]
    );
}

#[test]
fn empty_file_is_all_defaults_on_the_embedded_registry() {
    let c = load("").expect("empty config");
    assert_eq!(c, Config::default());
    assert_eq!(c.registries.enabled(), vec!["memory"]);
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let yaml = spec_with(
        "enabled: false\n      endpoints",
        "enabled: true\n      endpoints",
    );
    let env = |k: &str| match k {
        "CHI_CONSUL_TOKEN" => Some("consul-secret".to_owned()),
        "CHI_ETCD_PASSWORD" => Some("etcd-secret".to_owned()),
        _ => None,
    };
    let c = Config::from_yaml_with_env(&yaml, env).expect("load");
    assert_eq!(
        c.registries.consul.as_ref().expect("consul").token.expose(),
        "consul-secret"
    );
    assert_eq!(
        c.registries
            .etcd
            .as_ref()
            .expect("etcd")
            .password
            .as_ref()
            .expect("pw")
            .expose(),
        "etcd-secret"
    );
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("consul-secret") && !shown.contains("etcd-secret"),
        "{shown}"
    );
}

#[test]
fn file_secrets_are_used_without_environment() {
    let yaml = spec_with("token: \"\"", "token: \"from-file\"");
    let c = load(&yaml).expect("load");
    assert_eq!(
        c.registries.consul.expect("consul").token.expose(),
        "from-file"
    );
}

// ---- bad configs: each names the field, the value and what was expected ----

#[path = "tests_last_good.rs"]
mod last_good;
/// `discovery.cache.last_known_good_dir`.
#[path = "tests_orca.rs"]
mod orca;

/// `load_balancer.hash_key_header` and `metrics.per_instance_labels`.
#[path = "tests_picks.rs"]
mod picks;

/// `routing.client_regions` and `routing.trusted_proxies`.
#[path = "tests_client_regions.rs"]
mod client_regions;

/// `registries.chi` and `chi://` URLs: a running `chi agent` as a registry.
#[path = "tests_chi.rs"]
mod chi;

#[test]
fn bad_duration() {
    assert_err(
        &spec_with("ttl: \"30s\"", "ttl: \"30x\""),
        "service_discovery.discovery.cache.ttl",
        &["invalid duration \"30x\"", "\"30s\""],
    );
}

#[test]
fn restart_grace_is_off_unless_set() {
    assert!(!load(SPEC).expect("loads").outage.is_on());
    let set = spec_with("    retry:\n", "    restart_grace: \"15s\"\n    retry:\n");
    let c = load(&set).expect("loads");
    assert_eq!(c.outage.restart_grace, Duration::from_secs(15));
    assert_eq!(
        c.outage.probe_period,
        crate::discovery::OutagePolicy::default().probe_period
    );
    assert_err(
        &spec_with("    retry:\n", "    restart_grace: \"soon\"\n    retry:\n"),
        "service_discovery.discovery.restart_grace",
        &["invalid duration \"soon\""],
    );
}

#[test]
fn zero_duration() {
    assert_err(
        &spec_with("initial_interval: \"1s\"", "initial_interval: \"0s\""),
        "service_discovery.discovery.retry.initial_interval",
        &["greater than zero", "\"0s\""],
    );
}

#[test]
fn refresh_not_shorter_than_ttl() {
    assert_err(
        &spec_with("refresh_interval: \"10s\"", "refresh_interval: \"40s\""),
        "service_discovery.discovery.cache.refresh_interval",
        &["shorter than cache.ttl (30s)", "got 40s"],
    );
}

#[test]
fn zero_cache_size() {
    assert_err(
        &spec_with("max_size: 1000", "max_size: 0"),
        "service_discovery.discovery.cache.max_size",
        &["at least 1", "got 0"],
    );
}

#[test]
fn wrong_type_for_a_number() {
    assert_err(
        &spec_with("max_size: 1000", "max_size: lots"),
        "service_discovery.discovery.cache.max_size",
        &["invalid type", "\"lots\""],
    );
}

#[test]
fn zero_attempts() {
    assert_err(
        &spec_with("max_attempts: 3", "max_attempts: 0"),
        "service_discovery.discovery.retry.max_attempts",
        &["at least 1", "got 0"],
    );
}

#[test]
fn shrinking_multiplier() {
    assert_err(
        &spec_with("multiplier: 2.0", "multiplier: 0.5"),
        "service_discovery.discovery.retry.multiplier",
        &[">= 1.0", "got 0.5"],
    );
}

#[test]
fn max_interval_below_initial() {
    assert_err(
        &spec_with("max_interval: \"10s\"", "max_interval: \"500ms\""),
        "service_discovery.discovery.retry.max_interval",
        &["initial_interval (1s)", "got 500ms"],
    );
}

#[test]
fn unknown_strategy() {
    assert_err(
        &spec_with(
            "strategy: \"weighted_round_robin\"",
            "strategy: \"fastest\"",
        ),
        "service_discovery.load_balancer.strategy",
        &[
            "unknown strategy \"fastest\"",
            "round_robin",
            "consistent_hash",
            "maglev",
        ],
    );
}

#[test]
fn consistent_hash_load_not_above_one() {
    assert_err(
        &spec_with("load: 1.25", "load: 0.9"),
        "service_discovery.load_balancer.consistent_hash.load",
        &["must be > 1.0", "got 0.9"],
    );
}

#[test]
fn zero_partitions() {
    assert_err(
        &spec_with("partition_count: 271", "partition_count: 0"),
        "service_discovery.load_balancer.consistent_hash.partition_count",
        &["between 1 and", "got 0"],
    );
}

#[test]
fn port_out_of_range() {
    assert_err(
        &spec_with("port: 8080", "port: 70000"),
        "service_discovery.registration.port",
        &["70000", "u16"],
    );
    assert_err(
        &spec_with("port: 8080", "port: 0"),
        "service_discovery.registration.port",
        &["between 1 and 65535", "got 0"],
    );
}

#[test]
fn service_name_with_a_slash() {
    assert_err(
        &spec_with("name: \"user-service\"", "name: \"user/service\""),
        "service_discovery.registration.name",
        &["`/`", "\"user/service\""],
    );
}

#[test]
fn missing_service_name() {
    assert_err(
        &spec_with("    name: \"user-service\"\n", ""),
        "service_discovery.registration.name",
        &["is required"],
    );
}

#[test]
fn health_check_without_a_target() {
    assert_err(
        &spec_with("      http: \"/health\"\n", ""),
        "service_discovery.registration.health_check",
        &["one of http, tcp, grpc or ttl"],
    );
}

#[test]
fn health_check_with_two_targets() {
    assert_err(
        &spec_with(
            "http: \"/health\"",
            "http: \"/health\"\n      tcp: \"127.0.0.1:8080\"",
        ),
        "service_discovery.registration.health_check",
        &["only one of"],
    );
}

#[test]
fn health_check_http_not_a_path() {
    assert_err(
        &spec_with("http: \"/health\"", "http: \"health\""),
        "service_discovery.registration.health_check.http",
        &["starting with \"/\"", "\"health\""],
    );
}

#[test]
fn checked_by_unknown_value() {
    assert_err(
        &spec_with(
            "timeout: \"3s\"",
            "timeout: \"3s\"\n      checked_by: \"agent\"",
        ),
        "service_discovery.registration.health_check.checked_by",
        &["\"auto\", \"registry\" or \"chi\"", "\"agent\""],
    );
}

#[test]
fn checked_by_registry_on_etcd_is_refused_at_the_field() {
    let yaml = spec_with(
        "timeout: \"3s\"",
        "timeout: \"3s\"\n      checked_by: registry",
    )
    .replacen("enabled: false", "enabled: true", 1);
    assert_err(
        &yaml,
        "service_discovery.registration.health_check.checked_by",
        &[
            "etcd cannot",
            "only Consul runs them",
            "\"auto\" or \"chi\"",
        ],
    );
    // Consul alone runs it: accepted.
    let c = load(&spec_with(
        "timeout: \"3s\"",
        "timeout: \"3s\"\n      checked_by: registry",
    ))
    .expect("consul runs checks");
    let check = c.registration.and_then(|r| r.health_check).expect("check");
    assert_eq!(check.checked_by, crate::CheckedBy::Registry);
}

#[test]
fn rise_and_fall_are_read_and_zero_is_refused() {
    let c = load(&spec_with(
        "timeout: \"3s\"",
        "timeout: \"3s\"\n      rise: 1\n      fall: 5",
    ))
    .expect("loads");
    let check = c.registration.and_then(|r| r.health_check).expect("check");
    assert_eq!((check.rise, check.fall), (Some(1), Some(5)));
    assert_err(
        &spec_with("timeout: \"3s\"", "timeout: \"3s\"\n      fall: 0"),
        "service_discovery.registration.health_check.fall",
        &["at least 1, got 0"],
    );
}

#[test]
fn zone_aware_is_read_and_bad_shares_name_the_zone() {
    let c = load(&spec_with(
        "    health_check_enabled: true\n",
        "    health_check_enabled: true\n    zone_aware:\n      enabled: true\n      clients:\n        us-east-1a: 3\n",
    ))
    .expect("loads");
    let z = &c.load_balancer.zone_aware;
    assert!(z.enabled);
    assert_eq!(z.min_instances, 6);
    assert_eq!(z.clients.get("us-east-1a"), Some(&3.0));
    assert_err(
        &spec_with(
            "    health_check_enabled: true\n",
            "    health_check_enabled: true\n    zone_aware:\n      clients:\n        us-east-1a: -1\n",
        ),
        "service_discovery.load_balancer.zone_aware.clients.us-east-1a",
        &["at least 0", "got -1"],
    );
}

#[test]
fn circuit_breaker_is_read_and_zero_is_refused() {
    let c = load(&spec_with(
        "    health_check_enabled: true\n",
        "    health_check_enabled: true\n    circuit_breaker:\n      max_requests: 64\n",
    ))
    .expect("loads");
    assert_eq!(c.load_balancer.max_requests_per_instance, Some(64));
    assert_err(
        &spec_with(
            "    health_check_enabled: true\n",
            "    health_check_enabled: true\n    circuit_breaker:\n      max_requests: 0\n",
        ),
        "service_discovery.load_balancer.circuit_breaker.max_requests",
        &["at least 1", "got 0"],
    );
}

#[test]
fn slow_start_is_read_and_bad_values_name_the_field() {
    let c = load(&spec_with(
        "    health_check_enabled: true\n",
        "    health_check_enabled: true\n    slow_start:\n      window: 30s\n      aggression: 2\n",
    ))
    .expect("loads");
    let s = c.load_balancer.slow_start.expect("slow start");
    assert_eq!(s.window, std::time::Duration::from_secs(30));
    assert_eq!((s.aggression, s.min_weight_percent), (2.0, 10.0));
    assert_err(
        &spec_with(
            "    health_check_enabled: true\n",
            "    health_check_enabled: true\n    slow_start:\n      window: 30s\n      min_weight_percent: 150\n",
        ),
        "service_discovery.load_balancer.slow_start.min_weight_percent",
        &["between 0 and 100", "got 150"],
    );
    assert_err(
        &spec_with(
            "    health_check_enabled: true\n",
            "    health_check_enabled: true\n    slow_start:\n      aggression: 1\n",
        ),
        "service_discovery.load_balancer.slow_start.window",
        &["is required"],
    );
}

#[test]
fn timeout_not_shorter_than_interval() {
    assert_err(
        &spec_with("timeout: \"3s\"", "timeout: \"15s\""),
        "service_discovery.registration.health_check.timeout",
        &["shorter than the interval (10s)", "got 15s"],
    );
}

#[test]
fn unknown_field_is_a_typo() {
    assert_err(
        &spec_with("strategy: ", "stratgy: "),
        "service_discovery.load_balancer.stratgy",
        &["unknown field `stratgy`", "expected one of `strategy`"],
    );
}

#[test]
fn consul_address_without_port() {
    assert_err(
        &spec_with("address: \"127.0.0.1:8500\"", "address: \"consul.local\""),
        "service_discovery.registries.consul.address",
        &["host:port", "\"consul.local\""],
    );
}

#[test]
fn etcd_enabled_without_endpoints() {
    let yaml = spec_with(
        "enabled: false\n      endpoints:\n        - \"127.0.0.1:2379\"",
        "enabled: true\n      endpoints: []",
    );
    assert_err(
        &yaml,
        "service_discovery.registries.etcd.endpoints",
        &["at least one"],
    );
}

#[test]
fn etcd_endpoint_with_bad_port() {
    let yaml = spec_with(
        "enabled: false\n      endpoints:\n        - \"127.0.0.1:2379\"",
        "enabled: true\n      endpoints:\n        - \"127.0.0.1:2379\"\n        - \"127.0.0.1:http\"",
    );
    assert_err(
        &yaml,
        "service_discovery.registries.etcd.endpoints[1]",
        &["host:port", "\"127.0.0.1:http\""],
    );
}

#[test]
fn nacos_server_without_port() {
    let yaml = spec_with(
        "enabled: false\n      server_configs",
        "enabled: true\n      server_configs",
    )
    .replacen("          port: 8848\n", "", 1);
    assert_err(
        &yaml,
        "service_discovery.registries.nacos.server_configs[0].port",
        &["is required"],
    );
}

#[test]
fn nacos_bad_namespace() {
    let yaml = spec_with(
        "enabled: false\n      server_configs",
        "enabled: true\n      server_configs",
    )
    .replacen("namespace_id: \"public\"", "namespace_id: \"../admin\"", 1);
    assert_err(
        &yaml,
        "service_discovery.registries.nacos.client_config.namespace_id",
        &["`/`", "\"../admin\""],
    );
}

#[test]
fn version_routing_without_default_version() {
    assert_err(
        &spec_with("default_version: \"v1\"", "default_version: \"\""),
        "service_discovery.routing.default_version",
        &["required when enable_version_routing is true"],
    );
}

#[test]
fn zone_in_two_regions() {
    assert_err(
        &spec_with("- \"us-west-2b\"", "- \"us-east-1a\""),
        "service_discovery.routing.regions.us-west-2[1]",
        &[
            "\"us-east-1a\"",
            "already listed under region \"us-east-1\"",
        ],
    );
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let (field, message) = err_of("service_discovery:\n  routing: [unclosed\n");
    assert!(!field.is_empty());
    assert!(message.contains("line"), "{message}");
}

#[test]
fn meta_must_be_strings_of_a_map() {
    assert_err(
        &spec_with("env: \"production\"", "env: [\"production\"]"),
        "service_discovery.registration.meta.env",
        &["invalid type", "string"],
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = Config::load("/nonexistent/chi.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/chi.yaml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn registry_urls() {
    let env = |k: &str| (k == "CHI_ETCD_PASSWORD").then(|| "pw".to_owned());
    let r = Registries::from_url("etcd://127.0.0.1:2379,127.0.0.1:22379", &env).expect("etcd");
    let e = r.etcd.expect("etcd");
    assert_eq!(e.endpoints, vec!["127.0.0.1:2379", "127.0.0.1:22379"]);
    assert_eq!(e.password.expect("pw").expose(), "pw");
    assert!(
        Registries::from_url("memory", &env)
            .expect("memory")
            .memory
            .is_some()
    );
    assert_eq!(
        Registries::from_url("consul://127.0.0.1:8500", &env)
            .expect("c")
            .enabled(),
        vec!["consul"]
    );
    let n = Registries::from_url("nacos://10.0.0.1:8848", &env)
        .expect("n")
        .nacos
        .expect("n");
    assert_eq!(
        (n.server_configs[0].ip.as_str(), n.server_configs[0].port),
        ("10.0.0.1", 8848)
    );
    for (bad, part) in [
        ("eureka://h:1", "unknown registry scheme \"eureka\""),
        ("consul://h", "host:port"),
        ("consul://user:tok@h:8500", "credentials in the URL"),
        ("localhost:8500", "expected memory, etcd://"),
    ] {
        let err = Registries::from_url(bad, &env).unwrap_err().to_string();
        assert!(
            err.starts_with("--registry: ") && err.contains(part),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn connect_builds_the_embedded_registry_by_default() {
    let reg = Config::default()
        .registries
        .connect()
        .await
        .expect("memory");
    assert_eq!(reg.backend(), "memory");
}

#[test]
fn a_ttl_health_check_sets_the_consul_check_ttl() {
    let yaml = "service_discovery:\n  registration:\n    name: a\n    address: 127.0.0.1\n    port: 1\n    health_check:\n      ttl: 3s\n  registries:\n    consul:\n      enabled: true\n";
    let c = load(yaml).expect("load");
    let consul = c.registries.consul.expect("consul");
    assert_eq!(consul.check_ttl, Duration::from_secs(3));
    // Without a TTL check the adapter's default applies.
    let http = yaml.replace("ttl: 3s", "http: /health");
    let c = load(&http).expect("load");
    assert_eq!(
        c.registries.consul.expect("consul").check_ttl,
        ConsulConfig::default().check_ttl
    );
    // A TTL the adapter refuses is reported where the user wrote it.
    let (field, message) = err_of(&yaml.replace("ttl: 3s", "ttl: 50ms"));
    assert_eq!(field, "service_discovery.registration.health_check.ttl");
    assert!(message.contains("at least 100ms"), "{message}");
}

#[test]
fn consul_consistency_is_read_and_checked_at_its_field() {
    use crate::registry::consul::Consistency;
    let consistency = |yaml: &str| {
        load(yaml)
            .expect("loads")
            .registries
            .consul
            .expect("consul")
    };
    assert_eq!(consistency(SPEC).consistency, Consistency::Default);
    for (value, want) in [
        ("default", Consistency::Default),
        ("stale", Consistency::Stale),
        ("consistent", Consistency::Consistent),
    ] {
        let yaml = spec_with(
            "datacenter: \"\"",
            &format!("datacenter: \"\"\n      consistency: {value}"),
        );
        assert_eq!(consistency(&yaml).consistency, want, "{value}");
    }
    assert_err(
        &spec_with(
            "datacenter: \"\"",
            "datacenter: \"\"\n      consistency: eventual",
        ),
        "service_discovery.registries.consul.consistency",
        &["\"default\", \"stale\" or \"consistent\"", "\"eventual\""],
    );
}
