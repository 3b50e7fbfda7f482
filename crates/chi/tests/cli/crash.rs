//! Reliability suite, faults: an instance registered through `chi agent` crashes (`kill -9`) or
//! stops (SIGTERM), against real etcd, Consul and rnacos.
//!
//! - kill -9: the registration is gone from discovery within the backend's own bound, derived
//!   from the config the agent (or the server) is given: etcd the lease TTL, Consul the TTL
//!   check's TTL (discovery with `healthy_only`: the check turns critical, and Consul 1.8 only
//!   removes a critical instance a minute later at the earliest), rnacos its instance timeout
//!   (it usually drops an ephemeral instance as soon as the agent's connection closes).
//! - SIGTERM: the agent deregisters on its way out; gone within 1 s of the signal.
//!
//! Observed with chi's own registry clients polling every 20 ms; figures on `[reliability] `
//! lines.

use std::process::Command;
use std::time::{Duration, Instant};

use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::{Nacos, NacosConfig};
use chi_discovery::{Filter, Registry};

use crate::support::{Agent, registration};

/// etcd lease TTL given to the agent.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// Consul TTL check given to the agent (`registration.health_check.ttl`).
const CHECK_TTL: Duration = Duration::from_secs(3);
/// rnacos' `RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND`, as the harness starts it.
const NACOS_INSTANCE_TIMEOUT: Duration = chi_test_support::nacos::INSTANCE_TIMEOUT;
/// Slack on every bound: the servers' expiry sweeps (etcd checks leases every 500 ms) and our
/// polling, on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A registry server for one test, killed on drop.
struct Server {
    /// The harness's server (`Etcd`, `ConsulAgent`, `NacosServer`), killed when dropped.
    _server: Box<dyn std::any::Any>,
    /// The agent's `registries:` section.
    yaml: String,
    /// The bound after a kill -9, from the config above.
    bound: Duration,
    /// Where the bound comes from, for the report.
    why: &'static str,
    observer: Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Observer>>>>,
}

/// Chi's client of the server plus the filter that defines "in discovery".
struct Observer {
    registry: Box<dyn Registry>,
    filter: Filter,
}

impl Observer {
    /// Ids of the instances of `service` in discovery now; `None` when the call failed.
    async fn ids(&self, service: &str) -> Option<Vec<String>> {
        let list = self.registry.instances(service).await.ok()?;
        Some(self.filter.apply(&list).into_iter().map(|i| i.id).collect())
    }
}

async fn etcd() -> Server {
    let server = chi_test_support::etcd::Etcd::single().await;
    let endpoint = server.endpoint();
    let ep = endpoint.clone();
    Server {
        _server: Box::new(server),
        yaml: format!(
            "  registries:\n    etcd:\n      enabled: true\n      endpoints: [\"{endpoint}\"]\n      lease_ttl: \"{}s\"\n",
            LEASE_TTL.as_secs()
        ),
        bound: LEASE_TTL + SLACK,
        why: "lease_ttl",
        observer: Box::new(move || {
            let ep = ep.clone();
            Box::pin(async move {
                Observer {
                    registry: Box::new(
                        Etcd::connect(EtcdConfig {
                            endpoints: vec![ep],
                            request_timeout: Duration::from_secs(1),
                            ..EtcdConfig::default()
                        })
                        .await
                        .expect("connect to etcd"),
                    ),
                    filter: Filter::new(),
                }
            })
        }),
    }
}

/// A dev agent, ready (leader elected, node in the catalog).
async fn consul() -> Server {
    let server = chi_test_support::consul::ConsulAgent::start().await;
    let addr = server.addr();
    let a = addr.clone();
    Server {
        _server: Box::new(server),
        yaml: format!(
            "  registries:\n    consul:\n      enabled: true\n      address: \"{addr}\"\n"
        ),
        bound: CHECK_TTL + SLACK,
        why: "health_check.ttl (healthy-only discovery)",
        observer: Box::new(move || {
            let a = a.clone();
            Box::pin(async move {
                Observer {
                    registry: Box::new(
                        Consul::new(ConsulConfig {
                            address: a,
                            request_timeout: Duration::from_secs(1),
                            ..ConsulConfig::default()
                        })
                        .expect("consul config"),
                    ),
                    filter: Filter::new().healthy_only(),
                }
            })
        }),
    }
}

fn nacos() -> Server {
    let server = chi_test_support::nacos::NacosServer::start();
    let config = NacosConfig {
        timeout: Duration::from_secs(1),
        // The observer wants the server's answer as it is.
        push_empty_protection: false,
        ..server.config()
    };
    let http = server
        .addr()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    Server {
        _server: Box::new(server),
        yaml: format!(
            "  registries:\n    nacos:\n      enabled: true\n      server_configs:\n        - ip: \"127.0.0.1\"\n          port: {http}\n"
        ),
        bound: NACOS_INSTANCE_TIMEOUT + SLACK,
        why: "RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND",
        observer: Box::new(move || {
            let config = config.clone();
            Box::pin(async move {
                Observer {
                    registry: Box::new(Nacos::connect(config).await.expect("connect to rnacos")),
                    filter: Filter::new(),
                }
            })
        }),
    }
}

/// Polls until `id` is in discovery (`true`) or out of it (`false`); the time it took.
async fn until(
    obs: &Observer,
    service: &str,
    id: &str,
    present: bool,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if let Some(ids) = obs.ids(service).await
            && ids.iter().any(|i| i == id) == present
        {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(agent: &Agent, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &agent.proc.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

/// kill -9 of one agent, SIGTERM of another, against `server`.
async fn crash_and_stop(backend: &str, server: Server) {
    let _g = chi_test_support::heavy().await;
    let test_start = Instant::now();
    let obs = (server.observer)().await;
    let svc = format!("crash-{backend}");
    let extra = "    health_check:\n      ttl: \"3s\"\n";
    let config = |port: u16| format!("{}{}", registration(&svc, port, "v1", extra), server.yaml);

    // kill -9.
    let mut crashed = tokio::task::block_in_place(|| Agent::start(&config(19301), &[]));
    let id = format!("{svc}-127.0.0.1-19301");
    until(&obs, &svc, &id, true, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{backend}: {id} never showed up; agent said {:?}",
                crashed.proc.seen
            )
        });
    // Let at least one keep-alive go through, as in a process that ran for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&crashed, "-KILL");
    let gone = until(
        &obs,
        &svc,
        &id,
        false,
        server.bound + Duration::from_secs(20),
    )
    .await;
    let _ = crashed.proc.child.wait();
    let gone =
        gone.unwrap_or_else(|| panic!("{backend}: {id} still in discovery long after kill -9"));

    // SIGTERM.
    let mut stopped = tokio::task::block_in_place(|| Agent::start(&config(19302), &[]));
    let id2 = format!("{svc}-127.0.0.1-19302");
    until(&obs, &svc, &id2, true, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("{backend}: {id2} never showed up"));
    signal(&stopped, "-TERM");
    let left = until(&obs, &svc, &id2, false, Duration::from_secs(10)).await;
    let exited = stopped.proc.child.wait().expect("wait");
    let left =
        left.unwrap_or_else(|| panic!("{backend}: {id2} still registered 10 s after SIGTERM"));

    println!(
        "[reliability] agent crash on {backend}: kill -9 -> gone from discovery after {} ms \
         (bound {} ms = {} + {} ms slack); SIGTERM -> gone after {} ms (bound 1000 ms), exit {}; \
         test took {:.1} s",
        gone.as_millis(),
        server.bound.as_millis(),
        server.why,
        SLACK.as_millis(),
        left.as_millis(),
        exited,
        test_start.elapsed().as_secs_f64()
    );
    assert!(
        gone <= server.bound,
        "{backend}: kill -9 -> gone after {gone:?}, bound {:?} ({})",
        server.bound,
        server.why
    );
    assert!(
        left <= Duration::from_secs(1),
        "{backend}: SIGTERM -> gone after {left:?}, bound 1 s"
    );
    assert!(exited.success(), "{backend}: agent exit {exited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_and_sigterm_on_etcd() {
    crash_and_stop("etcd", etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_and_sigterm_on_consul() {
    crash_and_stop("consul", consul().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_and_sigterm_on_nacos() {
    crash_and_stop("nacos", nacos()).await;
}
