//! `chi select NAME`: what routing and the balancer pick over N picks, as a distribution.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chi_discovery::DiscoveryClient;
use chi_discovery::routing::Route;
use serde_json::json;

use crate::cli::{Format, SelectArgs};
use crate::failure::Failure;
use crate::output;
use crate::pick;
use crate::source::Source;

pub(crate) async fn run(args: SelectArgs) -> anyhow::Result<ExitCode> {
    let source = Source::resolve(&args.source)?;
    source.require_shared("select")?;
    // Asking for a version or a place turns that routing stage on, whatever the config says.
    let mut config = source.config.clone();
    if args.route_version.is_some() {
        config.routing.enable_version_routing = true;
    }
    if args.region.is_some() || args.zone.is_some() {
        config.routing.enable_geo_routing = true;
    }
    let routers = match &args.strategy {
        Some(s) => pick::routers_with_strategy(&config, s)?,
        None => pick::routers(&config)?,
    };
    if args.count == 0 {
        return Err(Failure::bad_input("--count 0: nothing to pick")
            .hint("e.g. --count 1000")
            .into());
    }
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .retry(source.config.retry)
        .build(registry);
    let snapshot = client.discover(&args.name).await.map_err(|e| {
        Failure::failed(format!("cannot discover `{}`: {e}", args.name))
            .hint("is the registry up? -v shows the retries")
    })?;
    if snapshot.is_empty() {
        return Err(
            Failure::failed(format!("service `{}` has no instances", args.name))
                .hint(format!(
                    "`chi discover {}` lists what the registry has",
                    args.name
                ))
                .into(),
        );
    }
    let router = routers.router();
    let route = Route {
        version: args.route_version.as_deref(),
        region: args.region.as_deref(),
        zone: args.zone.as_deref(),
        key: args.key.as_deref().map(str::as_bytes),
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut misses = 0u64;
    for _ in 0..args.count {
        match pick::pick(&router, &snapshot, &route, &[], None) {
            Some(p) => *counts.entry(p.instance().id.clone()).or_default() += 1,
            None => misses += 1,
        }
    }
    let total = f64::from(args.count);
    let by_id = |id: &str| snapshot.instances().iter().find(|i| i.id == id);
    match args.output {
        Format::Json => {
            let picks: Vec<_> = counts
                .iter()
                .map(|(id, n)| {
                    let i = by_id(id);
                    json!({
                        "id": id,
                        "address": i.map(|i| i.authority()),
                        "version": i.map(|i| i.version.clone()),
                        "weight": i.map(|i| i.weight),
                        "picks": n,
                        "share": *n as f64 / total,
                    })
                })
                .collect();
            let out = json!({
                "service": args.name,
                "strategy": routers.strategy().as_str(),
                "count": args.count,
                "unpicked": misses,
                "picks": picks,
            });
            println!("{}", output::json(&out, true)?);
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = counts
                .iter()
                .map(|(id, n)| {
                    let i = by_id(id);
                    vec![
                        id.clone(),
                        i.map(|i| i.authority()).unwrap_or_default(),
                        i.map(|i| i.version.clone()).unwrap_or_default(),
                        i.map(|i| i.weight.to_string()).unwrap_or_default(),
                        n.to_string(),
                        format!("{:.1}%", *n as f64 * 100.0 / total),
                    ]
                })
                .collect();
            println!(
                "{} picks of `{}` with {}:",
                args.count,
                output::clean(&args.name),
                routers.strategy()
            );
            print!(
                "{}",
                output::table(
                    &["ID", "ADDRESS", "VERSION", "WEIGHT", "PICKS", "SHARE"],
                    &rows
                )
            );
            if misses > 0 {
                println!("{misses} pick(s) found no usable instance");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
