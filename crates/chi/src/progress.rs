//! Progress of long work on stderr: a live counter when stderr is a terminal, a one-line log
//! message every few seconds otherwise, and a summary line at the end either way.
//!
//! Today's long work is the warm-up of the discovery cache (`chi proxy --warm-up`).

use crate::output::human;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chi_discovery::{DiscoveryClient, Registry};
use futures_util::StreamExt;

use crate::failure::Failure;

/// Services loaded at once.
const CONCURRENCY: usize = 16;
/// How often a log line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);
/// How often the live counter is redrawn on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(100);
/// Failures named one by one after the summary.
const NAMED_FAILURES: usize = 3;

/// What a warm-up did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WarmUpSummary {
    pub(crate) total: usize,
    pub(crate) done: usize,
    pub(crate) failed: usize,
    /// Loaded with zero instances.
    pub(crate) empty: usize,
}

impl WarmUpSummary {
    fn line(&self) -> String {
        let mut line = format!(
            "warm-up: {}/{} services, {} failed",
            self.done, self.total, self.failed
        );
        if self.empty > 0 {
            line.push_str(&format!(", {} without instances", self.empty));
        }
        line
    }
}

/// The services `--warm-up` names: `all` asks the registry for every service it lists.
pub(crate) async fn services(
    names: &[String],
    registry: &dyn Registry,
) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if name == "all" {
            let listed = registry.services().await.map_err(|e| {
                Failure::failed(format!(
                    "--warm-up all: cannot list the registry's services: {e}"
                ))
                .hint("name the services instead, e.g. --warm-up user-service,order-service")
            })?;
            out.extend(listed);
        } else {
            out.push(name.to_owned());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Loads `services` into the client's cache, `CONCURRENCY` at a time, showing progress on stderr.
pub(crate) async fn warm_up(client: &DiscoveryClient, services: &[String]) -> WarmUpSummary {
    let live = std::io::stderr().is_terminal();
    warm_up_to(client, services, live).await
}

async fn warm_up_to(client: &DiscoveryClient, services: &[String], live: bool) -> WarmUpSummary {
    let start = Instant::now();
    let mut summary = WarmUpSummary {
        total: services.len(),
        ..WarmUpSummary::default()
    };
    if services.is_empty() {
        return summary;
    }
    let mut failures: Vec<String> = Vec::new();
    let mut results = futures_util::stream::iter(
        services
            .iter()
            .map(|s| async move { (s.as_str(), client.discover(s).await.map(|snap| snap.len())) }),
    )
    .buffer_unordered(CONCURRENCY);
    let every = if live { DRAW_EVERY } else { LOG_EVERY };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            next = results.next() => match next {
                Some((name, result)) => {
                    summary.done += 1;
                    match result {
                        Ok(0) => summary.empty += 1,
                        Ok(_) => {}
                        Err(e) => {
                            summary.failed += 1;
                            if failures.len() < NAMED_FAILURES {
                                failures.push(format!("{name}: {e}"));
                            }
                        }
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if live {
                    eprint!("\r{}", summary.line());
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{} so far", summary.line());
                }
            }
        }
    }
    if live {
        eprint!("\r");
    }
    eprintln!("{} in {}", summary.line(), human(start.elapsed()));
    for failure in &failures {
        eprintln!("warning: warm-up of {failure}");
    }
    if summary.failed > 0 {
        eprintln!(
            "hint: the proxy serves anyway and asks the registry again on the first request; -v shows more"
        );
    }
    summary
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chi_discovery::registry::Memory;
    use chi_discovery::{DiscoveryClient, Instance, Registry};

    use super::{WarmUpSummary, services, warm_up_to};

    #[tokio::test]
    async fn counts_loaded_empty_and_failed() {
        let reg = Memory::new();
        let mut i = Instance::new("web", "127.0.0.1", 8080);
        i.id = "web-1".into();
        reg.register(&i).await.expect("register");
        let client = DiscoveryClient::builder().build(Arc::new(reg.clone()));
        let names = ["web".to_owned(), "none".to_owned(), "bad/name".to_owned()];
        let summary = warm_up_to(&client, &names, false).await;
        assert_eq!(
            summary,
            WarmUpSummary {
                total: 3,
                done: 3,
                failed: 1,
                empty: 1
            }
        );
        assert_eq!(
            summary.line(),
            "warm-up: 3/3 services, 1 failed, 1 without instances"
        );
        assert!(client.cached("web").is_some());
        let all = services(&["all".to_owned(), "web".to_owned()], &reg)
            .await
            .expect("list");
        assert_eq!(all, vec!["web".to_owned()]);
    }
}
