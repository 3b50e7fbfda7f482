//! `chi config check FILE`: validate and print the effective values, like `nginx -t`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use chi_discovery::config::Config;

use crate::cli::ConfigCheckArgs;
use crate::failure::Failure;

pub(crate) fn run(args: ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.file).map_err(|e| {
        Failure::bad_input(e.to_string())
            .hint("the field is named as a YAML path; fix it and run `chi config check` again")
    })?;
    let values = describe(&config);
    let width = values.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in values {
        println!("{key:<width$} = {value}");
    }
    eprintln!("{}: ok", args.file.display());
    Ok(ExitCode::SUCCESS)
}

/// The effective values, one `path = value` line each, secrets redacted.
pub(crate) fn describe(config: &Config) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let sd = "service_discovery";
    if let Some(r) = &config.registration {
        let p = format!("{sd}.registration");
        out.insert(format!("{p}.id"), r.instance_id());
        out.insert(format!("{p}.name"), r.name.clone());
        out.insert(format!("{p}.version"), r.version.clone());
        out.insert(format!("{p}.address"), format!("{}:{}", r.address, r.port));
        out.insert(format!("{p}.tags"), r.tags.join(","));
        out.insert(
            format!("{p}.meta"),
            r.meta
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.insert(format!("{p}.weight"), r.weight.to_string());
        if let Some(h) = &r.health_check {
            out.insert(
                format!("{p}.health_check"),
                format!(
                    "{:?} every {} (timeout {})",
                    h.target,
                    d(h.interval),
                    d(h.timeout)
                ),
            );
        }
    }
    out.insert(
        format!("{sd}.registries"),
        config.registries.enabled().join(","),
    );
    if let Some(c) = &config.registries.consul {
        out.insert(format!("{sd}.registries.consul.address"), c.address.clone());
        out.insert(
            format!("{sd}.registries.consul.token"),
            format!("{:?}", c.token),
        );
    }
    if let Some(e) = &config.registries.etcd {
        out.insert(
            format!("{sd}.registries.etcd.endpoints"),
            e.endpoints.join(","),
        );
        out.insert(
            format!("{sd}.registries.etcd.password"),
            format!("{:?}", e.password.clone().unwrap_or_default()),
        );
    }
    if let Some(n) = &config.registries.nacos {
        out.insert(
            format!("{sd}.registries.nacos.servers"),
            n.server_configs
                .iter()
                .map(|s| format!("{}:{}{}", s.ip, s.port, s.context_path))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.insert(
            format!("{sd}.registries.nacos.namespace_id"),
            n.namespace_id.clone(),
        );
        out.insert(
            format!("{sd}.registries.nacos.password"),
            format!("{:?}", n.password.clone().unwrap_or_default()),
        );
    }
    if let Some(z) = &config.registries.zookeeper {
        let zp = format!("{sd}.registries.zookeeper");
        out.insert(format!("{zp}.servers"), z.servers.join(","));
        out.insert(format!("{zp}.root"), z.root().to_owned());
        out.insert(format!("{zp}.layout"), z.layout.as_str().to_owned());
        out.insert(format!("{zp}.session_timeout"), d(z.session_timeout));
        out.insert(format!("{zp}.watch"), z.watch.as_str().to_owned());
        out.insert(
            format!("{zp}.password"),
            format!("{:?}", z.password.clone().unwrap_or_default()),
        );
    }
    if let Some(c) = &config.registries.chi {
        out.insert(format!("{sd}.registries.chi.address"), c.address.clone());
    }
    if let Some(dns) = &config.registries.dns {
        out.insert(format!("{sd}.registries.dns"), dns.identity());
        out.insert(
            format!("{sd}.registries.dns.refresh"),
            format!(
                "the records' TTL within {}..{} (query timeout {})",
                d(dns.min_refresh),
                d(dns.max_refresh),
                d(dns.timeout)
            ),
        );
    }
    let c = &config.cache;
    out.insert(format!("{sd}.discovery.cache.ttl"), d(c.ttl));
    out.insert(
        format!("{sd}.discovery.cache.refresh_interval"),
        d(c.refresh_interval),
    );
    out.insert(
        format!("{sd}.discovery.cache.max_size"),
        c.max_size.to_string(),
    );
    out.insert(
        format!("{sd}.discovery.cache.enable_metrics"),
        c.enable_metrics.to_string(),
    );
    let r = &config.retry;
    out.insert(
        format!("{sd}.discovery.retry.max_attempts"),
        r.max_attempts.to_string(),
    );
    out.insert(
        format!("{sd}.discovery.retry.initial_interval"),
        d(r.initial_interval),
    );
    out.insert(
        format!("{sd}.discovery.retry.max_interval"),
        d(r.max_interval),
    );
    out.insert(
        format!("{sd}.discovery.retry.multiplier"),
        r.multiplier.to_string(),
    );
    let l = &config.load_balancer;
    out.insert(
        format!("{sd}.load_balancer.strategy"),
        l.strategy.as_str().to_owned(),
    );
    out.insert(
        format!("{sd}.load_balancer.health_check_enabled"),
        l.health_check_enabled.to_string(),
    );
    out.insert(
        format!("{sd}.load_balancer.consistent_hash"),
        format!(
            "partition_count={} replication_factor={} load={}",
            l.consistent_hash.partition_count,
            l.consistent_hash.replication_factor,
            l.consistent_hash.load
        ),
    );
    out.insert(
        format!("{sd}.load_balancer.hash_key_header"),
        l.hash_key_header.as_str().to_owned(),
    );
    out.insert(
        format!("{sd}.metrics.per_instance_labels"),
        config.metrics.per_instance_labels.to_string(),
    );
    if l.strategy.uses_load_reports() {
        let o = &l.orca;
        out.insert(
            format!("{sd}.load_balancer.orca"),
            format!(
                "blackout_period={} weight_expiration_period={} weight_update_period={} error_utilization_penalty={} out_of_band={} oob_reporting_period={}",
                d(o.blackout_period),
                d(o.weight_expiration_period),
                d(o.update_period()),
                o.error_utilization_penalty,
                o.out_of_band,
                d(o.oob_reporting_period)
            ),
        );
    }
    let rt = &config.routing;
    out.insert(
        format!("{sd}.routing.enable_version_routing"),
        rt.enable_version_routing.to_string(),
    );
    out.insert(
        format!("{sd}.routing.enable_geo_routing"),
        rt.enable_geo_routing.to_string(),
    );
    out.insert(
        format!("{sd}.routing.default_version"),
        rt.default_version.clone(),
    );
    out.insert(
        format!("{sd}.routing.regions"),
        rt.regions
            .iter()
            .map(|(r, z)| format!("{r}=[{}]", z.join(",")))
            .collect::<Vec<_>>()
            .join(" "),
    );
    if !rt.client_regions.is_empty() {
        out.insert(
            format!("{sd}.routing.client_regions"),
            rt.client_regions
                .blocks()
                .map(|(net, region)| format!("{net}={region}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    if !rt.trusted_proxies.is_empty() {
        out.insert(
            format!("{sd}.routing.trusted_proxies"),
            rt.trusted_proxies
                .nets()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_the_orca_rules_of_the_strategy() {
        let yaml = "service_discovery:\n  load_balancer:\n    strategy: orca_weighted_round_robin\n    orca:\n      weight_update_period: 10ms\n";
        let config = Config::from_yaml_with_env(yaml, |_| None).expect("config");
        let orca = describe(&config)
            .into_iter()
            .find(|(k, _)| k == "service_discovery.load_balancer.orca")
            .map(|(_, v)| v)
            .expect("shown");
        assert!(
            orca.starts_with(
                "blackout_period=10s weight_expiration_period=3m weight_update_period=100ms "
            ),
            "{orca}"
        );
        let plain = Config::from_yaml_with_env("", |_| None).expect("config");
        assert!(!format!("{:?}", describe(&plain)).contains("orca"));
    }

    #[test]
    fn describe_redacts_secrets() {
        let yaml = "service_discovery:\n  registries:\n    consul:\n      enabled: true\n      token: consul-secret\n    etcd:\n      enabled: true\n      endpoints: [\"127.0.0.1:2379\"]\n      username: root\n      password: etcd-secret\n";
        let config = Config::from_yaml_with_env(yaml, |_| None).expect("config");
        let shown = format!("{:?}", describe(&config));
        assert!(
            shown.contains("service_discovery.registries.consul.address"),
            "{shown}"
        );
        assert!(
            !shown.contains("consul-secret") && !shown.contains("etcd-secret"),
            "{shown}"
        );
    }

    #[test]
    fn describe_shows_zookeeper_without_its_password() {
        let yaml = r#"
service_discovery:
  registries:
    zookeeper:
      enabled: true
      servers: ["127.0.0.1:2181"]
      layout: dubbo
      username: chi
      password: zk-secret
"#;
        let config = Config::from_yaml_with_env(yaml, |_| None).expect("config");
        let shown = describe(&config);
        let get = |k: &str| {
            let key = format!("service_discovery.registries.zookeeper.{k}");
            shown
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("root").as_deref(), Some("/dubbo"));
        assert_eq!(get("layout").as_deref(), Some("dubbo"));
        assert_eq!(get("session_timeout").as_deref(), Some("10s"));
        assert!(!format!("{shown:?}").contains("zk-secret"), "{shown:?}");
    }
}
