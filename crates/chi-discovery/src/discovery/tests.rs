use super::*;
use crate::instance::HealthStatus;
use crate::registry::{Change, Memory};
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

/// The TTL of unused services: expiry, refreshing what is used, outages.
#[path = "tests_ttl.rs"]
mod ttl;
