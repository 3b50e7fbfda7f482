//! The Consul adapter against a real Consul 1.8 dev agent (one agent per test, free ports).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::consul::{Consul, ConsulConfig, TlsConfig};
use chi_discovery::{
    Change, DiscoveryClient, Error, Filter, HealthCheck, HealthStatus, Instance, Liveness,
    Registry, RetryPolicy, Secret, ServiceConfig, ServiceManager,
};
use futures_util::StreamExt;

use chi_test_support::consul::ConsulAgent;
use chi_test_support::{eventually, free_port};

/// A service name no other test uses.
fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn consul_with(agent: &ConsulAgent, f: impl FnOnce(&mut ConsulConfig)) -> Consul {
    let mut cfg = ConsulConfig {
        address: agent.addr(),
        request_timeout: Duration::from_secs(2),
        ..ConsulConfig::default()
    };
    f(&mut cfg);
    Consul::new(cfg).expect("consul config")
}

fn consul(agent: &ConsulAgent) -> Consul {
    consul_with(agent, |_| {})
}

fn ids(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

async fn health_of(c: &Consul, service: &str, id: &str) -> Option<HealthStatus> {
    c.instances(service)
        .await
        .ok()?
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.health)
}

#[tokio::test]
async fn round_trip_with_tags_meta_and_filters() {
    let agent = ConsulAgent::start().await;
    let c = consul(&agent);
    // Spaces, `?`, `#`, `%` and non-ASCII must survive the URL path.
    let svc = unique("chi rt ü");
    let a = Instance::new(&svc, "127.0.0.1", 9001)
        .with_id("a 1?#%")
        .with_version("v1.2.0")
        .with_tag("v1")
        .with_tag("api")
        .with_meta("region", "us-east-1")
        .with_weight(5);
    let b = Instance::new(&svc, "127.0.0.2", 9002)
        .with_id("b")
        .with_tag("v2")
        .with_meta("region", "eu-west-1")
        .with_meta("odd-key", "x")
        .with_weight(0);
    c.register(&a).await.expect("register a");
    c.register(&b).await.expect("register b");

    let list = c.instances(&svc).await.expect("instances");
    assert_eq!(
        list,
        vec![
            a.clone().with_health(HealthStatus::Healthy),
            b.clone().with_health(HealthStatus::Healthy)
        ]
    );
    assert!(c.services().await.expect("services").contains(&svc));

    let only = |f: Filter| {
        let c = c.clone();
        let svc = svc.clone();
        async move {
            let list = c.instances_filtered(&svc, &f).await.expect("filtered");
            list.into_iter().map(|i| i.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(only(Filter::new().tag("v1")).await, vec!["a 1?#%"]);
    assert_eq!(
        only(Filter::new().tag("v1").tag("api")).await,
        vec!["a 1?#%"]
    );
    assert!(only(Filter::new().tag("v1").tag("v2")).await.is_empty());
    assert_eq!(
        only(Filter::new().meta("region", "eu-west-1")).await,
        vec!["b"]
    );
    // A key go-bexpr cannot select on is filtered on our side.
    assert_eq!(only(Filter::new().meta("odd-key", "x")).await, vec!["b"]);
    assert_eq!(
        only(Filter::new().healthy_only().tag("v2")).await,
        vec!["b"]
    );

    // Datacenter: the agent's own works, an unknown one is a clear error with Consul's words.
    let dc1 = consul_with(&agent, |c| c.datacenter = Some("dc1".into()));
    assert_eq!(dc1.instances(&svc).await.expect("dc1").len(), 2);
    let nowhere = consul_with(&agent, |c| c.datacenter = Some("nowhere".into()));
    let err = nowhere.instances(&svc).await.unwrap_err().to_string();
    assert!(
        err.contains("500") && err.contains("No path to datacenter"),
        "{err}"
    );

    c.deregister(&svc, "a 1?#%").await.expect("deregister");
    c.deregister(&svc, "never-registered")
        .await
        .expect("unknown id is fine");
    assert_eq!(ids(&c.instances(&svc).await.expect("instances")), vec!["b"]);
    assert!(
        c.instances(&unique("nobody"))
            .await
            .expect("unknown service")
            .is_empty()
    );
}

#[tokio::test]
async fn ttl_check_that_stops_passing_turns_critical_and_leaves_healthy_only() {
    let agent = ConsulAgent::start().await;
    let c = consul_with(&agent, |c| c.check_ttl = Duration::from_secs(1));
    let svc = unique("chi-ttl");
    let inst = Instance::new(&svc, "127.0.0.1", 9010).with_id("ttl-1");
    c.register(&inst).await.expect("register");
    assert_eq!(
        c.keep_alive(&inst, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(100),
            ..CacheConfig::default()
        })
        .build(Arc::new(c.clone()));
    let healthy = Filter::new().healthy_only();
    assert_eq!(
        ids(&client
            .discover_with_filter(&svc, &healthy)
            .await
            .expect("discover")),
        vec!["ttl-1"]
    );

    // No more keep-alives: the TTL runs out and the check goes critical.
    let took = eventually(Duration::from_secs(10), || async {
        health_of(&c, &svc, "ttl-1").await == Some(HealthStatus::Unhealthy)
    })
    .await
    .expect("the instance turns critical once its TTL runs out");
    eprintln!("consul: TTL 1 s ran out, instance critical after {took:?}");
    assert!(
        c.instances_filtered(&svc, &healthy)
            .await
            .expect("passing")
            .is_empty()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            client
                .discover_with_filter(&svc, &healthy)
                .await
                .is_ok_and(|l| l.is_empty())
        })
        .await
        .is_some(),
        "the discovery client's healthy_only list must drop the critical instance"
    );
    // Still discoverable without the filter, as unhealthy.
    assert_eq!(
        client.discover(&svc).await.expect("discover")[0].health,
        HealthStatus::Unhealthy
    );

    // A keep-alive brings it back; chi reporting unhealthy fails the check at once.
    c.keep_alive(&inst, HealthStatus::Healthy)
        .await
        .expect("keep alive");
    assert_eq!(
        health_of(&c, &svc, "ttl-1").await,
        Some(HealthStatus::Healthy)
    );
    c.keep_alive(&inst, HealthStatus::Unhealthy)
        .await
        .expect("keep alive");
    assert_eq!(
        health_of(&c, &svc, "ttl-1").await,
        Some(HealthStatus::Unhealthy)
    );

    // The agent never heard of this one: register it again.
    let stranger = Instance::new(&svc, "127.0.0.1", 9011).with_id("stranger");
    assert_eq!(
        c.keep_alive(&stranger, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Lost
    );
}

#[tokio::test]
async fn active_checks_run_on_the_agent_and_survive_re_registration() {
    let agent = ConsulAgent::start().await;
    let c = consul(&agent);
    let svc = unique("chi-checks");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let open = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    let closed = free_port();
    let every = |h: HealthCheck| {
        h.every(Duration::from_secs(1))
            .timeout(Duration::from_secs(1))
    };

    let tcp = Instance::new(&svc, "127.0.0.1", open).with_id("tcp");
    let http = Instance::new(&svc, "127.0.0.1", closed).with_id("http");
    let grpc = Instance::new(&svc, "127.0.0.1", closed).with_id("grpc");
    c.register_with_checks(&tcp, &[every(HealthCheck::tcp())])
        .await
        .expect("register tcp");
    c.register_with_checks(&http, &[every(HealthCheck::http("/health"))])
        .await
        .expect("register http");
    c.register_with_checks(&grpc, &[every(HealthCheck::grpc("pkg.Health"))])
        .await
        .expect("register grpc");

    let took = eventually(Duration::from_secs(10), || async {
        health_of(&c, &svc, "tcp").await == Some(HealthStatus::Healthy)
            && health_of(&c, &svc, "http").await == Some(HealthStatus::Unhealthy)
            && health_of(&c, &svc, "grpc").await == Some(HealthStatus::Unhealthy)
    })
    .await
    .expect("TCP check to a listener passes, HTTP and gRPC checks to a closed port fail");
    eprintln!("consul: agent-run checks settled after {took:?}");

    // A plain re-register (what the ServiceManager does after a loss) keeps the checks.
    c.register(&tcp).await.expect("re-register");
    let checks: HashMap<String, serde_json::Value> =
        reqwest::get(format!("{}/v1/agent/checks", agent.url()))
            .await
            .expect("agent checks")
            .json()
            .await
            .expect("json");
    let tcp_check = &checks["chi:tcp:0"];
    assert_eq!(tcp_check["ServiceID"], "tcp");
    assert_eq!(tcp_check["Type"], "tcp");
    assert_eq!(checks["chi:grpc:0"]["Type"], "grpc");
    assert_eq!(checks["chi:http:0"]["Type"], "http");
    assert!(checks.contains_key("chi:tcp:ttl"));
}

#[tokio::test]
async fn deregister_critical_service_after_removes_the_instance() {
    // Consul 1.8 clamps DeregisterCriticalServiceAfter to at least 1 minute (the agent logs
    // "check has deregister interval below minimum") and reaps every 30 s, so the instance goes
    // 60–90 s after its check turned critical. This test is the one slow test of the module.
    let agent = ConsulAgent::start().await;
    let c = consul_with(&agent, |c| {
        c.check_ttl = Duration::from_secs(1);
        c.deregister_critical_after = Some(Duration::from_secs(1));
    });
    let svc = unique("chi-reap");
    let inst = Instance::new(&svc, "127.0.0.1", 9020).with_id("reap-1");
    c.register(&inst).await.expect("register");
    let start = Instant::now();
    eventually(Duration::from_secs(10), || async {
        health_of(&c, &svc, "reap-1").await == Some(HealthStatus::Unhealthy)
    })
    .await
    .expect("critical once the TTL runs out");
    let critical_at = start.elapsed();
    let gone = eventually(Duration::from_secs(120), || async {
        c.instances(&svc).await.is_ok_and(|l| l.is_empty())
    })
    .await;
    let total = start.elapsed();
    eprintln!(
        "consul: critical after {critical_at:?}, reaped {total:?} after registration ({:?} after critical)",
        total.saturating_sub(critical_at)
    );
    assert!(
        gone.is_some(),
        "Consul did not deregister the critical instance within 120 s"
    );
    assert!(
        total >= Duration::from_secs(60),
        "reaped before Consul's 1-minute minimum: {total:?}"
    );
    assert_eq!(
        c.keep_alive(&inst, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Lost
    );
}

/// The next change on `w`, and how long it took from `since`.
async fn next_change(
    w: &mut chi_discovery::registry::WatchStream,
    since: Instant,
) -> (Change, Duration) {
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(c))) => (c, since.elapsed()),
        other => panic!("no change within 5 s: {other:?}"),
    }
}

#[tokio::test]
async fn blocking_query_watch_sees_add_update_remove_within_100ms() {
    let agent = ConsulAgent::start().await;
    let writer = consul(&agent);
    let reader = consul(&agent);
    let svc = unique("chi-watch");
    let mut w = reader.watch(&svc).await.expect("watch");
    let (first, _) = next_change(&mut w, Instant::now()).await;
    assert_eq!(first, Change::Reset(vec![]));

    let mut worst = Duration::ZERO;
    let mut samples = Vec::new();
    for round in 0..5 {
        let inst = Instance::new(&svc, "127.0.0.1", 9100 + round)
            .with_id(format!("w-{round}"))
            .with_tag("t");
        let expect = inst.clone().with_health(HealthStatus::Healthy);

        let t = Instant::now();
        writer.register(&inst).await.expect("register");
        let (c, add) = next_change(&mut w, t).await;
        assert_eq!(c, Change::Add(expect.clone()));

        let t = Instant::now();
        writer
            .register(&inst.clone().with_weight(7))
            .await
            .expect("re-register");
        let (c, update) = next_change(&mut w, t).await;
        assert_eq!(c, Change::Update(expect.clone().with_weight(7)));

        let t = Instant::now();
        writer
            .keep_alive(&inst, HealthStatus::Unhealthy)
            .await
            .expect("fail the TTL");
        let (c, health) = next_change(&mut w, t).await;
        assert_eq!(
            c,
            Change::Update(
                expect
                    .clone()
                    .with_weight(7)
                    .with_health(HealthStatus::Unhealthy)
            )
        );

        let t = Instant::now();
        writer.deregister(&svc, &inst.id).await.expect("deregister");
        let (c, remove) = next_change(&mut w, t).await;
        assert!(matches!(&c, Change::Remove(i) if i.id == inst.id), "{c:?}");

        samples.push([add, update, health, remove]);
        worst = worst.max(add).max(update).max(health).max(remove);
    }
    eprintln!("consul: watch latency add/update/health/remove per round: {samples:?}");
    assert!(
        worst < Duration::from_millis(100),
        "slowest change took {worst:?}: {samples:?}"
    );
}

#[tokio::test]
async fn agent_restart_serves_stale_then_re_registers_and_resumes_the_watch() {
    let mut agent = ConsulAgent::start().await;
    let reg = consul_with(&agent, |c| {
        c.check_ttl = Duration::from_secs(3);
        c.request_timeout = Duration::from_millis(500);
    });
    let svc = unique("chi-restart");
    let manager = ServiceManager::new(Arc::new(reg.clone()))
        .with_interval(Duration::from_millis(200))
        .with_retry(RetryPolicy {
            max_attempts: 1,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(300),
            multiplier: 2.0,
        });
    let report = manager
        .register(ServiceConfig::new(&svc, "127.0.0.1", 9200))
        .await
        .expect("register");
    assert!(report.is_complete());
    let id = report.id.clone();

    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(100),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .retry(RetryPolicy {
            max_attempts: 1,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(300),
            multiplier: 2.0,
        })
        .request_timeout(Duration::from_secs(1))
        .build(Arc::new(reg.clone()));
    assert_eq!(
        ids(&client.discover(&svc).await.expect("discover")),
        vec![id.as_str()]
    );
    let mut watcher = client.watch(&svc).await.expect("watch");
    match watcher.next().await {
        Some(Ok(Change::Reset(l))) => assert_eq!(ids(&l), vec![id.as_str()]),
        other => panic!("expected the first Reset, got {other:?}"),
    }

    agent.kill();
    let stale = eventually(Duration::from_secs(10), || async {
        client
            .cached(&svc)
            .is_some_and(|s| s.is_stale() && s.len() == 1)
    })
    .await
    .expect("the client marks its list stale once the agent is gone");
    eprintln!("consul: agent killed, list stale after {stale:?}");
    // The watch reports the outage in line...
    let err = match tokio::time::timeout(Duration::from_secs(5), watcher.next()).await {
        Ok(Some(Err(e))) => e,
        Ok(Some(Ok(c))) => panic!("no change expected while the agent is down: {c:?}"),
        other => panic!("expected an error item, got {other:?}"),
    };
    assert!(err.is_transient(), "{err}");
    // ...and discovery keeps serving the last good list.
    let snap = client
        .discover(&svc)
        .await
        .expect("stale list, not an error");
    assert!(snap.is_stale());
    assert_eq!(ids(&snap), vec![id.as_str()]);
    // Direct calls fail clearly.
    assert!(matches!(
        reg.instances(&svc).await,
        Err(Error::Unavailable { .. } | Error::Timeout { .. })
    ));

    let down_at = Instant::now();
    agent.restart().await;
    let back = eventually(Duration::from_secs(20), || async {
        reg.instances(&svc)
            .await
            .is_ok_and(|l| ids(&l) == vec![id.as_str()])
    })
    .await
    .expect("the manager registers the instance again on the fresh agent");
    eprintln!(
        "consul: agent restarted ({:?} after the kill), instance back {back:?} after it was ready",
        down_at.elapsed()
    );
    // The manager records the outcome once its whole keep-alive round is done, a moment after
    // the agent shows the instance.
    let counted = eventually(Duration::from_secs(5), || async {
        manager.status()[0].backends[0].reregistrations >= 1
    })
    .await;
    assert!(counted.is_some(), "{:?}", manager.status());

    // The watch resumes: a Reset after the error, then whatever it takes to hold the instance.
    let mut view: HashMap<String, Instance> = HashMap::new();
    let mut saw_reset = false;
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = watcher.next().await {
            match item {
                Ok(c) => {
                    saw_reset |= matches!(c, Change::Reset(_));
                    c.apply(&mut view);
                    if saw_reset && view.contains_key(&id) {
                        return true;
                    }
                }
                Err(_) => continue,
            }
        }
        false
    })
    .await;
    assert_eq!(resumed, Ok(true), "watch did not resume; view {view:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            client
                .cached(&svc)
                .is_some_and(|s| !s.is_stale() && s.len() == 1)
        })
        .await
        .is_some(),
        "the cached list is fresh again"
    );
    manager.shutdown().await;
    // Within `check_ttl` of the agent's return an empty answer is not believed yet (a restarted
    // agent says "none" until its registrants are back); after that it is.
    assert!(
        eventually(Duration::from_secs(5), || async {
            reg.instances(&svc).await.is_ok_and(|l| l.is_empty())
        })
        .await
        .is_some(),
        "shutdown deregisters"
    );
}

// The logs of a wrong and a right token are captured and searched by
// `secrets::consul_token_never_prints_through_config_and_env` (one process-wide subscriber: a
// thread-local one here made callsite interest depend on which test ran first).
#[tokio::test]
async fn acl_default_deny_needs_the_right_token_and_never_leaks_it() {
    const MASTER: &str = "4b1d5e7a-master-token-c0ffee";
    const WRONG: &str = "9f00d-wrong-token-bad";
    let agent = ConsulAgent::start_with_acl(MASTER).await;
    let svc = unique("chi-acl");
    let inst = Instance::new(&svc, "127.0.0.1", 9300).with_id("acl-1");
    let mut errors: Vec<String> = Vec::new();

    let anonymous = consul(&agent);
    let err = anonymous.register(&inst).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("403") && text.contains("Permission denied") && text.contains("no ACL token"),
        "{text}"
    );
    errors.push(text);

    let wrong = consul_with(&agent, |c| c.token = Secret::new(WRONG));
    for err in [
        wrong.register(&inst).await.unwrap_err(),
        wrong.instances(&svc).await.unwrap_err(),
        wrong.watch(&svc).await.err().expect("watch refused"),
        wrong
            .keep_alive(&inst, HealthStatus::Healthy)
            .await
            .unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("403") && text.contains("ACL not found") && text.contains("refused"),
            "{text}"
        );
        assert!(!err.is_transient() || matches!(err, Error::Registry { .. }));
        errors.push(text);
        errors.push(format!("{err:?}"));
    }
    // The manager and the discovery client fail with the same refusal.
    let manager = ServiceManager::new(Arc::new(wrong.clone()));
    assert!(manager.register_instance(inst.clone()).await.is_err());
    manager.shutdown().await;
    let client = DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .build(Arc::new(wrong.clone()));
    errors.push(client.discover(&svc).await.unwrap_err().to_string());

    let right = consul_with(&agent, |c| c.token = Secret::new(MASTER));
    right
        .register(&inst)
        .await
        .expect("the master token may register");
    assert_eq!(
        right
            .keep_alive(&inst, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    assert_eq!(
        ids(&right.instances(&svc).await.expect("instances")),
        vec!["acl-1"]
    );
    let mut w = right.watch(&svc).await.expect("watch");
    assert!(matches!(w.next().await, Some(Ok(Change::Reset(l))) if l.len() == 1));
    // Consul 1.8 filters reads by ACL silently: without a token the service just is not there.
    assert!(
        anonymous
            .instances(&svc)
            .await
            .expect("filtered read")
            .is_empty()
    );
    right.deregister(&svc, "acl-1").await.expect("deregister");

    errors.push(format!("{right:?} {wrong:?}"));
    for token in [MASTER, WRONG] {
        for e in &errors {
            assert!(!e.contains(token), "token leaked into an error: {e}");
        }
    }
}

#[tokio::test]
async fn unreachable_agent_is_a_clear_transient_error() {
    let port = free_port();
    let c = Consul::new(ConsulConfig {
        address: format!("127.0.0.1:{port}"),
        token: Secret::new("never-shown"),
        request_timeout: Duration::from_secs(1),
        ..ConsulConfig::default()
    })
    .expect("config");
    let svc = unique("chi-down");
    let err = c.instances(&svc).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("/v1/health/service/") && !text.contains("never-shown"),
        "{text}"
    );
    assert!(c.watch(&svc).await.is_err());
    assert!(
        c.register(&Instance::new(&svc, "127.0.0.1", 1))
            .await
            .is_err()
    );
}

/// A fake Consul whose blocking queries misbehave: they answer at once with the same index, with
/// index 0, or with an index that keeps going backwards; and one answer that is too big.
async fn misbehaving_consul() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    use axum::extract::Path;
    use axum::response::IntoResponse;

    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v1/health/service/{name}",
        axum::routing::get(move |Path(name): Path<String>| {
            let counter = counter.clone();
            async move {
                let n = {
                    let mut h = counter.lock().expect("hits");
                    let n = h.entry(name.clone()).or_default();
                    *n += 1;
                    *n
                };
                let index = match name.as_str() {
                    "same" => 5,
                    "zero" => 0,
                    _ => 1_000_000 - n,
                };
                let body = if name == "big" {
                    " ".repeat(33 << 20)
                } else {
                    "[]".to_owned()
                };
                ([("X-Consul-Index", index.to_string())], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr.to_string(), hits)
}

#[tokio::test]
async fn misbehaving_blocking_queries_cannot_drive_a_tight_loop() {
    let (addr, hits) = misbehaving_consul().await;
    let c = Consul::new(ConsulConfig {
        address: addr,
        wait: Duration::from_secs(10),
        ..ConsulConfig::default()
    })
    .expect("config");
    let mut watches = Vec::new();
    for name in ["same", "zero", "backwards"] {
        let mut w = c.watch(name).await.expect("watch");
        assert_eq!(
            w.next().await.expect("first").expect("reset"),
            Change::Reset(vec![])
        );
        watches.push(tokio::spawn(async move {
            // Nothing ever changes: polling only drives the query loop.
            let _ = tokio::time::timeout(Duration::from_secs(2), w.next()).await;
        }));
    }
    for w in watches {
        w.await.expect("poller");
    }
    let hits = hits.lock().expect("hits").clone();
    eprintln!("consul: requests in 2 s to a misbehaving server: {hits:?}");
    for name in ["same", "zero", "backwards"] {
        // Backing off from 50 ms (doubling, ±25 % jitter) allows about 7 in 2 s; a tight loop
        // would make thousands.
        assert!(hits[name] <= 20, "{name}: {} requests in 2 s", hits[name]);
    }

    let err = c.instances("big").await.unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
}

#[tokio::test]
async fn tls_with_the_agents_ca_and_a_client_certificate() {
    let agent = ConsulAgent::start_with_tls().await;
    let port = agent.https_port.expect("https port");
    let dir = agent.tls_dir();
    let tls = TlsConfig {
        ca_file: Some(dir.join("consul-agent-ca.pem")),
        cert_file: Some(dir.join("dc1-client-consul-0.pem")),
        key_file: Some(dir.join("dc1-client-consul-0-key.pem")),
        insecure_skip_verify: false,
    };
    let over = |tls: TlsConfig| {
        Consul::new(ConsulConfig {
            // No scheme: `tls` makes it https.
            address: format!("127.0.0.1:{port}"),
            request_timeout: Duration::from_secs(2),
            tls: Some(tls),
            ..ConsulConfig::default()
        })
        .expect("config")
    };
    let svc = unique("chi-tls");
    let c = over(tls.clone());
    let inst = Instance::new(&svc, "127.0.0.1", 9400).with_id("tls-1");
    c.register(&inst).await.expect("register over TLS");
    assert_eq!(
        ids(&c.instances(&svc).await.expect("instances")),
        vec!["tls-1"]
    );

    // Without the agent's CA its certificate is not trusted.
    let err = over(TlsConfig {
        ca_file: None,
        ..tls.clone()
    })
    .instances(&svc)
    .await
    .unwrap_err()
    .to_string();
    eprintln!("consul: TLS without the CA: {err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Without a client certificate the agent (verify_incoming_https) refuses us.
    let no_client = over(TlsConfig {
        cert_file: None,
        key_file: None,
        ..tls.clone()
    });
    let err = no_client.instances(&svc).await.unwrap_err();
    eprintln!("consul: TLS without a client certificate: {err}");
    assert!(err.to_string().contains("BadCertificate"), "{err}");
    // A key without its certificate is a config error, before any connection.
    let err = Consul::new(ConsulConfig {
        tls: Some(TlsConfig {
            cert_file: None,
            ..tls
        }),
        ..ConsulConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("service_discovery.registries.consul.tls"),
        "{err}"
    );
}
