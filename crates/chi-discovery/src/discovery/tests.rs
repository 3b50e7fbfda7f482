use super::*;
use crate::instance::HealthStatus;
use crate::registry::{Change, Memory};
use proptest::prelude::*;
use std::sync::atomic::AtomicUsize;

fn inst(id: &str) -> Instance {
    Instance::new("svc", "127.0.0.1", 8000).with_id(id)
}

fn ids(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

fn client(reg: &Memory) -> DiscoveryClient {
    DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .build(Arc::new(reg.clone()))
}

#[tokio::test]
async fn discover_caches_and_filters() {
    let reg = Memory::new();
    reg.register(&inst("a").with_tag("v1"))
        .await
        .expect("register");
    reg.register(
        &inst("b")
            .with_tag("v2")
            .with_health(HealthStatus::Unhealthy),
    )
    .await
    .expect("register");
    let c = client(&reg);
    assert_eq!(
        ids(&c.discover("svc").await.expect("discover")),
        vec!["a", "b"]
    );
    assert_eq!(c.cache_stats().misses, 1);
    let _ = c.discover("svc").await.expect("discover");
    assert_eq!(c.cache_stats().hits, 1);
    let v1 = c
        .discover_with_filter("svc", &Filter::new().tag("v1"))
        .await
        .expect("filter");
    assert_eq!(ids(&v1), vec!["a"]);
    let healthy = c
        .discover_with_filter("svc", &Filter::new().healthy_only())
        .await
        .expect("filter");
    assert_eq!(ids(&healthy), vec!["a"]);
}

#[tokio::test]
async fn outage_serves_the_stale_list_and_zero_is_honoured() {
    let reg = Memory::new();
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
    let reg = Memory::new();
    reg.set_outage(true);
    let err = client(&reg).discover("svc").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn cold_miss_retries_with_backoff() {
    let reg = Memory::new();
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
async fn background_refresh_follows_the_registry() {
    let reg = Memory::new();
    reg.register(&inst("a")).await.expect("register");
    let c = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .build(Arc::new(reg.clone()));
    assert_eq!(c.discover("svc").await.expect("discover").len(), 1);
    reg.register(&inst("b")).await.expect("register");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(ids(&c.cached("svc").expect("cached")), vec!["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn ttl_marks_unrefreshed_lists_stale() {
    let reg = Memory::new();
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
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap = c.cached("svc").expect("still cached");
    assert!(snap.is_stale());
    assert_eq!(snap.len(), 1, "never emptied by an outage");
}

/// A service cached by an explicit `refresh` is kept fresh (and marked stale in an outage) by the
/// background refresher like one cached by `discover`: the cache promises that for every entry.
#[tokio::test(start_paused = true)]
async fn a_list_cached_by_refresh_is_refreshed_in_the_background() {
    let reg = Memory::new();
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
async fn watch_streams_changes_and_feeds_the_cache() {
    let reg = Memory::new();
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg);
    let mut w = c.watch("svc").await.expect("watch");
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Reset(vec![inst("a")])
    );
    reg.register(&inst("b")).await.expect("register");
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Add(inst("b"))
    );
    assert_eq!(
        ids(&c.cached("svc").expect("fed by the watch")),
        vec!["a", "b"]
    );
    reg.deregister("svc", "a").await.expect("deregister");
    assert_eq!(
        w.next().await.expect("item").expect("ok"),
        Change::Remove(inst("a"))
    );
    assert_eq!(ids(&c.cached("svc").expect("cached")), vec!["b"]);
}

#[tokio::test]
async fn watch_reports_errors_keeps_the_list_and_resyncs() {
    let reg = Memory::new();
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
    let reg = Memory::new();
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

#[tokio::test]
async fn warm_up_reports_each_service() {
    let reg = Memory::new();
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg);
    let report = c.warm_up(&["svc", "other", "bad/name"]).await;
    assert_eq!(report[0].result.as_ref().expect("svc"), &1);
    assert_eq!(report[1].result.as_ref().expect("other"), &0);
    assert!(report[2].result.is_err());
    assert!(c.cached("svc").is_some() && c.cached("other").is_some());
}

#[tokio::test]
async fn on_request_sees_every_call() {
    let reg = Memory::new();
    let c = client(&reg);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    {
        let (ok, failed) = (ok.clone(), failed.clone());
        c.on_request(move |service, _elapsed, result| {
            assert!(!service.is_empty());
            match result {
                Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                Err(_) => failed.fetch_add(1, Ordering::SeqCst),
            };
        });
    }
    let _ = c.discover("svc").await;
    let _ = c.discover("svc").await;
    let _ = c.discover("a/b").await;
    assert_eq!(ok.load(Ordering::SeqCst), 2);
    assert_eq!(failed.load(Ordering::SeqCst), 1);
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
            let reg = Memory::new();
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

#[tokio::test]
async fn health_overlay_survives_refresh_until_cleared() {
    let reg = Memory::new();
    reg.register(&inst("a").with_health(HealthStatus::Healthy))
        .await
        .expect("register");
    let c = client(&reg);
    let before = c.discover("svc").await.expect("discover");
    c.set_health("svc", "a", Some(HealthStatus::Unhealthy));
    let after = c.cached("svc").expect("cached");
    assert_eq!(after[0].health, HealthStatus::Unhealthy);
    assert_ne!(before.revision(), after.revision());
    assert!(
        c.discover_with_filter("svc", &Filter::new().healthy_only())
            .await
            .expect("f")
            .is_empty()
    );
    let refreshed = c.refresh("svc").await.expect("refresh");
    assert_eq!(
        refreshed[0].health,
        HealthStatus::Unhealthy,
        "overlay survives a refresh"
    );
    c.set_health("svc", "a", None);
    let refreshed = c.refresh("svc").await.expect("refresh");
    assert_eq!(refreshed[0].health, HealthStatus::Healthy);
}
