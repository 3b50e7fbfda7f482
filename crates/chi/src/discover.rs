//! `chi discover NAME`: the instances of a service, filtered, as a table or JSON.

use std::process::ExitCode;

use chi_discovery::{DiscoveryClient, Filter};

use crate::cli::{DiscoverArgs, Format};
use crate::failure::Failure;
use crate::output;
use crate::source::Source;

pub(crate) async fn run(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let source = Source::resolve(&args.source)?;
    source.require_shared("discover")?;
    let filter = filter(&args)?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .retry(source.config.retry)
        .build(registry);
    let instances = client
        .discover_with_filter(&args.name, &filter)
        .await
        .map_err(|e| {
            Failure::failed(format!("cannot discover `{}`: {e}", args.name))
                .hint("is the registry up? -v shows the retries")
        })?;
    match args.output {
        Format::Json => println!("{}", output::json(&instances, true)?),
        Format::Table if instances.is_empty() => {
            eprintln!("no instances of `{}` match", output::clean(&args.name));
        }
        Format::Table => print!("{}", output::instance_table(&instances)),
    }
    Ok(ExitCode::SUCCESS)
}

fn filter(args: &DiscoverArgs) -> anyhow::Result<Filter> {
    let mut filter = Filter::new();
    for tag in &args.tags {
        filter = filter.tag(tag.clone());
    }
    for kv in &args.meta {
        let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(
                Failure::bad_input(format!("--meta {kv:?}: expected KEY=VALUE"))
                    .hint("e.g. --meta region=us-east-1")
                    .into(),
            );
        };
        filter = filter.meta(k, v);
    }
    if args.healthy {
        filter = filter.healthy_only();
    }
    Ok(filter)
}
