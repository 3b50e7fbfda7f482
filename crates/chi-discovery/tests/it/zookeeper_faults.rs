//! The ZooKeeper adapter under faults and hostile input, against a real ZooKeeper 3.8: a session
//! expired by a partition (its nodes re-created on a new session), a server killed and restarted
//! (the last list served stale, then resync), one-shot watches (what chi falls back to on
//! servers before 3.6), digest credentials, hostile names, and the registration and watch metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::zookeeper::{Layout, WatchMode, ZookeeperConfig};
use chi_discovery::registry::{Change, Registry};
use chi_discovery::{DiscoveryClient, Error, Instance, Secret, ServiceManager};
use futures_util::StreamExt;
use serde_json::json;

use chi_test_support::eventually;
use chi_test_support::proxy::Proxy;
use chi_test_support::zookeeper::{Kazoo, ZkServer};

use crate::zookeeper::{config, connect, ids, inst, next, next_change};

const T: Duration = Duration::from_secs(5);

fn short(addr: &str, session: Duration) -> ZookeeperConfig {
    ZookeeperConfig {
        session_timeout: session,
        request_timeout: Duration::from_secs(1),
        ..config(addr, Layout::Curator)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_has_its_nodes_created_again_on_a_new_one() {
    let _heavy = chi_test_support::heavy().await;
    let server = ZkServer::start().await;
    let proxy = Proxy::start(server.port).await;
    let svc = "expiry-pay";
    let owner = connect(short(&proxy.endpoint(), Duration::from_secs(1))).await;
    let manager = Arc::new(ServiceManager::new(Arc::new(owner.clone())));
    #[cfg(feature = "metrics")]
    let (metrics, prom) = {
        let mut prom = prometheus_client::registry::Registry::default();
        let m = chi_discovery::metrics::Metrics::register(&mut prom, Default::default());
        let mgr = manager.clone();
        m.register_registrations(&mut prom, move || mgr.status());
        (m, prom)
    };
    manager
        .register_instance(inst(svc, "a", 8201))
        .await
        .expect("register");
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    let path = format!("/services/{svc}/a");
    let first_owner = kazoo.call(json!({"op": "get", "path": path}))["ephemeral_owner"].clone();
    assert_eq!(first_owner.as_i64(), owner.session_id().await);

    // Another client, not behind the proxy, watches; the owner's own watch is behind it.
    let reader = connect(config(&server.addr(), Layout::Curator)).await;
    let mut w = reader.watch(svc).await.expect("watch");
    assert_eq!(ids(&expect_reset(&mut w).await), ["a".to_string()].into());
    let mut own = owner.watch(svc).await.expect("own watch");
    expect_reset(&mut own).await;

    // A partition longer than the session timeout: the server expires the session and deletes
    // its node; the owner's watch reports the break in line.
    let cut = Instant::now();
    proxy.cut();
    match next_change(&mut w, Duration::from_secs(10)).await {
        Change::Remove(i) => assert_eq!(i.id, "a"),
        other => panic!("expected the expired node's Remove, got {other:?}"),
    }
    let expired_after = cut.elapsed();
    let item = next(&mut own, Duration::from_secs(10)).await;
    assert!(
        matches!(&item, Err(e) if e.is_transient()),
        "expected an error item during the cut, got {item:?}"
    );
    #[cfg(feature = "metrics")]
    metrics.record_watch(svc, &item);

    // Healed: a new session, the manager's keep-alive finds the node gone and writes it again.
    proxy.heal();
    let healed = Instant::now();
    match next_change(&mut w, Duration::from_secs(10)).await {
        Change::Add(i) => assert_eq!(i.id, "a"),
        other => panic!("expected the node back, got {other:?}"),
    }
    let back_after = healed.elapsed();
    println!(
        "[reliability] zookeeper session expiry: node removed {expired_after:?} after the cut \
         (session timeout 1 s), back {back_after:?} after the heal"
    );
    assert!(owner.sessions_opened() >= 2, "no new session");
    let now_owner = kazoo.call(json!({"op": "get", "path": path}))["ephemeral_owner"].clone();
    assert_ne!(
        now_owner, first_owner,
        "the node must belong to the new session"
    );
    assert_eq!(now_owner.as_i64(), owner.session_id().await);
    let status = manager.status();
    assert!(status[0].backends[0].reregistrations >= 1, "{status:?}");
    // The owner's watch is back too, with a Reset, and ends holding the node.
    let mut view = std::collections::HashMap::new();
    let seen_a = eventually(Duration::from_secs(10), || {
        let item = futures_util::FutureExt::now_or_never(own.next());
        if let Some(Some(Ok(c))) = item {
            c.apply(&mut view);
        }
        let has = view.contains_key("a");
        async move { has }
    })
    .await;
    assert!(
        seen_a.is_some(),
        "the owner's watch never saw its node again"
    );

    #[cfg(feature = "metrics")]
    {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &prom).expect("encode");
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("chi_registration_reregistrations_total")
                    && l.contains("backend=\"zookeeper\"")
            })
            .unwrap_or_else(|| panic!("no reregistration series for zookeeper:\n{text}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(value >= 1.0, "{line}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("chi_watch_errors_total") && l.contains(svc)),
            "{text}"
        );
    }
    manager.shutdown().await;
    let gone = kazoo.call(json!({"op": "exists", "path": path}));
    assert_eq!(gone, json!(false), "shutdown deregisters");
}

async fn expect_reset(w: &mut chi_discovery::registry::WatchStream) -> Vec<Instance> {
    match next(w, T).await {
        Ok(Change::Reset(all)) => all,
        other => panic!("the first item must be a Reset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_served_stale_then_resynced() {
    let _heavy = chi_test_support::heavy().await;
    let mut server = ZkServer::start().await;
    let svc = "restart-search";
    let session = Duration::from_secs(1);
    let owner = connect(short(&server.addr(), session)).await;
    let manager = ServiceManager::new(Arc::new(owner.clone()));
    for (id, port) in [("a", 8301), ("b", 8302)] {
        manager
            .register_instance(inst(svc, id, port))
            .await
            .expect("register");
    }
    let reader = connect(short(&server.addr(), session)).await;
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(200),
            ..CacheConfig::default()
        })
        .request_timeout(Duration::from_secs(1))
        .build(Arc::new(reader.clone()));
    assert_eq!(client.discover(svc).await.expect("discover").len(), 2);
    let mut watcher = client.watch(svc).await.expect("watch");
    match tokio::time::timeout(T, watcher.next()).await {
        Ok(Some(Ok(Change::Reset(all)))) => assert_eq!(all.len(), 2),
        other => panic!("expected the first Reset, got {other:?}"),
    }

    server.kill();
    let killed = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), watcher.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected an error item, got {other:?}"),
    }
    let stale = eventually(T, || async {
        client.cached(svc).is_some_and(|s| s.is_stale())
    })
    .await;
    assert!(stale.is_some(), "cache never marked stale");
    let stale_after = killed.elapsed();
    // Down for longer than the session timeout: the clients give their sessions up.
    let expired = eventually(Duration::from_secs(10), || async {
        owner.session_id().await.is_none()
    })
    .await;
    assert!(
        expired.is_some(),
        "the owner kept a session the server cannot have kept"
    );
    let snap = client.discover(svc).await.expect("served from cache");
    assert_eq!(snap.len(), 2, "the last good list survives the outage");

    server.restart();
    let ready = Instant::now();
    // A foreign instance arrives after the restart; the manager writes its instances again on
    // a new session (the old session's nodes expire on the server one timeout after it starts).
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    kazoo.curator_register(
        "/services",
        svc,
        "c",
        8303,
        json!({"instance_status": "UP"}),
    );
    let want: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let converged = eventually(Duration::from_secs(20), || async {
        let server_ids = match reader.instances(svc).await {
            Ok(list) => ids(&list),
            Err(_) => return false,
        };
        let owners_ok = manager.status().iter().all(|s| s.backends[0].registered);
        let cached = client.cached(svc);
        server_ids == want
            && owners_ok
            && cached.is_some_and(|s| !s.is_stale() && ids(s.instances()) == server_ids)
    })
    .await;
    assert!(
        converged.is_some(),
        "client {:?} vs server {:?}: {}",
        client.cached(svc).map(|s| ids(s.instances())),
        reader.instances(svc).await.map(|l| ids(&l)),
        server.proc.log()
    );
    println!(
        "[reliability] zookeeper restart: stale after {stale_after:?}; down {:?}; cache == server \
         (a, b re-registered, c new) {:?} after the restarted server was ready",
        ready.duration_since(killed),
        ready.elapsed()
    );
    // The nodes are the new session's, not leftovers of the old one.
    let session = owner.session_id().await.expect("a session");
    for id in ["a", "b"] {
        let owner_of = eventually(Duration::from_secs(10), || {
            let got = kazoo.try_call(json!({"op": "get", "path": format!("/services/{svc}/{id}")}));
            async move { got.is_ok_and(|v| v["ephemeral_owner"].as_i64() == Some(session)) }
        })
        .await;
        assert!(owner_of.is_some(), "{id} is not the new session's node");
    }
    // The watch reopens on the jittered retry curve, so its Reset may come after the cache
    // (which polls) already converged: wait for it with a deadline, not for a quiet gap.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_reset = false;
    while !seen_reset
        && let Ok(Some(item)) = tokio::time::timeout_at(deadline.into(), watcher.next()).await
    {
        seen_reset = matches!(item, Ok(Change::Reset(_)));
    }
    assert!(seen_reset, "the resumed watch must resync with a Reset");
    manager.shutdown().await;
    let left = eventually(T, || async {
        reader
            .instances(svc)
            .await
            .is_ok_and(|l| ids(&l) == ["c".to_string()].into())
    })
    .await;
    assert!(left.is_some(), "shutdown must deregister a and b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_watches_follow_every_change() {
    let server = ZkServer::start().await;
    let oneshot = |layout| ZookeeperConfig {
        watch: WatchMode::Oneshot,
        ..config(&server.addr(), layout)
    };
    let reg = connect(oneshot(Layout::Curator)).await;
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    let svc = "oneshot-cart";
    // The service does not exist yet: the watch waits for its directory.
    let mut w = reg.watch(svc).await.expect("watch");
    assert_eq!(next(&mut w, T).await.expect("reset"), Change::Reset(vec![]));
    let a = inst(svc, "a", 8401);
    reg.register(&a).await.expect("register a");
    assert_eq!(next(&mut w, T).await.expect("add"), Change::Add(a.clone()));
    kazoo.curator_register("/services", svc, "spring", 8402, json!({"version": "3"}));
    let spring = match next(&mut w, T).await.expect("add spring") {
        Change::Add(i) => i,
        other => panic!("expected Add, got {other:?}"),
    };
    assert_eq!(spring.version, "3");
    // Data watches are set again after they fire: two updates in a row both arrive.
    for weight in [5, 6] {
        let a2 = a.clone().with_weight(weight);
        reg.register(&a2).await.expect("update a");
        assert_eq!(next(&mut w, T).await.expect("update"), Change::Update(a2));
    }
    reg.deregister(svc, "a").await.expect("deregister");
    match next(&mut w, T).await.expect("remove") {
        Change::Remove(i) => assert_eq!(i.id, "a"),
        other => panic!("expected Remove, got {other:?}"),
    }
    // The directory goes and comes back: the existence watch brings it back.
    kazoo.call(json!({"op": "delete", "path": format!("/services/{svc}"), "recursive": true}));
    assert_eq!(
        next(&mut w, T).await.expect("remove spring"),
        Change::Remove(spring)
    );
    kazoo.curator_register("/services", svc, "again", 8403, json!({}));
    match next(&mut w, T).await.expect("add again") {
        Change::Add(i) => assert_eq!(i.id, "again"),
        other => panic!("expected Add, got {other:?}"),
    }

    // The Dubbo layout with one-shot watches: a provider comes and goes.
    let dubbo = connect(oneshot(Layout::Dubbo)).await;
    let iface = "org.example.Cart";
    let mut w = dubbo.watch(iface).await.expect("watch");
    assert_eq!(next(&mut w, T).await.expect("reset"), Change::Reset(vec![]));
    let path = kazoo.dubbo_register(
        "/dubbo",
        iface,
        &format!("dubbo://127.0.0.1:20880/{iface}?version=1"),
    );
    match next(&mut w, T).await.expect("add") {
        Change::Add(i) => assert_eq!((i.port, i.version.as_str()), (20880, "1")),
        other => panic!("expected Add, got {other:?}"),
    }
    kazoo.call(json!({"op": "delete", "path": path}));
    assert!(matches!(
        next(&mut w, T).await.expect("remove"),
        Change::Remove(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_open_protected_nodes_and_a_wrong_password_is_named() {
    let server = ZkServer::start().await;
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    // An operator locks /secure to the digest identity chi:s3cret (no one else may even read).
    kazoo.call(json!({"op": "create", "path": "/secure", "acl": {"digest": ["chi", "s3cret"]}}));
    let with = |user: Option<&str>, password: Option<&str>| ZookeeperConfig {
        root: Some("/secure/services".into()),
        username: user.map(str::to_owned),
        password: password.map(Secret::new),
        ..config(&server.addr(), Layout::Curator)
    };
    let good = connect(with(Some("chi"), Some("s3cret"))).await;
    let a = inst("vault", "a", 8501);
    good.register(&a)
        .await
        .expect("register with the right password");
    assert_eq!(
        good.instances("vault").await.expect("instances"),
        vec![a.clone()]
    );
    // What chi created is readable by anyone (Curator readers need no credentials), writable
    // only by its identity.
    let read = kazoo.call(json!({"op": "get", "path": "/secure/services/vault/a"}));
    assert!(
        read["data"]
            .as_str()
            .is_some_and(|d| d.contains("\"vault\"")),
        "{read}"
    );
    let write =
        kazoo.try_call(json!({"op": "set", "path": "/secure/services/vault/a", "data": "x"}));
    assert!(
        write.is_err_and(|e| e.contains("NoAuth")),
        "an anonymous write went through"
    );

    let wrong = connect(with(Some("chi"), Some("not-the-password"))).await;
    let err = wrong
        .register(&inst("vault", "b", 8502))
        .await
        .expect_err("wrong password");
    let shown = err.to_string();
    assert!(
        shown.contains("not authorized") && shown.contains("`chi`"),
        "{shown}"
    );
    assert!(
        !shown.contains("not-the-password") && !format!("{wrong:?}").contains("not-the-password"),
        "{shown}"
    );
    let anonymous = connect(with(None, None)).await;
    let err = anonymous
        .register(&inst("vault", "c", 8503))
        .await
        .expect_err("no credentials");
    assert!(err.to_string().contains("without credentials"), "{err}");
    // Listing what chi created needs nothing; listing /secure itself needs the identity.
    assert_eq!(anonymous.services().await.expect("services"), ["vault"]);
    let locked = connect(ZookeeperConfig {
        root: Some("/secure".into()),
        ..with(None, None)
    })
    .await;
    let err = locked
        .services()
        .await
        .expect_err("list /secure anonymously");
    assert!(
        matches!(err, Error::Registry { .. }) && err.to_string().contains("not authorized"),
        "{err}"
    );
    assert_eq!(good.services().await.expect("services"), ["vault"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_round_trip_or_are_refused_and_stay_under_the_root() {
    let server = ZkServer::start().await;
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    let hostile: Vec<(&str, String)> = vec![
        ("slash", "a/b".into()),
        ("dotdot", "..".into()),
        ("escape", "../../etc".into()),
        ("space", "with space".into()),
        ("query", "a?b#c%d&e=f+g".into()),
        ("unicode", "ünï-名前".into()),
        ("emoji", "rocket-🚀".into()),
        ("empty", String::new()),
        ("10KB", "x".repeat(10 * 1024)),
    ];
    let mut table = Vec::new();
    for layout in [Layout::Curator, Layout::Dubbo] {
        let reg = connect(config(&server.addr(), layout)).await;
        for (n, (label, value)) in hostile.iter().enumerate() {
            for field in ["service", "id", "tag", "meta key", "meta value"] {
                let service = format!("names-{}-{n}", layout.as_str());
                let mut i = inst(&service, &format!("{service}-i"), 9000 + n as u16);
                match field {
                    "service" => i.name = value.clone(),
                    "id" => i.id = value.clone(),
                    "tag" => i.tags.push(value.clone()),
                    "meta key" => {
                        i.meta.insert(value.clone(), "v".into());
                    }
                    _ => {
                        i.meta.insert("hostile".into(), value.clone());
                    }
                }
                let outcome = match reg.register(&i).await {
                    Ok(()) => {
                        let listed = reg.instances(&i.name).await.expect("instances");
                        assert!(
                            listed.contains(&i),
                            "{layout:?} {field} {label}: {listed:?}"
                        );
                        reg.deregister(&i.name, &i.id).await.expect("deregister");
                        "ok"
                    }
                    Err(e) => {
                        let words: &[&str] = match field {
                            "service" => &["service name"],
                            "id" => &["instance id"],
                            "tag" => &["tag"],
                            _ => &["meta"],
                        };
                        let shown = e.to_string().to_lowercase();
                        assert!(
                            matches!(e, Error::Invalid { .. })
                                && words.iter().any(|w| shown.contains(w)),
                            "{layout:?} {field} {label}: {e}"
                        );
                        "rejected"
                    }
                };
                table.push(format!(
                    "{:8} {field:10} {label:8} {outcome}",
                    layout.as_str()
                ));
            }
        }
    }
    println!("{}", table.join("\n"));
    // Nothing was written outside the two roots.
    let top = kazoo.call(json!({"op": "children", "path": "/"}));
    assert_eq!(top, json!(["dubbo", "services", "zookeeper"]));
}
