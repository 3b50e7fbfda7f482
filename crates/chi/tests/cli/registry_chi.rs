//! The library's `chi://` adapter (`chi_discovery::registry::chi`) against a real `chi agent`
//! process: what a program linking the library sees when it registers and discovers through a
//! running agent, alone, from a config file, or beside another registry; a watch across an agent
//! restart, and an agent back empty (its empty lists held for the grace); and hostile names
//! (docs/DESIGN.md §9), which must fare exactly as they do in the agent's own embedded registry.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chi_discovery::config::{Config, Registries};
use chi_discovery::registry::{Memory, chi};
use chi_discovery::{
    Change, DiscoveryClient, Error, HealthStatus, Instance, Liveness, Registry, RetryPolicy,
    ServiceConfig, ServiceManager,
};
use futures_util::StreamExt;

use crate::support::{Agent, discover_json, ids, registration};

/// The library's client of `host`.
fn client(host: &Agent) -> chi::Agent {
    chi::Agent::new(chi::AgentConfig::new(host.admin.clone())).expect("client")
}

/// The instance `id` of `service` as the agent has it.
async fn find(registry: &dyn Registry, service: &str, id: &str) -> Option<Instance> {
    let list = registry.instances(service).await.expect("instances");
    list.into_iter().find(|i| i.id == id)
}

fn sorted(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

/// The next item of a watch, within 20 s.
async fn next(watch: &mut chi_discovery::registry::WatchStream) -> chi_discovery::Result<Change> {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("a watch item within 20 s")
        .expect("the watch goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_registers_and_discovers_through_a_running_agent() {
    let host = Agent::start(&registration("inventory", 19061, "v1", ""), &[]);
    let agent = client(&host);
    assert_eq!(agent.backend(), "chi");

    // Every field travels.
    let mine = Instance::new("inventory", "127.0.0.1", 19062)
        .with_id("inventory-lib")
        .with_version("v2")
        .with_tag("lib")
        .with_meta("zone", "us-east-1a")
        .with_weight(7);
    agent.register(&mine).await.expect("register");
    let got = find(&agent, "inventory", "inventory-lib")
        .await
        .expect("registered");
    assert_eq!(got, mine.clone().with_health(got.health));
    assert!(
        agent
            .services()
            .await
            .expect("services")
            .contains(&"inventory".to_owned())
    );
    // The binary sees what the library registered, and the other way round.
    assert_eq!(
        ids(&discover_json(&host.url(), "inventory", &[])),
        ["inventory-127.0.0.1-19061", "inventory-lib"]
    );

    // A keep-alive carries the health; once deregistered, it answers lost.
    let alive = agent.keep_alive(&mine, HealthStatus::Unhealthy).await;
    assert_eq!(alive.expect("keep-alive"), Liveness::Alive);
    let got = find(&agent, "inventory", "inventory-lib").await;
    assert_eq!(got.map(|i| i.health), Some(HealthStatus::Unhealthy));
    agent
        .deregister("inventory", "inventory-lib")
        .await
        .expect("deregister");
    assert_eq!(find(&agent, "inventory", "inventory-lib").await, None);
    let lost = agent.keep_alive(&mine, HealthStatus::Healthy).await;
    assert_eq!(lost.expect("keep-alive"), Liveness::Lost);

    // From a config file, beside the process's own embedded registry: a multi-registry that
    // writes to both, whose manager deregisters from both on shutdown.
    let yaml = format!(
        "service_discovery:\n  registries:\n    chi:\n      enabled: true\n      address: \"{}\"\n    memory:\n      enabled: true\n",
        host.admin
    );
    let config = Config::from_yaml(&yaml).expect("config");
    assert_eq!(config.registries.enabled(), ["chi", "memory"]);
    let both = config.registries.connect().await.expect("connect");
    let members: Vec<&str> = both
        .members()
        .expect("a multi-registry")
        .iter()
        .map(|m| m.backend())
        .collect();
    assert_eq!(members, ["chi", "memory"]);
    let manager = ServiceManager::new(both.clone());
    let report = manager
        .register(ServiceConfig::new("inventory", "127.0.0.1", 19063))
        .await
        .expect("register");
    assert!(report.is_complete(), "{:?}", report.results);

    // From a URL, as the CLI's --registry: discovery through the agent.
    let by_url = Registries::from_url(&host.url(), &|_: &str| None)
        .expect("chi://")
        .connect()
        .await
        .expect("connect");
    assert_eq!(by_url.backend(), "chi");
    let discovery = DiscoveryClient::new(by_url.clone());
    let seen = discovery.discover("inventory").await.expect("discover");
    assert_eq!(
        sorted(seen.instances()),
        ["inventory-127.0.0.1-19061", "inventory-127.0.0.1-19063"]
    );

    manager.shutdown().await;
    assert_eq!(
        sorted(&by_url.instances("inventory").await.expect("instances")),
        ["inventory-127.0.0.1-19061"]
    );
}

/// The agent goes and comes back on the same address: the watch says so once, in line, and
/// resyncs with a reset of what the new agent holds; a manager registering through the agent
/// finds its registration lost and makes it again, and the watch sees it come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resets_after_the_agent_restarts() {
    let mut host = Agent::start(&registration("ledger", 19071, "v1", ""), &[]);
    let admin = host.admin.clone();
    let agent = Arc::new(client(&host));
    let quick = RetryPolicy {
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    let manager = ServiceManager::new(agent.clone()).with_retry(quick);
    let report = manager
        .register(ServiceConfig::new("ledger", "127.0.0.1", 19073))
        .await
        .expect("register");
    assert!(report.is_complete(), "{:?}", report.results);

    let mut watch = agent.watch("ledger").await.expect("watch");
    match next(&mut watch).await {
        Ok(Change::Reset(list)) => assert_eq!(
            sorted(&list),
            ["ledger-127.0.0.1-19071", "ledger-127.0.0.1-19073"]
        ),
        other => panic!("expected the first reset, got {other:?}"),
    }

    // The agent deregisters its own instance and goes (the removal may or may not arrive
    // first); the break is one error in the stream.
    let (ok, _) = host.proc.terminate();
    assert!(ok, "the agent exits 0 on SIGTERM");
    loop {
        match next(&mut watch).await {
            Ok(Change::Remove(i)) => assert_eq!(i.id, "ledger-127.0.0.1-19071"),
            // A keep-alive that changed the manager's instance's health.
            Ok(Change::Update(i)) => assert_eq!(i.id, "ledger-127.0.0.1-19073"),
            Ok(other) => panic!("expected the agent's removal or an error, got {other:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Unavailable { .. }), "{e}");
                break;
            }
        }
    }

    let _back = Agent::start_on(&admin, &registration("ledger", 19072, "v2", ""), &[]);
    // The next item is the reset: no second error while the watch waited to reopen.
    let mut view: HashMap<String, Instance> = HashMap::new();
    match next(&mut watch).await {
        Ok(Change::Reset(list)) => {
            let ids = sorted(&list);
            assert!(
                ids.contains(&"ledger-127.0.0.1-19072".to_owned()),
                "{ids:?}"
            );
            assert!(
                !ids.contains(&"ledger-127.0.0.1-19071".to_owned()),
                "{ids:?}"
            );
            Change::Reset(list).apply(&mut view);
        }
        other => panic!("expected a reset after the restart, got {other:?}"),
    }
    // The manager's instance comes back (lost, then registered again), in this reset or after.
    while !view.contains_key("ledger-127.0.0.1-19073") {
        next(&mut watch).await.expect("a change").apply(&mut view);
    }
    let mut ids: Vec<&String> = view.keys().collect();
    ids.sort();
    assert_eq!(ids, ["ledger-127.0.0.1-19072", "ledger-127.0.0.1-19073"]);
    manager.shutdown().await;
}

/// An agent on its embedded registry restarted comes back without the registrations it held.
/// Its empty list for a service that had instances is not believed for the adapter's grace (a
/// read fails, so the caller keeps its last list; the watch sends no empty reset), an instance
/// registered again is believed at once, and after the grace the empty list is believed
/// (services do scale to zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_empty_is_not_believed_for_the_grace() {
    let mut host = Agent::start(&registration("ledger-host", 19081, "v1", ""), &[]);
    let admin = host.admin.clone();
    let agent = client(&host);
    let mine = Instance::new("ledger", "127.0.0.1", 19083).with_id("ledger-lib");
    agent.register(&mine).await.expect("register");
    let list = agent.instances("ledger").await.expect("instances");
    assert_eq!(sorted(&list), ["ledger-lib"]);
    let mut watch = agent.watch("ledger").await.expect("watch");
    match next(&mut watch).await {
        Ok(Change::Reset(list)) => assert_eq!(sorted(&list), ["ledger-lib"]),
        other => panic!("expected the first reset, got {other:?}"),
    }

    let (ok, _) = host.proc.terminate();
    assert!(ok, "the agent exits 0 on SIGTERM");
    match next(&mut watch).await {
        Err(e) => assert!(matches!(e, Error::Unavailable { .. }), "{e}"),
        Ok(other) => panic!("expected the break as an error, got {other:?}"),
    }

    // Every answer of the new agent comes after this instant, so its grace ends after
    // `restarted + EMPTY_GRACE`.
    let restarted = tokio::time::Instant::now();
    let _back = Agent::start_on(&admin, &registration("ledger-host", 19082, "v1", ""), &[]);
    let e = agent
        .instances("ledger")
        .await
        .expect_err("an empty list from an agent back from a failure is not believed yet");
    assert!(
        matches!(&e, Error::Unavailable { .. }) && e.to_string().contains("not believed"),
        "{e}"
    );

    // Registered again: the watch's next item is the reset with it, no empty one before it.
    agent.register(&mine).await.expect("register again");
    match next(&mut watch).await {
        Ok(Change::Reset(list)) => assert_eq!(sorted(&list), ["ledger-lib"]),
        other => panic!("expected a reset with the instance back, got {other:?}"),
    }

    // Really gone: the removal is believed at once, and an empty read once the grace is over.
    agent
        .deregister("ledger", "ledger-lib")
        .await
        .expect("deregister");
    match next(&mut watch).await {
        Ok(Change::Remove(i)) => assert_eq!(i.id, "ledger-lib"),
        other => panic!("expected the removal, got {other:?}"),
    }
    let deadline = restarted + chi::EMPTY_GRACE + Duration::from_secs(10);
    loop {
        match agent.instances("ledger").await {
            Ok(list) => {
                assert!(list.is_empty(), "{list:?}");
                let after = restarted.elapsed();
                assert!(
                    after >= chi::EMPTY_GRACE,
                    "the empty list was believed {after:?} after the restart, within the grace"
                );
                println!(
                    "[reliability] chi agent back empty: the empty list believed {:.2} s after the restart began (grace {} s)",
                    after.as_secs_f64(),
                    chi::EMPTY_GRACE.as_secs()
                );
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("not believed"), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the empty list is still not believed, long after the grace: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one hostile case did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Registered, listed unchanged, in its watch's reset, and deregistered alone.
    RoundTrip,
    /// Refused with `Error::Invalid` naming the field.
    Refused(&'static str),
}

async fn run_case(registry: &dyn Registry, instance: &Instance) -> Result<Outcome, String> {
    if let Err(e) = registry.register(instance).await {
        return match e {
            Error::Invalid { what, .. } => Ok(Outcome::Refused(what)),
            other => Err(format!("refused without naming the field: {other}")),
        };
    }
    let service = instance.name.as_str();
    let neighbour = Instance::new(service, "127.0.0.1", 1)
        .with_id("neighbour")
        .with_health(instance.health);
    registry
        .register(&neighbour)
        .await
        .map_err(|e| e.to_string())?;
    let got = registry
        .instances(service)
        .await
        .map_err(|e| e.to_string())?;
    let found = got.iter().find(|i| i.id == instance.id);
    if found != Some(instance) {
        return Err(format!(
            "sent {:.300}, got {:.300}",
            format!("{instance:?}"),
            format!("{found:?}")
        ));
    }
    let mut watch = registry.watch(service).await.map_err(|e| e.to_string())?;
    match watch.next().await {
        Some(Ok(Change::Reset(list))) if list.contains(instance) => {}
        other => {
            return Err(format!(
                "the watch began with {:.300}",
                format!("{other:?}")
            ));
        }
    }
    registry
        .deregister(service, &instance.id)
        .await
        .map_err(|e| e.to_string())?;
    let left = registry
        .instances(service)
        .await
        .map_err(|e| e.to_string())?;
    if sorted(&left) != ["neighbour"] {
        return Err(format!("deregistering it left {:?}", sorted(&left)));
    }
    registry
        .deregister(service, "neighbour")
        .await
        .map_err(|e| e.to_string())?;
    Ok(Outcome::RoundTrip)
}

/// Every hostile value in every field, through a real agent and through an embedded registry in
/// this process: the same outcome, and only ever a round trip or a refusal naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_fare_as_in_the_agents_own_registry() {
    let host = Agent::start(&registration("names-host", 19081, "v1", ""), &[]);
    let agent = client(&host);
    let memory = Memory::new();
    let values = [
        "a/b",
        "..",
        "../../etc",
        "",
        " ",
        "with space",
        "ünï-名前-🚀",
        "web?x",
        "web#x",
        "web%2Fx",
        "web%x",
        "a;b=c",
        "svc?a=1#frag %",
        "line\nbreak",
        &"x".repeat(10 * 1024),
    ];
    let mut round_trips = BTreeSet::new();
    let mut refused = 0;
    for (n, value) in values.iter().enumerate() {
        for field in [
            "service name",
            "instance id",
            "tag",
            "meta key",
            "meta value",
        ] {
            let service = format!("names-{n}");
            let mut i = Instance::new(service.clone(), "127.0.0.1", 9000)
                .with_id(format!("{service}-i"))
                .with_health(HealthStatus::Healthy);
            match field {
                "service name" => i.name = (*value).to_owned(),
                "instance id" => i.id = (*value).to_owned(),
                "tag" => i.tags.push((*value).to_owned()),
                "meta key" => {
                    i.meta.insert((*value).to_owned(), "v".into());
                }
                _ => {
                    i.meta.insert("hostile".into(), (*value).to_owned());
                }
            }
            let shown = format!("{field} {:.40?}", value);
            let over_chi = run_case(&agent, &i)
                .await
                .unwrap_or_else(|e| panic!("{shown}: {e}"));
            let in_memory = run_case(&memory, &i)
                .await
                .unwrap_or_else(|e| panic!("{shown}: {e}"));
            assert_eq!(over_chi, in_memory, "{shown}");
            match over_chi {
                Outcome::RoundTrip => {
                    round_trips.insert(i.name.clone());
                }
                Outcome::Refused(what) => {
                    assert_eq!(what, field, "{shown}");
                    refused += 1;
                }
            }
        }
    }
    // Both kinds happened: URL characters round-trip, escapes are refused.
    assert!(round_trips.contains("svc?a=1#frag %"), "{round_trips:?}");
    assert!(refused >= 10, "{refused}");
    // Nothing refused reached the agent: it lists its own service and the round trips' alone
    // (each deregistered, so none has instances left).
    let services = agent.services().await.expect("services");
    assert_eq!(services, ["names-host"]);
}
