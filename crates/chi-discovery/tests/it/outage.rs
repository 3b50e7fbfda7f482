//! The layers above the registry through an outage: the discovery cache serves its last good list
//! (stale, never emptied), watches report the error and resync, a restart grace holds what a
//! registry back from an outage lacks, the manager retries the backend that failed. The outage is
//! `chi_test_support`'s `Faulty` wrapper around the embedded registry.

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::discovery::shared::View;
use chi_discovery::discovery::{CacheConfig, Shared};
use chi_discovery::registry::{Memory, MultiRegistry};
use chi_discovery::{
    Change, DiscoveryClient, Error, Instance, OutagePolicy, Registry, RetryPolicy, ServiceConfig,
    ServiceManager,
};
use chi_test_support::fault::Faulty;
use proptest::prelude::*;

fn inst(id: &str) -> Instance {
    Instance::new("svc", "127.0.0.1", 8000).with_id(id)
}

fn ids(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

fn client(reg: &Faulty<Memory>) -> DiscoveryClient {
    DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .build(Arc::new(reg.clone()))
}

/// Two embedded registries, each behind its own outage switch, and the union of both.
fn pair() -> (Faulty<Memory>, Faulty<Memory>, MultiRegistry) {
    let a = Faulty::new(Memory::new());
    let b = Faulty::new(Memory::new());
    let multi = MultiRegistry::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
    (a, b, multi)
}

// The discovery client.

#[tokio::test]
async fn outage_serves_the_stale_list_and_zero_is_honoured() {
    let reg = Faulty::new(Memory::new());
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg);
    assert_eq!(c.discover("svc").await.expect("discover").len(), 1);

    reg.set_outage(true);
    let snap = c.refresh("svc").await.expect("stale list, not an error");
    assert_eq!(ids(&snap), vec!["a"]);
    assert!(snap.is_stale());
    assert!(c.discover("svc").await.expect("discover").is_stale());

    reg.set_outage(false);
    reg.deregister("svc", "a").await.expect("scale to zero");
    let snap = c.refresh("svc").await.expect("refresh");
    assert!(
        snap.is_empty(),
        "a healthy registry's empty answer is honoured"
    );
    assert!(!snap.is_stale());
}

#[tokio::test]
async fn cold_miss_during_outage_is_an_error() {
    let reg = Faulty::new(Memory::new());
    reg.set_outage(true);
    let err = client(&reg).discover("svc").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn cold_miss_retries_with_backoff() {
    let reg = Faulty::new(Memory::new());
    reg.register(&inst("a")).await.expect("register");
    reg.set_outage(true);
    let c = DiscoveryClient::builder()
        .retry(RetryPolicy {
            max_attempts: 5,
            ..RetryPolicy::default()
        })
        .build(Arc::new(reg.clone()));
    let healer = {
        let reg = reg.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            reg.set_outage(false);
        })
    };
    let snap = c
        .discover("svc")
        .await
        .expect("succeeds on a later attempt");
    assert_eq!(snap.len(), 1);
    healer.await.expect("healer");
}

#[tokio::test(start_paused = true)]
async fn ttl_marks_unrefreshed_lists_stale() {
    let reg = Faulty::new(Memory::new());
    reg.register(&inst("a")).await.expect("register");
    let c = DiscoveryClient::builder()
        .cache(CacheConfig {
            ttl: Duration::from_secs(3),
            refresh_interval: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .build(Arc::new(reg.clone()));
    let _ = c.discover("svc").await.expect("discover");
    reg.set_outage(true);
    // Read within the TTL: a service in use is never dropped from the cache.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(c.cached("svc").is_some());
    }
    let snap = c.cached("svc").expect("still cached");
    assert!(snap.is_stale());
    assert_eq!(snap.len(), 1, "never emptied by an outage");
}

/// A service cached by an explicit `refresh` is kept fresh (and marked stale in an outage) by the
/// background refresher like one cached by `discover`: the cache promises that for every entry.
#[tokio::test(start_paused = true)]
async fn a_list_cached_by_refresh_is_refreshed_in_the_background() {
    let reg = Faulty::new(Memory::new());
    reg.register(&inst("a")).await.expect("register");
    let c = DiscoveryClient::builder()
        .cache(CacheConfig {
            ttl: Duration::from_secs(3),
            refresh_interval: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .build(Arc::new(reg.clone()));
    assert_eq!(c.refresh("svc").await.expect("refresh").len(), 1);
    reg.register(&inst("b")).await.expect("register");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(ids(&c.discover("svc").await.expect("hit")), vec!["a", "b"]);
    reg.set_outage(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let snap = c.discover("svc").await.expect("hit");
    assert!(
        snap.is_stale(),
        "a failed background refresh marks the list stale"
    );
    assert_eq!(snap.len(), 2);
}

#[tokio::test]
async fn watch_reports_errors_keeps_the_list_and_resyncs() {
    let reg = Faulty::new(Memory::new());
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg);
    let mut w = c.watch("svc").await.expect("watch");
    let _ = w.next().await;
    reg.set_outage(true);
    assert!(w.next().await.expect("item").is_err());
    let snap = c.cached("svc").expect("cached");
    assert!(snap.is_stale());
    assert_eq!(snap.len(), 1);
    reg.set_outage(false);
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Reset(vec![inst("a")])
    );
    assert!(!c.cached("svc").expect("cached").is_stale());
}

#[tokio::test(start_paused = true)]
async fn watch_reconnects_when_the_registry_refuses_it() {
    let reg = Faulty::new(Memory::new());
    reg.set_outage(true);
    let c = client(&reg);
    let mut w = c.watch("svc").await.expect("watch");
    assert!(w.next().await.expect("item").is_err());
    reg.register(&inst("a")).await.unwrap_err();
    reg.set_outage(false);
    reg.register(&inst("a")).await.expect("register");
    loop {
        match w.next().await.expect("item") {
            Ok(Change::Reset(list)) => {
                assert_eq!(list, vec![inst("a")]);
                break;
            }
            Ok(other) => panic!("expected a Reset first, got {other:?}"),
            Err(_) => continue,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Register(u8),
    Deregister(u8),
    Outage(bool),
    Refresh,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6).prop_map(Op::Register),
        2 => (0u8..6).prop_map(Op::Deregister),
        1 => any::<bool>().prop_map(Op::Outage),
        3 => Just(Op::Refresh),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any sequence of registrations, deregistrations, outages and refreshes leaves the cache equal
    /// to the registry's last good state: what the registry held at the last successful refresh.
    #[test]
    fn cache_equals_last_good_state(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let reg = Faulty::new(Memory::new());
            let c = client(&reg);
            let mut last_good: Option<Vec<String>> = None;
            for op in ops {
                match op {
                    Op::Register(n) => { let _ = reg.register(&inst(&format!("i{n}"))).await; }
                    Op::Deregister(n) => { let _ = reg.deregister("svc", &format!("i{n}")).await; }
                    Op::Outage(down) => reg.set_outage(down),
                    Op::Refresh => {
                        let res = c.refresh("svc").await;
                        if reg.is_down() {
                            match &last_good {
                                Some(good) => {
                                    let snap = res.expect("stale list served");
                                    prop_assert!(snap.is_stale());
                                    prop_assert_eq!(&ids(&snap), good);
                                }
                                None => prop_assert!(res.is_err()),
                            }
                        } else {
                            let truth = ids(&reg.instances("svc").await.expect("up"));
                            let snap = res.expect("fresh list");
                            prop_assert!(!snap.is_stale());
                            prop_assert_eq!(&ids(&snap), &truth);
                            last_good = Some(truth);
                        }
                    }
                }
                if let Some(good) = &last_good {
                    prop_assert_eq!(&ids(&c.cached("svc").expect("cached once fetched")), good);
                }
            }
            Ok(())
        })?;
    }
}

// The restart grace (the client's outage policy): a registry back from an outage without part of
// its instances is not believed at once, by the watches, the cache or the shared watches.

const GRACE: Duration = Duration::from_secs(30);

/// A client of `reg` with a restart grace and quick reconnects.
fn graced(reg: &Faulty<Memory>) -> DiscoveryClient {
    DiscoveryClient::builder()
        .retry(RetryPolicy {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(200),
            ..RetryPolicy::none()
        })
        .cache(CacheConfig {
            refresh_interval: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .outage(OutagePolicy::with_restart_grace(GRACE))
        .build(Arc::new(reg.clone()))
}

/// a, b and c registered in a registry that can go down.
async fn three() -> Faulty<Memory> {
    let reg = Faulty::new(Memory::new());
    for id in ["a", "b", "c"] {
        reg.register(&inst(id)).await.expect("register");
    }
    reg
}

/// The registry restarts: down, b and c gone with the old process, d registered, back.
async fn restart_without_b_and_c(reg: &Faulty<Memory>) {
    reg.set_outage(true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    reg.inner()
        .deregister("svc", "b")
        .await
        .expect("deregister");
    reg.inner()
        .deregister("svc", "c")
        .await
        .expect("deregister");
    reg.inner().register(&inst("d")).await.expect("register");
    reg.set_outage(false);
}

#[tokio::test(start_paused = true)]
async fn a_watch_holds_the_removals_of_a_resync_for_the_restart_grace() {
    let reg = three().await;
    let c = graced(&reg);
    let mut w = c.watch("svc").await.expect("watch");
    let first = w.next().await.expect("item").expect("ok");
    assert_eq!(first, Change::Reset(vec![inst("a"), inst("b"), inst("c")]));

    restart_without_b_and_c(&reg).await;
    assert!(
        w.next().await.expect("item").is_err(),
        "the outage, in line"
    );
    // The resync keeps b and c, and brings d at once.
    let resync = w.next().await.expect("item").expect("ok");
    let answered = tokio::time::Instant::now();
    assert_eq!(
        resync,
        Change::Reset(vec![inst("a"), inst("b"), inst("c"), inst("d")])
    );
    // b's owner registers it again: no event. c never comes back: removed when the grace ends.
    reg.register(&inst("b")).await.expect("register");
    let gone = w.next().await.expect("item").expect("ok");
    assert_eq!(gone, Change::Remove(inst("c")));
    assert_eq!(answered.elapsed(), GRACE, "exactly when the grace ends");
    // After the grace a removal goes out at once.
    reg.deregister("svc", "a").await.expect("deregister");
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Remove(inst("a"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_cache_keeps_the_missing_for_the_restart_grace() {
    let reg = three().await;
    let c = graced(&reg);
    assert_eq!(c.discover("svc").await.expect("discover").len(), 3);
    reg.set_outage(true);
    // A refresh fails: the list is stale, and the next answer starts the grace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(c.cached("svc").expect("cached").is_stale());
    reg.inner()
        .deregister("svc", "b")
        .await
        .expect("deregister");
    reg.set_outage(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = c.cached("svc").expect("cached");
    assert!(!held.is_stale());
    assert_eq!(ids(&held), vec!["a", "b", "c"], "b is held");
    // Still held just before the grace ends, gone at the first refresh after it.
    tokio::time::sleep(GRACE - Duration::from_secs(2)).await;
    assert_eq!(ids(&c.cached("svc").expect("cached")), vec!["a", "b", "c"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ids(&c.cached("svc").expect("cached")), vec!["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn without_a_grace_a_resync_is_believed_as_it_is() {
    let reg = three().await;
    let c = DiscoveryClient::builder()
        .retry(RetryPolicy {
            initial_interval: Duration::from_millis(50),
            ..RetryPolicy::none()
        })
        .build(Arc::new(reg.clone()));
    let mut w = c.watch("svc").await.expect("watch");
    let _ = w.next().await;
    restart_without_b_and_c(&reg).await;
    assert!(w.next().await.expect("item").is_err());
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Reset(vec![inst("a"), inst("d")])
    );
}

#[tokio::test(start_paused = true)]
async fn a_shared_watch_keeps_the_missing_for_the_restart_grace() {
    let reg = three().await;
    let shared = Shared::new(graced(&reg));
    let mut rx = shared.subscribe("svc").expect("subscribe");
    rx.changed().await.expect("a list");
    let listed = |rx: &mut tokio::sync::watch::Receiver<View>| -> Vec<String> {
        ids(rx.borrow_and_update().instances.as_deref().expect("listed"))
    };
    assert_eq!(listed(&mut rx), vec!["a", "b", "c"]);

    restart_without_b_and_c(&reg).await;
    // d comes at once, b and c stay.
    rx.changed().await.expect("a list");
    let answered = tokio::time::Instant::now();
    assert_eq!(listed(&mut rx), vec!["a", "b", "c", "d"]);
    // b comes back: nothing to publish; c leaves when the grace ends.
    reg.register(&inst("b")).await.expect("register");
    rx.changed().await.expect("a list");
    assert_eq!(answered.elapsed(), GRACE);
    assert_eq!(listed(&mut rx), vec!["a", "b", "d"]);
    // The client's cache followed the same rule.
    assert_eq!(
        ids(&shared.client().cached("svc").expect("cached")),
        vec!["a", "b", "d"]
    );
}

// The service manager.

#[tokio::test(start_paused = true)]
async fn one_failing_backend_is_retried_alone() {
    let up = Memory::new();
    let down = Faulty::new(Memory::new());
    down.set_outage(true);
    let multi = Arc::new(MultiRegistry::new(vec![
        Arc::new(up.clone()),
        Arc::new(down.clone()),
    ]));
    let m = ServiceManager::new(multi).with_interval(Duration::from_millis(500));
    let report = m
        .register(ServiceConfig::new("svc", "127.0.0.1", 1))
        .await
        .expect("one backend holds it");
    assert!(!report.is_complete());
    assert_eq!(report.failures().count(), 1);
    assert_eq!(up.instances("svc").await.expect("list").len(), 1);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = &m.status()[0].backends;
    assert!(
        st[0].registered && !st[1].registered && st[1].failures >= 2,
        "{st:?}"
    );

    down.set_outage(false);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(down.instances("svc").await.expect("list").len(), 1);
    assert!(m.status()[0].backends[1].registered);
}

#[tokio::test(start_paused = true)]
async fn all_backends_failing_is_an_error_but_still_retried() {
    let reg = Faulty::new(Memory::new());
    reg.set_outage(true);
    let m = ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_millis(200));
    assert!(matches!(
        m.register(ServiceConfig::new("svc", "127.0.0.1", 1)).await,
        Err(Error::Backends { .. })
    ));
    reg.set_outage(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reg.instances("svc").await.expect("list").len(), 1);
}

// A multi-registry.

#[tokio::test]
async fn writes_to_all_and_reports_each_failure() {
    let (a, b, multi) = pair();
    multi.register(&inst("x")).await.expect("both up");
    assert_eq!(a.instances("svc").await.expect("a").len(), 1);
    assert_eq!(b.instances("svc").await.expect("b").len(), 1);

    b.set_outage(true);
    let err = multi.register(&inst("y")).await.unwrap_err();
    match &err {
        Error::PartialRegistration {
            id,
            registered,
            failures,
        } => {
            assert_eq!(id, "y");
            assert_eq!(registered, &["memory"]);
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].0, "memory");
        }
        other => panic!("expected PartialRegistration, got {other:?}"),
    }
    // The healthy member still got it.
    assert_eq!(a.instances("svc").await.expect("a").len(), 2);
    // Nobody took it: every failure.
    a.set_outage(true);
    match multi.register(&inst("z")).await.unwrap_err() {
        Error::Backends { failures } => assert_eq!(failures.len(), 2),
        other => panic!("expected Backends, got {other:?}"),
    }
}

#[tokio::test]
async fn reads_merge_by_id_and_survive_one_outage() {
    let (a, b, multi) = pair();
    a.register(&inst("x")).await.expect("a");
    b.register(&inst("x").with_weight(9)).await.expect("b");
    b.register(&inst("y")).await.expect("b");
    let list = multi.instances("svc").await.expect("union");
    assert_eq!(list.len(), 2);
    let x = list.iter().find(|i| i.id == "x").expect("x");
    assert_eq!(x.weight, 1, "first member wins a duplicate");

    b.set_outage(true);
    let list = multi.instances("svc").await.expect("a still answers");
    assert_eq!(list.len(), 2, "b's last good list is kept: {list:?}");
    a.set_outage(true);
    assert!(multi.instances("svc").await.is_err());
}
