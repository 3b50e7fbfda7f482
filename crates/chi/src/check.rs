//! `chi check URL`: one health check now, with the library's probes.
//! Exit 0 healthy, 1 unhealthy, 2 bad input; one line of reason either way.

use crate::output::human;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chi_discovery::Instance;
use chi_discovery::health::{GrpcProbe, HttpProbe, Probe, TcpProbe};
use reqwest::Url;

use crate::cli::CheckArgs;
use crate::failure::Failure;

const EXAMPLES: &str =
    "e.g. http://127.0.0.1:8080/health, tcp://127.0.0.1:6379, grpc://127.0.0.1:50051/my.Service";

pub(crate) async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (instance, probe) = parse(&args)?;
    let start = Instant::now();
    let result = probe.check(&instance).await;
    let took = start.elapsed();
    match result {
        Ok(()) => {
            println!("healthy: {} answered in {}", args.url, human(took));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("unhealthy: {}: {e}", args.url);
            Ok(ExitCode::from(1))
        }
    }
}

fn bad(url: &str, why: impl std::fmt::Display) -> anyhow::Error {
    Failure::bad_input(format!("{url}: {why}"))
        .hint(EXAMPLES)
        .into()
}

/// The instance to probe and the probe, from the URL.
fn parse(args: &CheckArgs) -> anyhow::Result<(Instance, Arc<dyn Probe>)> {
    let raw = args.url.trim();
    let url = Url::parse(raw).map_err(|e| bad(raw, e))?;
    if !matches!(url.scheme(), "http" | "https" | "tcp" | "grpc") {
        return Err(bad(
            raw,
            format!(
                "unknown scheme {:?}, expected http, https, tcp or grpc",
                url.scheme()
            ),
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad(raw, "no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad(raw, "no port"))?;
    if port == 0 {
        return Err(bad(raw, "port 0"));
    }
    let instance = Instance::new("check", host, port);
    let probe: Arc<dyn Probe> = match url.scheme() {
        scheme @ ("http" | "https") => {
            let mut path = url.path().to_owned();
            if let Some(q) = url.query() {
                path.push('?');
                path.push_str(q);
            }
            Arc::new(
                HttpProbe::new(path)
                    .map_err(|e| bad(raw, e))?
                    .https(scheme == "https")
                    .timeout(args.timeout),
            )
        }
        "tcp" => {
            if !matches!(url.path(), "" | "/") {
                return Err(bad(raw, "a tcp:// check takes no path"));
            }
            Arc::new(TcpProbe::own().timeout(args.timeout))
        }
        "grpc" => {
            let service = url.path().trim_start_matches('/');
            Arc::new(GrpcProbe::new(service).timeout(args.timeout))
        }
        other => {
            return Err(bad(
                raw,
                format!("unknown scheme {other:?}, expected http, https, tcp or grpc"),
            ));
        }
    };
    Ok((instance, probe))
}
