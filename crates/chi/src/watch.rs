//! `chi watch NAME`: one line per change until interrupted.

use std::process::ExitCode;

use chi_discovery::registry::chi::wire::Event;
use chi_discovery::{Change, DiscoveryClient, Instance};
use serde_json::json;

use crate::agent::Shutdown;
use crate::cli::{Format, WatchArgs};
use crate::failure::Failure;
use crate::source::Source;

pub(crate) async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let source = Source::resolve(&args.source)?;
    source.require_shared("watch")?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .retry(source.config.retry)
        .outage(source.config.outage)
        .build(registry);
    let mut watcher = client.watch(&args.name).await.map_err(|e| {
        Failure::failed(format!("cannot watch `{}`: {e}", args.name))
            .hint("is the registry up? -v shows more")
    })?;
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(ExitCode::SUCCESS),
            item = watcher.next() => match item {
                None => return Err(Failure::failed(format!("the watch of `{}` ended", args.name)).into()),
                Some(Err(e)) => eprintln!("warning: {e} (the watch resumes with a reset)"),
                Some(Ok(change)) => println!("{}", line(change, args.output)),
            }
        }
    }
}

fn line(change: Change, format: Format) -> String {
    if let Format::Json = format {
        // The same JSON lines the agent streams to `chi://` watches.
        return serde_json::to_string(&Event::from(change))
            .unwrap_or_else(|e| json!({"type": "error", "message": e.to_string()}).to_string());
    }
    let (kind, one) = match &change {
        Change::Reset(all) => {
            let mut ids: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
            ids.sort_unstable();
            return format!("reset    {} instance(s): {}", all.len(), ids.join(" "));
        }
        Change::Add(i) => ("added", i),
        Change::Remove(i) => ("removed", i),
        Change::Update(i) => ("updated", i),
    };
    format!("{kind:<8} {}", describe(one))
}

fn describe(i: &Instance) -> String {
    format!(
        "{} {} version={} weight={} health={}",
        i.id,
        i.authority(),
        if i.version.is_empty() {
            "-"
        } else {
            &i.version
        },
        i.weight,
        i.health
    )
}
