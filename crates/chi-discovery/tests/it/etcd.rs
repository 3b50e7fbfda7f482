//! The etcd adapter against a real etcd 3.4 on loopback: round trip, lease expiry, restart,
//! leader loss in a three-member cluster, auth. Every test starts its own etcd (own data
//! directory, free ports) and uses its own service names.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::etcd::{Etcd, EtcdConfig, EtcdTls};
use chi_discovery::registry::{Change, Liveness, Registry, WatchStream};
use chi_discovery::{DiscoveryClient, Error, Filter, HealthStatus, Instance, ServiceManager};
use futures_util::StreamExt;

use chi_test_support::etcd::{Etcd as Server, Proxy};
use chi_test_support::eventually;

fn config(endpoints: Vec<String>, ttl: Duration) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        lease_ttl: ttl,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    }
}

async fn connect(endpoints: Vec<String>, ttl: Duration) -> Etcd {
    Etcd::connect(config(endpoints, ttl))
        .await
        .expect("connect to etcd")
}

fn inst(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, "127.0.0.1", port).with_id(id)
}

/// The next item of a watch, within `timeout`.
async fn next(w: &mut WatchStream, timeout: Duration) -> chi_discovery::Result<Change> {
    tokio::time::timeout(timeout, w.next())
        .await
        .expect("watch item in time")
        .expect("watch still open")
}

fn ids(list: &[Instance]) -> BTreeSet<String> {
    list.iter().map(|i| i.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_register_discover_filter_watch() {
    let server = Server::single().await;
    let reg = connect(server.endpoints(), Duration::from_secs(10)).await;
    let svc = "rt-orders";
    let a = inst(svc, "a", 8001)
        .with_tag("v1")
        .with_meta("region", "eu");
    let b = inst(svc, "b", 8002).with_tag("v2");
    reg.register(&a).await.expect("register a");
    reg.register(&b).await.expect("register b");
    // A service whose name starts like ours must not leak into it.
    reg.register(&inst("rt-orders2", "x", 9000))
        .await
        .expect("register other");

    let mut listed = reg.instances(svc).await.expect("instances");
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, vec![a.clone(), b.clone()]);
    let services = reg.services().await.expect("services");
    assert!(
        services.contains(&svc.to_string()) && services.contains(&"rt-orders2".to_string()),
        "{services:?}"
    );

    let client = DiscoveryClient::new(Arc::new(reg.clone()));
    let v1 = client
        .discover_with_filter(svc, &Filter::new().tag("v1"))
        .await
        .expect("filter");
    assert_eq!(v1, vec![a.clone()]);

    let mut w = reg.watch(svc).await.expect("watch");
    match next(&mut w, Duration::from_secs(5)).await.expect("reset") {
        Change::Reset(all) => assert_eq!(ids(&all), ids(&[a.clone(), b.clone()])),
        other => panic!("first item must be a Reset, got {other:?}"),
    }
    let c = inst(svc, "c", 8003);
    reg.register(&c).await.expect("register c");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("add"),
        Change::Add(c.clone())
    );
    // The same registration again is no event; a changed one is an Update.
    reg.register(&c).await.expect("register c again");
    let b3 = b.clone().with_weight(3);
    reg.register(&b3).await.expect("update b");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("update"),
        Change::Update(b3.clone())
    );
    // A keep-alive that reports another health writes it for everyone.
    assert_eq!(
        reg.keep_alive(&b3, HealthStatus::Unhealthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    let b3_sick = b3.clone().with_health(HealthStatus::Unhealthy);
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("health"),
        Change::Update(b3_sick.clone())
    );
    reg.deregister(svc, "a").await.expect("deregister a");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("remove"),
        Change::Remove(a.clone())
    );
    reg.deregister(svc, "missing")
        .await
        .expect("unknown id is fine");

    // Names cannot escape the prefix.
    let err = reg
        .register(&inst("../escape", "x", 1))
        .await
        .expect_err("bad name");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(reg.instances("a/b").await.is_err());
    assert!(reg.watch("..").await.is_err());

    // The last deregistration revokes the session lease.
    let lease = reg.lease_id().await.expect("a session lease");
    for (s, id) in [(svc, "b"), (svc, "c"), ("rt-orders2", "x")] {
        reg.deregister(s, id).await.expect("deregister");
    }
    assert_eq!(reg.lease_id().await, None);
    let mut raw = server.client().await;
    let ttl = raw
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live");
    assert!(ttl.ttl() <= 0, "lease {lease} should be revoked");
    assert!(reg.instances(svc).await.expect("instances").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_removes_a_crashed_registrant() {
    let server = Server::single().await;
    let ttl = Duration::from_secs(2);
    let svc = "lease-expiry";
    let watcher = connect(server.endpoints(), ttl).await;
    let kept = connect(server.endpoints(), ttl).await;
    let crashed = connect(server.endpoints(), ttl).await;
    let mut w = watcher.watch(svc).await.expect("watch");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("reset"),
        Change::Reset(vec![])
    );

    let k = inst(svc, "kept", 7001);
    kept.register(&k).await.expect("register kept");
    let c = inst(svc, "crashed", 7002);
    crashed.register(&c).await.expect("register crashed");
    let registered = Instant::now();
    // `crashed` never sends a keep-alive again; `kept` does, at its interval.
    let keeper = {
        let kept = kept.clone();
        let k = k.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(kept.keep_alive_interval()).await;
                let _ = kept.keep_alive(&k, HealthStatus::Healthy).await;
            }
        })
    };

    let removed = loop {
        match next(&mut w, Duration::from_secs(10)).await.expect("change") {
            Change::Remove(i) => break (i, registered.elapsed()),
            Change::Add(_) | Change::Update(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(removed.0.id, "crashed");
    assert!(
        removed.1 <= ttl + Duration::from_secs(1),
        "removed after {:?}, bound is TTL + 1 s",
        removed.1
    );
    // The crashed registrant, were it to come back, learns it was lost and registers again.
    assert_eq!(
        crashed
            .keep_alive(&c, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Lost
    );
    crashed.register(&c).await.expect("register again");
    let listed = watcher.instances(svc).await.expect("instances");
    assert_eq!(ids(&listed), ids(&[k.clone(), c.clone()]));
    keeper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_stale_then_resumes_and_re_registers() {
    let mut server = Server::single().await;
    let svc = "restart-pay";
    let ttl = Duration::from_secs(3);
    let owner = connect(server.endpoints(), ttl).await;
    let manager = ServiceManager::new(Arc::new(owner.clone()));
    for (id, port) in [("a", 8101), ("b", 8102)] {
        manager
            .register_instance(inst(svc, id, port))
            .await
            .expect("register");
    }
    let reader = connect(server.endpoints(), ttl).await;
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(200),
            ..CacheConfig::default()
        })
        .request_timeout(Duration::from_secs(1))
        .build(Arc::new(reader.clone()));
    assert_eq!(client.discover(svc).await.expect("discover").len(), 2);
    let mut watcher = client.watch(svc).await.expect("watch");
    match tokio::time::timeout(Duration::from_secs(5), watcher.next()).await {
        Ok(Some(Ok(Change::Reset(all)))) => assert_eq!(all.len(), 2),
        other => panic!("expected the first Reset, got {other:?}"),
    }

    server.members[0].kill();
    // The watch reports the break in line, and the cache keeps the last good list, stale.
    match tokio::time::timeout(Duration::from_secs(10), watcher.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected an error item, got {other:?}"),
    }
    let stale = eventually(Duration::from_secs(5), || async {
        client.cached(svc).is_some_and(|s| s.is_stale())
    })
    .await;
    assert!(stale.is_some(), "cache never marked stale");
    let snap = client.discover(svc).await.expect("served from cache");
    assert_eq!(snap.len(), 2, "the last good list survives the outage");

    server.members[0].restart();
    // While it was down, the registrations survived in the data dir. Now one is lost behind the
    // manager's back (as if its lease had expired) and another registrant adds one.
    let raw = server.client().await;
    let b_key = owner.key(svc, "b").expect("key");
    eventually(Duration::from_secs(10), || {
        let mut raw = raw.clone();
        let key = b_key.clone();
        async move { raw.delete(key, None).await.is_ok() }
    })
    .await
    .expect("delete b after the restart");
    let other = connect(server.endpoints(), ttl).await;
    other
        .register(&inst(svc, "c", 8103))
        .await
        .expect("register c");

    // The manager sees the loss at its next keep-alive and registers b again.
    let back = eventually(Duration::from_secs(10), || async {
        manager
            .status()
            .iter()
            .any(|s| s.instance.id == "b" && s.backends[0].reregistrations >= 1)
    })
    .await;
    assert!(
        back.is_some(),
        "b not re-registered: {:?}",
        manager.status()
    );

    // The watch resumed, and the client ends equal to the server, fresh again.
    let want: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let converged = eventually(Duration::from_secs(10), || async {
        let server_ids = match reader.instances(svc).await {
            Ok(list) => ids(&list),
            Err(_) => return false,
        };
        let cached = client.cached(svc);
        server_ids == want
            && cached.is_some_and(|s| !s.is_stale() && ids(s.instances()) == server_ids)
    })
    .await;
    assert!(
        converged.is_some(),
        "client {:?} vs server {:?}",
        client.cached(svc).map(|s| ids(s.instances())),
        reader.instances(svc).await.map(|l| ids(&l))
    );
    // The watcher's own stream carried the changes too (after a Reset on resume).
    let mut seen_reset = false;
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(200), watcher.next()).await
    {
        if let Ok(Change::Reset(_)) = item {
            seen_reset = true;
        }
    }
    assert!(seen_reset, "the resumed watch must resync with a Reset");
    manager.shutdown().await;
    assert!(
        reader
            .instances(svc)
            .await
            .expect("list")
            .iter()
            .all(|i| i.id == "c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_etcd_resyncs_the_watch_and_the_manager_registers_again() {
    let mut server = Server::single().await;
    let svc = "wiped-search";
    let ttl = Duration::from_secs(3);
    let owner = connect(server.endpoints(), ttl).await;
    let manager = ServiceManager::new(Arc::new(owner.clone()));
    for (id, port) in [("a", 8401), ("b", 8402)] {
        manager
            .register_instance(inst(svc, id, port))
            .await
            .expect("register");
    }
    let reader = connect(server.endpoints(), ttl).await;
    let mut w = reader.watch(svc).await.expect("watch");
    let mut view = std::collections::HashMap::new();
    match next(&mut w, Duration::from_secs(5)).await.expect("reset") {
        Change::Reset(all) => Change::Reset(all).apply(&mut view),
        other => panic!("expected a Reset, got {other:?}"),
    }
    // Move the revision on, so that the wiped store starts far behind what the watch has seen.
    let mut raw = server.client().await;
    for k in 0..30 {
        raw.put(format!("/elsewhere/{k}"), "x", None)
            .await
            .expect("put");
    }

    server.members[0].kill();
    server.members[0].wipe();
    server.members[0].restart();
    let other = connect(server.endpoints(), ttl).await;
    eventually(Duration::from_secs(10), || async {
        other.register(&inst(svc, "c", 8403)).await.is_ok()
    })
    .await
    .expect("register c on the new store");

    // The manager finds its lease gone and registers both again; the watch notices the new store
    // and resyncs with a Reset; in the end the watcher's view is the server's list.
    let want: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resets = 0;
    loop {
        let server_ids = reader.instances(svc).await.map(|l| ids(&l)).ok();
        let view_ids: BTreeSet<String> = view.keys().cloned().collect();
        if server_ids.as_ref() == Some(&want) && view_ids == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "view {view_ids:?}, server {server_ids:?}, manager {:?}",
            manager.status()
        );
        if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
            match item {
                Ok(c) => {
                    resets += usize::from(matches!(c, Change::Reset(_)));
                    c.apply(&mut view);
                }
                Err(e) => assert!(e.is_transient(), "{e}"),
            }
        }
    }
    assert!(resets >= 1, "the watch must resync with a Reset");
    let counted = eventually(Duration::from_secs(5), || async {
        manager
            .status()
            .iter()
            .all(|s| s.backends[0].reregistrations >= 1)
    })
    .await;
    assert!(counted.is_some(), "{:?}", manager.status());
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_the_leader_being_killed() {
    let mut cluster = Server::cluster().await;
    let svc = "cluster-cart";
    let ttl = Duration::from_secs(3);
    // The leader's endpoint first: both clients talk to it, so killing it makes them fail over.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, leader);
    let writer = connect(endpoints.clone(), ttl).await;
    let reader = connect(endpoints, ttl).await;
    let manager = ServiceManager::new(Arc::new(writer.clone()));
    manager
        .register_instance(inst(svc, "a", 8201))
        .await
        .expect("register a");
    let mut w = reader.watch(svc).await.expect("watch");
    let mut view = std::collections::HashMap::new();
    match next(&mut w, Duration::from_secs(5)).await.expect("reset") {
        Change::Reset(all) => {
            assert_eq!(ids(&all), ids(&[inst(svc, "a", 8201)]));
            Change::Reset(all).apply(&mut view);
        }
        other => panic!("expected a Reset, got {other:?}"),
    }

    cluster.members[leader].kill();
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);

    // Registration carries on (retried while the cluster elects).
    let b = inst(svc, "b", 8202);
    let registered = eventually(Duration::from_secs(10), || async {
        writer.register(&b).await.is_ok()
    })
    .await;
    assert!(registered.is_some(), "could not register after leader loss");

    // The watch sat on the dead member: it reports the break, resumes on another member, resyncs
    // with a Reset, and b arrives.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut errors, mut resets) = (0, 0);
    while !view.contains_key("b") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "watch never saw b; view {view:?}");
        match next(&mut w, left).await {
            Ok(change) => {
                resets += usize::from(matches!(change, Change::Reset(_)));
                change.apply(&mut view);
            }
            Err(_) => errors += 1,
        }
    }
    assert!(view.contains_key("a"), "{view:?}");
    assert!(
        errors >= 1 && resets >= 1,
        "errors {errors}, resets {resets}"
    );

    // a stays registered past its TTL: keep-alives reach the new leader.
    let past_ttl = ttl + Duration::from_secs(1);
    let elapsed = killed_at.elapsed();
    if elapsed < past_ttl {
        tokio::time::sleep(past_ttl - elapsed).await;
    }
    let listed = reader.instances(svc).await.expect("instances");
    assert_eq!(ids(&listed), ids(&[inst(svc, "a", 1), b.clone()]));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wrong_password_is_a_clear_error_right_one_works() {
    let server = Server::single().await;
    let password = "Corr3ct-Horse-Battery";
    server.enable_auth(password).await;
    let svc = "auth-users";

    let wrong = "wr0ng-Pa55word-xyz";
    let err = Etcd::connect(EtcdConfig {
        username: Some("root".into()),
        password: Some(wrong.into()),
        ..config(server.endpoints(), Duration::from_secs(5))
    })
    .await
    .expect_err("a wrong password must fail");
    let text = format!("{err} / {err:?}");
    assert!(!text.contains(wrong), "the password leaked: {text}");
    assert!(
        text.contains("root") && text.contains("authentication failed"),
        "not a clear error: {text}"
    );
    assert!(
        !err.is_transient(),
        "a wrong password is not worth retrying"
    );

    // Without credentials, calls are refused, clearly.
    let anonymous = connect(server.endpoints(), Duration::from_secs(5)).await;
    let err = anonymous
        .register(&inst(svc, "anon", 1))
        .await
        .expect_err("no credentials");
    assert!(err.to_string().contains("user"), "{err}");

    let cfg = EtcdConfig {
        username: Some("root".into()),
        password: Some(password.into()),
        ..config(server.endpoints(), Duration::from_secs(5))
    };
    assert!(!format!("{cfg:?}").contains(password));
    let reg = Etcd::connect(cfg).await.expect("right password");
    assert!(!format!("{reg:?}").contains(password));
    let mut w = reg.watch(svc).await.expect("watch");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("reset"),
        Change::Reset(vec![])
    );
    let a = inst(svc, "a", 8301);
    reg.register(&a).await.expect("register");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("add"),
        Change::Add(a.clone())
    );
    assert_eq!(reg.instances(svc).await.expect("instances"), vec![a]);
    assert_eq!(
        reg.keep_alive(&inst(svc, "a", 8301), HealthStatus::Unknown)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let server = Server::single_tls().await;
    let certs = server.certs.clone().expect("certs");
    let svc = "tls-inventory";
    let tls = EtcdTls {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client.0.clone()),
        key: Some(certs.client.1.clone()),
        domain: None,
    };
    let with_tls = |tls: EtcdTls| EtcdConfig {
        tls: Some(tls),
        ..config(server.endpoints(), Duration::from_secs(5))
    };
    let reg = Etcd::connect(with_tls(tls.clone()))
        .await
        .expect("connect over TLS");
    let a = inst(svc, "a", 8501);
    reg.register(&a).await.expect("register over TLS");
    assert_eq!(
        reg.instances(svc).await.expect("instances"),
        vec![a.clone()]
    );
    let mut w = reg.watch(svc).await.expect("watch over TLS");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("reset"),
        Change::Reset(vec![a])
    );

    // The server requires a client certificate: without one, calls fail (and say so).
    let anonymous = Etcd::connect(with_tls(EtcdTls {
        cert: None,
        key: None,
        ..tls.clone()
    }))
    .await
    .expect("the connection is lazy");
    let err = anonymous
        .instances(svc)
        .await
        .expect_err("no client certificate");
    assert!(err.is_transient(), "{err}");

    // Bad TLS settings are config errors that name the field.
    let err = Etcd::connect(with_tls(EtcdTls {
        ca: Some("/nonexistent/ca.pem".into()),
        ..tls.clone()
    }))
    .await
    .expect_err("missing CA file");
    assert!(
        err.to_string()
            .starts_with("service_discovery.registries.etcd.tls.ca"),
        "{err}"
    );
    let err = Etcd::connect(with_tls(EtcdTls { key: None, ..tls }))
        .await
        .expect_err("cert without key");
    assert!(err.to_string().contains("go together"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_cut_resyncs_the_watch_with_a_reset() {
    let server = Server::single().await;
    let proxy = Proxy::start(server.members[0].client_port).await;
    let svc = "compacted-mail";
    let ttl = Duration::from_secs(10);
    let writer = connect(server.endpoints(), ttl).await;
    let reader = connect(vec![proxy.endpoint()], ttl).await;
    let (a, b) = (inst(svc, "a", 8601), inst(svc, "b", 8602));
    writer.register(&a).await.expect("register a");
    let mut w = reader.watch(svc).await.expect("watch");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("reset"),
        Change::Reset(vec![a.clone()])
    );

    // Cut the watcher off; while it is away, the service changes and etcd compacts the history
    // the watch would resume from.
    proxy.cut();
    match next(&mut w, Duration::from_secs(10)).await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(c) => panic!("expected the break to be reported, got {c:?}"),
    }
    writer.register(&b).await.expect("register b");
    writer.deregister(svc, "a").await.expect("deregister a");
    let mut raw = server.client().await;
    let revision = raw
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    raw.compact(
        revision,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    proxy.heal();

    // Resuming is impossible (compacted), so the watch starts over: the first change after the
    // cut is a Reset with the list as it is now, not a resume of the old view.
    let first = loop {
        match next(&mut w, Duration::from_secs(10)).await {
            Err(_) => continue,
            Ok(c) => break c,
        }
    };
    assert_eq!(first, Change::Reset(vec![b.clone()]));
    // And it goes on watching.
    let c = inst(svc, "c", 8603);
    writer.register(&c).await.expect("register c");
    assert_eq!(
        next(&mut w, Duration::from_secs(5)).await.expect("add"),
        Change::Add(c)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_past_the_ttl_loses_the_lease_and_the_manager_registers_again() {
    let server = Server::single().await;
    let proxy = Proxy::start(server.members[0].client_port).await;
    let svc = "cut-billing";
    let ttl = Duration::from_secs(2);
    let owner = connect(vec![proxy.endpoint()], ttl).await;
    let manager = ServiceManager::new(Arc::new(owner));
    manager
        .register_instance(inst(svc, "a", 8701))
        .await
        .expect("register");
    let reader = connect(server.endpoints(), ttl).await;
    assert_eq!(reader.instances(svc).await.expect("list").len(), 1);

    // The registrant is cut off: its keep-alives fail, and etcd expires the lease.
    proxy.cut();
    let gone = eventually(ttl + Duration::from_secs(2), || async {
        reader.instances(svc).await.is_ok_and(|l| l.is_empty())
    })
    .await;
    assert!(gone.is_some(), "the lease should expire while cut off");

    // Back on the network, the manager learns the registration was lost and registers again.
    proxy.heal();
    let back = eventually(Duration::from_secs(10), || async {
        reader.instances(svc).await.is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert!(
        back.is_some(),
        "not registered again: {:?}",
        manager.status()
    );
    // The manager records the outcome when its keep-alive round ends, a moment after etcd
    // shows the key.
    let counted = eventually(Duration::from_secs(5), || async {
        manager.status()[0].backends[0].reregistrations >= 1
    })
    .await;
    assert!(counted.is_some(), "{:?}", manager.status());
    manager.shutdown().await;
    assert!(reader.instances(svc).await.expect("list").is_empty());
}
