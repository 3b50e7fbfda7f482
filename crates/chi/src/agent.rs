//! `chi agent`: the sidecar. Registers the configured service in every enabled registry, runs its
//! health check, keeps the registration alive (re-registering after registry loss), serves
//! `/health`, `/metrics` and the registry API on the admin port (behind the tokens of
//! `service_discovery.agent`, [`crate::auth`]), and deregisters on SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chi_discovery::manager::{BackendChange, BackendEvent};
use chi_discovery::{HealthStatus, ServiceManager};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;
use tokio::sync::broadcast;

use crate::admin;
use crate::auth::{Access, Need};
use crate::cli::AgentArgs;
use crate::console::{AgentFeed, Console, WriteGate};
use crate::failure::Failure;
use crate::limits::{Door, Limits, Refusal, Refusals};
use crate::source::Source;

/// Registrations in an agent's embedded registry expire this long after their last keep-alive,
/// so an agent that died without deregistering (kill -9) leaves no ghost behind.
const MEMORY_TTL: Duration = Duration::from_secs(10);
/// Connections and requests the agent's port serves at once by default (`--max-connections`,
/// `--max-requests`; a `chi://` watch is a request for as long as it is open).
const MAX_CONNECTIONS: usize = 1024;
const MAX_REQUESTS: usize = 1024;

type Labels = Vec<(String, String)>;

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let mut source = Source::resolve(&args.source)?;
    // `0.0.0.0` / `::` as written in a config file: advertise this host's address instead
    // (registries refuse an unspecified address), as `Chi` does.
    let Some(service) = source
        .config
        .registration
        .clone()
        .map(chi_discovery::ServiceConfig::advertised)
    else {
        return Err(Failure::bad_input(
            "nothing to register: the config has no service_discovery.registration",
        )
        .hint(
            "run `chi agent -c chi-config.yaml` with a registration section (name, address, port)",
        )
        .into());
    };
    if source.config.registries.dns.is_some() && source.config.registries.writable().is_empty() {
        return Err(Failure::bad_input(format!(
            "cannot register {}: DNS is read-only (it serves discovery only) and it is the only registry",
            service.name
        ))
        .hint(
            "register in consul://, etcd://, nacos:// or a chi:// agent; read DNS with chi discover, watch, select, proxy or xds --registry dns://...",
        )
        .into());
    }
    if let Some(m) = &mut source.config.registries.memory
        && m.ttl.is_none()
    {
        m.ttl = Some(MEMORY_TTL);
    }
    // `--registry consul://...` replaced the config's registries: the TTL check still applies.
    source.config.registries.apply_registration(Some(&service));
    guard_the_door(&args, &source.config.agent)?;
    let registry = source.connect().await?;
    let manager = Arc::new(ServiceManager::new(registry.clone()).with_retry(source.config.retry));
    let instance = service.instance();
    let backends = source.backends();
    // Every change of where the registration stands on each backend, from the first attempt
    // on: subscribed before registering.
    tokio::spawn(print_standing(manager.subscribe()));
    // The check runs where each registry expects it: Consul's agent runs it, for the others the
    // manager probes here and reports the verdict with its keep-alives.
    let registered = manager.register(service.clone()).await;
    if let Err(e @ chi_discovery::Error::Invalid { .. }) = &registered {
        return Err(Failure::bad_input(format!("cannot register: {e}"))
            .hint("see service_discovery.registration and its health_check")
            .into());
    }
    if let Err(e) = registered {
        eprintln!("warning: not registered anywhere yet ({e}); retrying in the background")
    }

    let health_manager = manager.clone();
    let health: admin::HealthFn = Arc::new(move || health_body(&health_manager));
    let refusals = Refusals::default();
    let limits = Limits::from_args(
        &args.conn,
        Some(&args.requests),
        (MAX_CONNECTIONS, MAX_REQUESTS),
    );
    let door = Door::new("agent", limits, Refusal::Http, &refusals);
    let access = Arc::new(Access::new(&source.config.agent));
    let metrics = agent_metrics(manager.clone(), &refusals, &access);
    let feed = AgentFeed {
        manager: manager.clone(),
        strategy: source.config.load_balancer.strategy,
    };
    let gate = WriteGate::new(args.console_writes, access.clone());
    let mut console = Console::new("agent", registry.clone(), Arc::new(feed), gate).routes();
    if access.guards_reads() {
        // The console shows what `/v1` lists: the same read token.
        let reads = access.clone();
        console = console.route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let reads = reads.clone();
                async move {
                    match reads.check(req.headers(), Need::Read) {
                        Ok(()) => next.run(req).await,
                        Err(r) => axum::response::IntoResponse::into_response(r),
                    }
                }
            },
        ));
    }
    let api = admin::RegistryApi {
        registry: registry.clone(),
        access,
        writes_off: writes_off(&source, &backends),
    };
    let tls = source
        .config
        .agent
        .tls
        .as_ref()
        .map(|tls| crate::tls::acceptor(tls, &crate::tls::AGENT))
        .transpose()
        .map_err(|e| Failure::bad_input(format!("{e:#}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bound = admin::serve(
        args.admin,
        Some(api),
        (health, metrics),
        console,
        (door, args.max_body as usize),
        tls,
    )
    .await?;
    println!(
        "chi agent: {} ({} at {}) in {backends}; admin on {scheme}://{bound}",
        instance.id,
        instance.name,
        instance.authority()
    );

    shutdown.wait().await;
    eprintln!("chi agent: shutting down, deregistering {}", instance.id);
    let mut failed = false;
    for (id, result) in manager.shutdown().await {
        match result {
            Ok(()) => println!("deregistered {id} from {backends}"),
            Err(e) => {
                failed = true;
                eprintln!("error: deregistering {id}: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Refuses to serve the registry API beyond loopback, or to forward writes to another
/// registry, without a write token, unless `--insecure` says so (then warns, loudly).
fn guard_the_door(
    args: &AgentArgs,
    settings: &chi_discovery::config::AgentSettings,
) -> anyhow::Result<()> {
    let wide = !args.admin.ip().is_loopback();
    if settings.guards_writes() {
        return Ok(());
    }
    if settings.forward_writes && !args.insecure {
        return Err(Failure::bad_input(
            "service_discovery.agent.forward_writes: needs a write token, else anyone who reaches the \
             admin port writes to the registry behind it with this agent's credentials",
        )
        .hint("set service_discovery.agent.write_token (or CHI_AGENT_WRITE_TOKEN), or start with --insecure")
        .into());
    }
    if wide && !args.insecure {
        return Err(Failure::bad_input(format!(
            "refusing to serve the registry API on {} without a write token: anyone who reaches it \
             could register and deregister any service",
            args.admin
        ))
        .hint(
            "set CHI_AGENT_WRITE_TOKEN (or service_discovery.agent.write_token), bind --admin \
             127.0.0.1:PORT, or start with --insecure to allow it anyway",
        )
        .into());
    }
    if wide {
        eprintln!(
            "WARNING: --insecure: the registry API on {} takes writes from ANYONE who reaches it \
             (no write token); set CHI_AGENT_WRITE_TOKEN to require one",
            args.admin
        );
    }
    Ok(())
}

/// Why the registry API refuses writes: an agent fronting a registry other than its embedded
/// one passes them on only with `service_discovery.agent.forward_writes`.
fn writes_off(source: &Source, backends: &str) -> Option<String> {
    let embedded = source.config.registries.enabled() == ["memory"];
    (!embedded && !source.config.agent.forward_writes).then(|| {
        format!(
            "this agent fronts {backends} and does not pass writes on to it; register there \
             directly, or set service_discovery.agent.forward_writes: true (with a write token)"
        )
    })
}

/// Prints each change of the registration's standing on a backend as it happens: `registered
/// ID in BACKEND` and `re-registered ID in BACKEND` on stdout, a failing backend (the first
/// failure of a run, with the error) on stderr.
async fn print_standing(mut events: broadcast::Receiver<BackendEvent>) {
    loop {
        match events.recv().await {
            Ok(e) => match &e.change {
                BackendChange::Registered => println!("registered {} in {}", e.id, e.backend),
                BackendChange::Reregistered => println!(
                    "re-registered {} in {} (the registry had lost it)",
                    e.id, e.backend
                ),
                BackendChange::Failing { error } => eprintln!(
                    "warning: {} does not hold {} ({}); retrying in the background",
                    e.backend,
                    e.id,
                    crate::output::clean(error)
                ),
                _ => println!("{}: {} {:?}", e.backend, e.id, e.change),
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("warning: {n} registration changes not shown (see /health)")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `/health`: `ok` (200) when every backend holds every registration, its last call worked and
/// the service is not unhealthy; `partial` (200) when some backend does not (the others serve
/// it; the missing ones are retried); `degraded` (503) when none holds it or it is unhealthy.
fn health_body(manager: &ServiceManager) -> (bool, serde_json::Value) {
    let status = manager.status();
    let all = status.iter().all(|s| s.backends.iter().all(|b| b.is_up()));
    let served = status.iter().all(|s| s.backends.iter().any(|b| b.is_up()));
    let unhealthy = status.iter().any(|s| s.health == HealthStatus::Unhealthy);
    let verdict = match (served && !unhealthy, all) {
        (true, true) => "ok",
        (true, false) => "partial",
        (false, _) => "degraded",
    };
    let body = serde_json::json!({
        "status": verdict,
        "registrations": status.iter().map(|s| serde_json::json!({
            "id": s.instance.id,
            "name": s.instance.name,
            "health": s.health,
            "backends": s.backends.iter().map(|b| serde_json::json!({
                "backend": b.backend,
                "registered": b.registered,
                "up": b.is_up(),
                "failures": b.failures,
                "last_error": b.last_error,
                "reregistrations": b.reregistrations,
                "errors": b.errors,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    (served && !unhealthy, body)
}

/// `/metrics` of the agent: registration state per backend and own health, read at scrape time,
/// the refusals of its port and of its tokens.
fn agent_metrics(
    manager: Arc<ServiceManager>,
    refusals: &Refusals,
    access: &Access,
) -> admin::MetricsFn {
    let mut registry = Metrics::default();
    refusals.register(&mut registry);
    access.register_metrics(&mut registry);
    let registered = Family::<Labels, Gauge>::default();
    let reregistrations = Family::<Labels, Gauge>::default();
    let health = Family::<Labels, Gauge>::default();
    registry.register(
        "chi_agent_registered",
        "1 when the backend holds the registration",
        registered.clone(),
    );
    registry.register(
        "chi_agent_reregistrations",
        "Times the registration was restored after the backend lost it",
        reregistrations.clone(),
    );
    registry.register(
        "chi_agent_health",
        "Own health: 1 healthy, 0 unhealthy, -1 unknown",
        health.clone(),
    );
    // The library's registration metrics (`chi_registration_*`), read at scrape.
    let library = chi_discovery::metrics::Metrics::register(&mut registry, Default::default());
    let status_manager = manager.clone();
    library.register_registrations(&mut registry, move || status_manager.status());
    let registry = Arc::new(registry);
    Arc::new(move || {
        for s in manager.status() {
            for b in &s.backends {
                let labels = vec![
                    ("service".to_owned(), s.instance.name.clone()),
                    ("backend".to_owned(), b.backend.clone()),
                ];
                registered
                    .get_or_create(&labels)
                    .set(i64::from(b.registered));
                reregistrations
                    .get_or_create(&labels)
                    .set(i64::try_from(b.reregistrations).unwrap_or(i64::MAX));
            }
            health
                .get_or_create(&vec![("service".to_owned(), s.instance.name.clone())])
                .set(match s.health {
                    HealthStatus::Healthy => 1,
                    HealthStatus::Unhealthy => 0,
                    HealthStatus::Unknown => -1,
                });
        }
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    })
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment this is made (make it before telling
/// anyone the process is ready, so an early signal is not the default "die at once").
pub(crate) struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers.
    pub(crate) fn install() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
