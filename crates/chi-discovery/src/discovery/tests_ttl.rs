//! The cache's TTL means TTL: a service nobody reads or watches within it leaves the cache and is
//! no longer asked of the registry; one in use keeps being refreshed, and keeps its last good list
//! through a registry outage. Under paused time: the refresher's rounds are timer ticks.

use std::collections::HashMap;

use async_trait::async_trait;

use super::*;
use crate::registry::{Liveness, WatchStream};

/// The embedded registry, counting the lists asked of it per service, and failing them while
/// `down` (the outage: calls fail as an unreachable server's would).
#[derive(Clone)]
struct Counted {
    inner: Memory,
    down: Arc<AtomicBool>,
    asked: Arc<Mutex<HashMap<String, usize>>>,
}

impl Counted {
    fn new() -> Self {
        Counted {
            inner: Memory::new(),
            down: Arc::default(),
            asked: Arc::default(),
        }
    }

    fn set_outage(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn asked(&self, service: &str) -> usize {
        lock(&self.asked).get(service).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Registry for Counted {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.inner.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        *lock(&self.asked).entry(service.to_owned()).or_default() += 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "memory".into(),
                message: "simulated outage".into(),
            });
        }
        self.inner.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.inner.watch(service).await
    }
}

fn of(service: &str, id: &str) -> Instance {
    Instance::new(service, "127.0.0.1", 8000).with_id(id)
}

/// TTL 5 s, a refresh round every second, no retries.
fn client(reg: &Counted) -> DiscoveryClient {
    DiscoveryClient::builder()
        .cache(CacheConfig {
            ttl: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .retry(RetryPolicy::none())
        .build(Arc::new(reg.clone()))
}

/// Lets the refresher run `secs` rounds of paused time.
async fn rounds(secs: u64) {
    for _ in 0..secs * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_unused_service_leaves_after_the_ttl_and_is_no_longer_asked_for() {
    let reg = Counted::new();
    reg.register(&of("idle", "a")).await.expect("register");
    reg.register(&of("busy", "b")).await.expect("register");
    let c = client(&reg);
    assert_eq!(c.discover("idle").await.expect("discover").len(), 1);
    // `busy` is read every half second.
    for _ in 0..8 {
        assert_eq!(c.discover("busy").await.expect("discover").len(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 4 s after its only read: still cached and refreshed.
    assert!(c.cached_services().contains(&"idle".to_owned()));
    let refreshed = reg.asked("idle");
    assert!(
        refreshed >= 3,
        "refreshed while within the TTL: {refreshed}"
    );
    for _ in 0..8 {
        assert_eq!(c.discover("busy").await.expect("discover").len(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 8 s: gone, counted, and no longer asked of the registry.
    let mut names = c.cached_services();
    names.sort();
    assert_eq!(names, ["busy"]);
    assert_eq!(c.cache_stats().expiries, 1);
    assert_eq!(c.cache_stats().size, 1);
    let asked = reg.asked("idle");
    assert!(asked <= refreshed + 2, "{asked} after {refreshed}");
    let busy = reg.asked("busy");
    rounds(10).await;
    assert_eq!(
        reg.asked("idle"),
        asked,
        "no registry calls for an expired service"
    );
    assert_eq!(c.cache_stats().expiries, 2, "busy too, unread for 10 s");
    assert!(reg.asked("busy") > busy);
    // Asked for again: a miss that fetches it anew.
    let misses = c.cache_stats().misses;
    assert_eq!(c.discover("idle").await.expect("discover").len(), 1);
    assert_eq!(c.cache_stats().misses, misses + 1);
    assert_eq!(reg.asked("idle"), asked + 1);
}

#[tokio::test(start_paused = true)]
async fn a_used_service_keeps_refreshing() {
    let reg = Counted::new();
    reg.register(&of("svc", "a")).await.expect("register");
    let c = client(&reg);
    for second in 0..30u64 {
        // Read every 3 s: within the TTL.
        if second % 3 == 0 {
            c.discover("svc").await.expect("discover");
        }
        if second == 12 {
            reg.register(&of("svc", "b")).await.expect("register");
        }
        rounds(1).await;
    }
    assert_eq!(c.cache_stats().expiries, 0);
    assert_eq!(c.cache_stats().misses, 1, "never left the cache");
    assert_eq!(ids(&c.cached("svc").expect("cached")), ["a", "b"]);
    assert!(
        reg.asked("svc") >= 25,
        "refreshed every round: {}",
        reg.asked("svc")
    );
}

#[tokio::test(start_paused = true)]
async fn a_watched_service_stays_without_reads() {
    let reg = Counted::new();
    reg.register(&of("svc", "a")).await.expect("register");
    let c = client(&reg);
    c.discover("svc").await.expect("discover");
    let watch = c.watch("svc").await.expect("watch");
    rounds(20).await;
    assert_eq!(c.cache_stats().expiries, 0);
    assert!(c.peek("svc").is_some());
    drop(watch);
    rounds(7).await;
    assert_eq!(
        c.cache_stats().expiries,
        1,
        "unwatched and unread for the TTL"
    );
    assert!(c.peek("svc").is_none());
}

#[tokio::test(start_paused = true)]
async fn through_an_outage_a_used_service_keeps_its_last_good_list() {
    let reg = Counted::new();
    for id in ["a", "b"] {
        reg.register(&of("used", id)).await.expect("register");
        reg.register(&of("unused", id)).await.expect("register");
    }
    let c = client(&reg);
    c.discover("used").await.expect("discover");
    c.discover("unused").await.expect("discover");
    reg.set_outage(true);
    for _ in 0..30 {
        let snap = c.discover("used").await.expect("served from the cache");
        assert_eq!(ids(&snap), ["a", "b"], "the last good list");
        rounds(1).await;
    }
    let snap = c.cached("used").expect("cached");
    assert!(snap.is_stale(), "past the TTL without a successful refresh");
    assert!(c.cache_stats().refresh_errors > 20);
    assert!(c.peek("unused").is_none(), "nobody used it: gone");
    assert_eq!(c.cache_stats().expiries, 1);
    reg.set_outage(false);
    rounds(2).await;
    let snap = c.cached("used").expect("cached");
    assert!(!snap.is_stale());
    assert_eq!(ids(&snap), ["a", "b"]);
}

/// A scrape of the metrics reads the cache without keeping anything in use.
#[tokio::test(start_paused = true)]
async fn peeking_is_no_use() {
    let reg = Counted::new();
    reg.register(&of("svc", "a")).await.expect("register");
    let c = client(&reg);
    c.discover("svc").await.expect("discover");
    let hits = c.cache_stats().hits;
    for _ in 0..10 {
        assert!(c.peek("svc").is_some() || c.cache_stats().expiries == 1);
        rounds(1).await;
    }
    assert_eq!(c.cache_stats().expiries, 1);
    assert_eq!(c.cache_stats().hits, hits);
}
