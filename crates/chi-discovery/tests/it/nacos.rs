//! The Nacos adapter against a real Nacos-protocol server (rnacos 0.8.8), one server per test.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::Registry;
use chi_discovery::registry::nacos::{Nacos, NacosConfig};
use chi_discovery::{
    Change, DiscoveryClient, Error, Filter, HealthStatus, Instance, Secret, ServiceManager,
};
use futures_util::StreamExt;

use chi_test_support::eventually;
use chi_test_support::nacos::{INSTANCE_TIMEOUT, NacosServer};

/// A service name no other test uses.
fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(cfg: NacosConfig) -> Nacos {
    Nacos::connect(cfg).await.expect("connect to rnacos")
}

/// The next change of a watch, within `timeout`.
async fn next_change(w: &mut chi_discovery::registry::WatchStream, timeout: Duration) -> Change {
    match tokio::time::timeout(timeout, w.next()).await {
        Ok(Some(Ok(c))) => c,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no change within {timeout:?}"),
    }
}

/// Waits for `expected`, passing over intermediate `Update`s (a server may apply weight and
/// metadata in two steps and push both).
async fn expect_change(
    w: &mut chi_discovery::registry::WatchStream,
    timeout: Duration,
    expected: Change,
) {
    loop {
        match next_change(w, timeout).await {
            c if c == expected => return,
            Change::Update(u) => {
                eprintln!("passing over {u:?}");
                continue;
            }
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
}

fn ids(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_metadata_filters_and_namespaces() {
    let server = NacosServer::start();
    let svc = unique("rt");
    let team_a = connect(NacosConfig {
        namespace_id: "team-a".into(),
        ..server.config()
    })
    .await;
    let team_b = connect(NacosConfig {
        namespace_id: "team-b".into(),
        ..server.config()
    })
    .await;

    let a1 = Instance::new(&svc, "10.0.0.1", 8080)
        .with_version("v1.0.0")
        .with_tag("v1")
        .with_tag("api")
        .with_meta("region", "us-east-1")
        .with_weight(3);
    let a2 = Instance::new(&svc, "10.0.0.2", 8080)
        .with_id("custom-id")
        .with_version("v2.0.0")
        .with_tag("v2")
        .with_meta("region", "eu-west-1");
    let b1 = Instance::new(&svc, "10.9.9.9", 9090).with_tag("other-team");
    team_a.register(&a1).await.expect("register a1");
    team_a.register(&a2).await.expect("register a2");
    team_b.register(&b1).await.expect("register b1");

    let got = team_a.instances(&svc).await.expect("list");
    assert_eq!(ids(&got), vec!["custom-id".to_string(), a1.id.clone()]);
    // Every field survives; Unknown health registers as healthy.
    let healthy = |i: &Instance| i.clone().with_health(HealthStatus::Healthy);
    assert!(got.contains(&healthy(&a1)), "{got:#?}");
    assert!(got.contains(&healthy(&a2)), "{got:#?}");
    // Namespaces are apart.
    assert_eq!(
        team_b.instances(&svc).await.expect("list"),
        vec![healthy(&b1)]
    );
    assert!(team_a.services().await.expect("services").contains(&svc));

    // Filters through the discovery client.
    let client = DiscoveryClient::new(Arc::new(team_a.clone()));
    let v1 = client
        .discover_with_filter(&svc, &Filter::new().tag("v1").meta("region", "us-east-1"))
        .await
        .expect("discover");
    assert_eq!(ids(&v1), vec![a1.id.clone()]);
    let eu = client
        .discover_with_filter(
            &svc,
            &Filter::new().meta("region", "eu-west-1").healthy_only(),
        )
        .await
        .expect("discover");
    assert_eq!(ids(&eu), vec!["custom-id".to_string()]);

    team_a.deregister(&svc, &a1.id).await.expect("deregister");
    team_a
        .deregister(&svc, "never-registered")
        .await
        .expect("unknown id is fine");
    assert_eq!(
        ids(&team_a.instances(&svc).await.expect("list")),
        vec!["custom-id".to_string()]
    );

    // Bad names fail before any call.
    let bad = Instance::new("a@@b", "10.0.0.1", 1);
    assert!(matches!(
        team_a.register(&bad).await,
        Err(Error::Invalid { .. })
    ));
    let err = Nacos::connect(NacosConfig {
        group_name: "no spaces".into(),
        ..server.config()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("service_discovery.registries.nacos.client_config.group_name"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sees_add_remove_update() {
    let server = NacosServer::start();
    let svc = unique("watch");
    let writer = connect(server.config()).await;
    // Pushes only (no periodic check within the test), so every change below is a push.
    let reader = connect(NacosConfig {
        watch_check_interval: Duration::from_secs(600),
        empty_grace: Duration::ZERO,
        ..server.config()
    })
    .await;
    let t = Duration::from_secs(10);

    let mut w = reader.watch(&svc).await.expect("watch");
    assert_eq!(next_change(&mut w, t).await, Change::Reset(vec![]));
    // A second watch of the same service shares the subscription; dropping it must not end
    // the first one's pushes.
    let mut second = reader.watch(&svc).await.expect("second watch");
    assert_eq!(next_change(&mut second, t).await, Change::Reset(vec![]));
    drop(second);

    let a = Instance::new(&svc, "127.0.0.1", 7001).with_tag("x");
    let b = Instance::new(&svc, "127.0.0.1", 7002);
    writer.register(&a).await.expect("register a");
    let healthy = |i: &Instance| i.clone().with_health(HealthStatus::Healthy);
    assert_eq!(next_change(&mut w, t).await, Change::Add(healthy(&a)));
    writer.register(&b).await.expect("register b");
    assert_eq!(next_change(&mut w, t).await, Change::Add(healthy(&b)));

    // Weight only: rnacos keeps the metadata an address first registered with (it treats it as
    // operator metadata); real Nacos would take new metadata too.
    let a5 = a.clone().with_weight(5);
    writer.register(&a5).await.expect("update a");
    expect_change(&mut w, t, Change::Update(healthy(&a5))).await;

    // Health travels with keep-alives: an unhealthy instance is withdrawn from the server (Nacos
    // 2.x does not take a client's healthy flag for ephemeral instances), so it leaves, and comes
    // back healthy.
    for (health, expected) in [
        (HealthStatus::Unhealthy, Change::Remove(healthy(&a5))),
        (HealthStatus::Healthy, Change::Add(healthy(&a5))),
    ] {
        assert_eq!(
            writer.keep_alive(&a5, health).await.expect("keep alive"),
            chi_discovery::Liveness::Alive
        );
        expect_change(&mut w, t, expected).await;
    }

    writer.deregister(&svc, &b.id).await.expect("deregister b");
    assert_eq!(next_change(&mut w, t).await, Change::Remove(healthy(&b)));

    // Scale to zero: a healthy server's confirmed empty answer is honoured.
    writer.deregister(&svc, &a.id).await.expect("deregister a");
    match next_change(&mut w, t).await {
        Change::Remove(i) => assert_eq!(i.id, a.id),
        other => panic!("expected Remove(a), got {other:?}"),
    }
    assert!(reader.instances(&svc).await.expect("list").is_empty());
}

/// Not a test of its own: the registrant process of `dead_registrant_leaves_discovery`, which
/// runs this binary again with `CHI_NACOS_CHILD` set. Without it, it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_registrant() {
    let Ok(spec) = std::env::var("CHI_NACOS_CHILD") else {
        return;
    };
    let mut parts = spec.split(',');
    let (Some(port), Some(svc)) = (parts.next(), parts.next()) else {
        panic!("CHI_NACOS_CHILD must be PORT,SERVICE");
    };
    let port: u16 = port.parse().expect("port");
    let reg = connect(NacosConfig::new("127.0.0.1", port)).await;
    reg.register(&Instance::new(svc, "127.0.0.1", 7999).with_id("child"))
        .await
        .expect("register");
    println!("CHILD-REGISTERED");
    // Stay until killed.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Runs `child_registrant` in a child process registering instance `child` of `svc`.
fn spawn_child(server: &NacosServer, svc: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "nacos::child_registrant",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CHI_NACOS_CHILD", format!("{},{svc}", server.http_port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child registrant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_registrant_leaves_discovery() {
    let server = NacosServer::start();
    let svc = unique("dead");
    let reader = connect(server.config()).await;
    // A survivor, so the list never goes empty and the removal is a plain push.
    let survivor = Instance::new(&svc, "127.0.0.1", 7000).with_id("survivor");
    reader.register(&survivor).await.expect("register survivor");
    let mut w = reader.watch(&svc).await.expect("watch");
    let _ = next_change(&mut w, Duration::from_secs(10)).await;

    let mut child = spawn_child(&server, &svc);
    let seen = eventually(Duration::from_secs(20), || async {
        reader
            .instances(&svc)
            .await
            .is_ok_and(|l| l.iter().any(|i| i.id == "child"))
    })
    .await;
    assert!(seen.is_some(), "the child never registered");
    loop {
        match next_change(&mut w, Duration::from_secs(10)).await {
            Change::Add(i) if i.id == "child" => break,
            _ => continue,
        }
    }

    let killed = Instant::now();
    child.kill().expect("kill -9 the registrant");
    let _ = child.wait();
    let gone = eventually(INSTANCE_TIMEOUT + Duration::from_secs(3), || async {
        reader
            .instances(&svc)
            .await
            .is_ok_and(|l| !l.iter().any(|i| i.id == "child"))
    })
    .await;
    assert!(
        gone.is_some(),
        "the dead registrant was still listed {:?} after the kill",
        killed.elapsed()
    );
    loop {
        match next_change(&mut w, INSTANCE_TIMEOUT + Duration::from_secs(3)).await {
            Change::Remove(i) if i.id == "child" => break,
            Change::Remove(i) => panic!("unexpected removal of {}", i.id),
            _ => continue,
        }
    }
    assert!(
        killed.elapsed() <= INSTANCE_TIMEOUT + Duration::from_secs(3),
        "removal took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        ids(&reader.instances(&svc).await.expect("list")),
        vec!["survivor".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_keeps_stale_list_reregisters_and_resumes_watch() {
    let mut server = NacosServer::start();
    let svc = unique("restart");
    let writer: Arc<dyn Registry> = Arc::new(connect(server.config()).await);
    let reader: Arc<dyn Registry> = Arc::new(connect(server.config()).await);

    let manager = ServiceManager::new(writer.clone());
    let inst = Instance::new(&svc, "127.0.0.1", 7100).with_id("kept");
    manager
        .register_instance(inst.clone())
        .await
        .expect("register");

    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(300),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .request_timeout(Duration::from_secs(2))
        .build(reader.clone());
    assert_eq!(client.discover(&svc).await.expect("discover").len(), 1);
    let mut watcher = client.watch(&svc).await.expect("watch");
    match watcher.next().await {
        Some(Ok(Change::Reset(all))) => assert_eq!(ids(&all), vec!["kept".to_string()]),
        other => panic!("expected the first Reset, got {other:?}"),
    }

    // Watch the client's view for the whole outage: it must never be empty.
    let empties = Arc::new(AtomicUsize::new(0));
    let probe = {
        let client = client.clone();
        let svc = svc.clone();
        let empties = empties.clone();
        tokio::spawn(async move {
            loop {
                if client.cached(&svc).is_none_or(|s| s.is_empty()) {
                    empties.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    server.kill();
    // The outage is noticed and the last good list is served, stale.
    let stale = eventually(Duration::from_secs(10), || async {
        client
            .cached(&svc)
            .is_some_and(|s| s.is_stale() && s.len() == 1)
    })
    .await;
    assert!(stale.is_some(), "the cache was not marked stale");
    let mut saw_error = false;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await {
        if item.is_err() {
            saw_error = true;
            break;
        }
    }
    assert!(saw_error, "the watch reported no error during the outage");

    server.restart();
    // The registration comes back (SDK redo or the manager's keep-alive), and the watch
    // resyncs with a Reset that holds it.
    let back = eventually(Duration::from_secs(20), || async {
        reader
            .instances(&svc)
            .await
            .is_ok_and(|l| l.iter().any(|i| i.id == "kept"))
    })
    .await;
    assert!(
        back.is_some(),
        "the registration never came back:\n{}",
        server.proc.log()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watcher.next()).await {
            Ok(Some(Ok(Change::Reset(all)))) if ids(&all) == vec!["kept".to_string()] => break,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watcher closed"),
            Err(_) => panic!("no Reset with the instance after the restart"),
        }
    }
    let fresh = eventually(Duration::from_secs(5), || async {
        client
            .cached(&svc)
            .is_some_and(|s| !s.is_stale() && s.len() == 1)
    })
    .await;
    assert!(fresh.is_some(), "the cache did not become fresh again");
    probe.abort();
    assert_eq!(
        empties.load(Ordering::Relaxed),
        0,
        "the client saw an empty list during the outage"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wrong_password_is_a_clear_error_right_one_works() {
    // Tokens live 3 s, so the registry below only keeps working if it refreshes them.
    let server = NacosServer::start_with_auth(
        "chi-admin",
        "right-pass-123",
        &[("RNACOS_API_LOGIN_TIMEOUT", "3")],
    );
    let svc = unique("auth");
    // rnacos creates its admin user a moment after it starts listening.
    let last = std::sync::Mutex::new(String::new());
    let ready = eventually(Duration::from_secs(10), || async {
        match Nacos::connect(server.config()).await {
            Ok(_) => true,
            Err(e) => {
                *last.lock().unwrap() = e.to_string();
                // Gently: rnacos limits logins per user and minute.
                tokio::time::sleep(Duration::from_millis(200)).await;
                false
            }
        }
    })
    .await;
    assert!(
        ready.is_some(),
        "the right password never worked: {}\n{}",
        last.lock().unwrap(),
        server.proc.log()
    );
    let wrong = "wrong-pass-456";
    let err = Nacos::connect(NacosConfig {
        password: Some(Secret::new(wrong)),
        ..server.config()
    })
    .await
    .unwrap_err();
    let text = format!("{err} / {err:?}");
    assert!(text.contains("403"), "{text}");
    assert!(text.contains("chi-admin"), "{text}");
    assert!(!text.contains(wrong), "the password leaked: {text}");

    // No credentials at all: refused by the server, with its code.
    let err = Nacos::connect(NacosConfig {
        username: None,
        password: None,
        ..server.config()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    let reg = connect(server.config()).await;
    let inst = Instance::new(&svc, "127.0.0.1", 7200);
    reg.register(&inst).await.expect("register with auth");
    let got: HashSet<String> = reg
        .instances(&svc)
        .await
        .expect("list with auth")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(got.contains(&inst.id));

    // Let two token lifetimes pass: the same registry still works only if it refreshed its
    // token (nacos-sdk alone would ask for a new one after 30 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = reg.instances(&svc).await;
    assert!(
        after
            .as_ref()
            .is_ok_and(|l| l.iter().any(|i| i.id == inst.id)),
        "after 7 s with 3 s tokens: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_dead_server_is_a_transient_error() {
    let port = chi_test_support::free_port();
    let start = Instant::now();
    let err = Nacos::connect(NacosConfig {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        ..NacosConfig::new("127.0.0.1", port)
    })
    .await
    .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
}

/// After a restart the server knows no ephemeral instance until their clients come back: its
/// "no instances" is held for the grace period, then honoured when nobody came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_answer_after_restart_is_held_then_honoured() {
    let mut server = NacosServer::start();
    let svc = unique("empty");
    let grace = Duration::from_secs(3);
    let reader: Arc<dyn Registry> = Arc::new(
        connect(NacosConfig {
            empty_grace: grace,
            ..server.config()
        })
        .await,
    );
    let mut child = spawn_child(&server, &svc);
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(200),
            ..CacheConfig::default()
        })
        .request_timeout(Duration::from_secs(2))
        .build(reader.clone());
    // The first discover also starts the client's background refresh.
    client.discover(&svc).await.expect("discover");
    let registered = eventually(Duration::from_secs(20), || async {
        client.refresh(&svc).await.is_ok_and(|s| s.len() == 1)
    })
    .await;
    assert!(registered.is_some(), "the child never registered");
    let mut w = reader.watch(&svc).await.expect("watch");
    assert!(matches!(
        next_change(&mut w, Duration::from_secs(5)).await,
        Change::Reset(l) if l.len() == 1
    ));

    // The server goes away, and the registrant dies while it is away: nobody comes back.
    server.kill();
    child.kill().expect("kill the registrant");
    let _ = child.wait();
    server.restart();
    let restarted = Instant::now();

    // Held: the list stays for (about) the grace period...
    let removed = loop {
        match tokio::time::timeout(Duration::from_secs(15), w.next()).await {
            Ok(Some(Ok(Change::Remove(i)))) if i.id == "child" => break restarted.elapsed(),
            Ok(Some(Ok(Change::Reset(l)))) if l.is_empty() => break restarted.elapsed(),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("the empty answer was never honoured"),
        }
    };
    assert!(
        removed + Duration::from_millis(500) >= grace,
        "emptied {removed:?} after the restart, within the {grace:?} grace"
    );
    // ...and then honoured, by the discovery client too.
    let emptied = eventually(Duration::from_secs(10), || async {
        client.cached(&svc).is_some_and(|s| s.is_empty())
    })
    .await;
    assert!(
        emptied.is_some(),
        "the discovery client kept the dead instance"
    );
}

mod lanes;
