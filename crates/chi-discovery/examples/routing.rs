//! What the smart router decides for a small fleet: version, then place, then the balancer.
//!
//! Run: `cargo run -p chi-discovery --example routing`
//!
//! The fleet: `user-service` v1 in us-east-1 (zones a and b) and us-west-2, a v2 canary in
//! us-east-1a, and the routing block of `examples/chi-config.yaml`. Each line shows a request's
//! headers, which rules decided (fallbacks included) and which instances it could go to; then an
//! instance turns unhealthy and the same requests are routed again.

use std::sync::Arc;

use chi_discovery::balance::{BalancerConfig, Strategy};
use chi_discovery::config::RoutingConfig;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::routing::{Route, Smart, Stage};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance, Snapshot};
use indexmap::IndexMap;

const SERVICE: &str = "user-service";

fn instance(id: &str, version: &str, region: &str, zone: &str) -> Instance {
    Instance::new(SERVICE, "10.0.0.1", 8080)
        .with_id(id)
        .with_version(version)
        .with_tag(version)
        .with_meta("region", region)
        .with_meta("zone", zone)
        .with_health(HealthStatus::Healthy)
}

fn config() -> RoutingConfig {
    let mut regions = IndexMap::new();
    regions.insert(
        "us-east-1".to_owned(),
        vec![
            "us-east-1a".into(),
            "us-east-1b".into(),
            "us-east-1c".into(),
        ],
    );
    regions.insert(
        "us-west-2".to_owned(),
        vec!["us-west-2a".into(), "us-west-2b".into()],
    );
    RoutingConfig {
        enable_version_routing: true,
        enable_geo_routing: true,
        default_version: "v1".into(),
        regions,
        ..RoutingConfig::default()
    }
}

fn show<B: Stage>(router: &Smart<B>, snapshot: &Snapshot) {
    let requests: &[&[(&str, &str)]] = &[
        &[],
        &[("X-Client-Zone", "us-east-1a")],
        &[("X-Client-Zone", "us-east-1b")],
        &[("X-Client-Zone", "us-east-1c")],
        &[("X-Client-Region", "us-west-2")],
        &[("X-Client-Region", "eu-west-1")],
        &[
            ("X-Service-Version", "v2"),
            ("X-Client-Region", "us-west-2"),
        ],
        &[("X-Service-Version", "v3"), ("X-Client-Zone", "us-west-2b")],
    ];
    for headers in requests {
        let route = Route::from_headers(*headers);
        let shown: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let shown = if shown.is_empty() {
            "(no headers)".to_owned()
        } else {
            shown.join(", ")
        };
        match router.pick(snapshot, &route) {
            Some(p) => {
                let d = p.decision();
                let subset: Vec<&str> = p
                    .subset()
                    .instances()
                    .iter()
                    .map(|i| i.id.as_str())
                    .collect();
                println!(
                    "{shown:<52} version={:<14} geo={:<14} {} -> {:<10} from {subset:?}",
                    d.version.as_str(),
                    d.geo.as_str(),
                    if d.panic {
                        "PANIC   "
                    } else if d.fell_back() {
                        "FALLBACK"
                    } else {
                        "        "
                    },
                    p.instance().id,
                );
            }
            None => println!("{shown:<52} no instance"),
        }
    }
}

#[tokio::main]
async fn main() -> chi_discovery::Result<()> {
    let registry = Arc::new(Memory::new());
    for i in [
        instance("east-a1", "v1", "us-east-1", "us-east-1a"),
        instance("east-a2", "v1", "us-east-1", "us-east-1a"),
        instance("east-b1", "v1", "us-east-1", "us-east-1b"),
        instance("west-a1", "v1", "us-west-2", "us-west-2a"),
        instance("canary-a", "v2", "us-east-1", "us-east-1a"),
    ] {
        registry.register(&i).await?;
    }
    let client = DiscoveryClient::new(registry.clone());
    // The Go sketch's default strategy, one table per routing subset.
    let router = Smart::with_balancer(&config(), BalancerConfig::new(Strategy::WeightedRoundRobin))
        .map_err(|message| chi_discovery::Error::Config {
            field: "load_balancer".into(),
            message,
        })?;

    println!("== all healthy");
    show(&router, &client.discover(SERVICE).await?);

    println!("\n== us-east-1a's v1 instances unhealthy");
    client.set_health(SERVICE, "east-a1", Some(HealthStatus::Unhealthy));
    client.set_health(SERVICE, "east-a2", Some(HealthStatus::Unhealthy));
    show(&router, &client.discover(SERVICE).await?);

    println!("\n== every instance unhealthy (panic: route over all of them)");
    for id in ["east-b1", "west-a1", "canary-a"] {
        client.set_health(SERVICE, id, Some(HealthStatus::Unhealthy));
    }
    show(&router, &client.discover(SERVICE).await?);
    Ok(())
}
