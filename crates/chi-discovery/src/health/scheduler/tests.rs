use super::*;
use crate::discovery::DiscoveryClient;
use crate::instance::{Filter, ServiceConfig};
use crate::manager::ServiceManager;
use crate::registry::{Memory, Registry};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A probe whose answer the test switches per instance id, and which records every call.
#[derive(Default)]
struct Scripted {
    down: Mutex<HashSet<String>>,
    delay: Duration,
    starts: Mutex<Vec<(String, Instant)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    per_instance: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
}

impl Scripted {
    fn with_delay(delay: Duration) -> Arc<Self> {
        Arc::new(Scripted {
            delay,
            ..Scripted::default()
        })
    }
    fn set_down(&self, id: &str, down: bool) {
        let mut d = lock(&self.down);
        if down {
            d.insert(id.to_owned());
        } else {
            d.remove(id);
        }
    }
    fn starts_of(&self, id: &str) -> Vec<Instant> {
        lock(&self.starts)
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait]
impl Probe for Scripted {
    async fn check(&self, instance: &Instance) -> Result<(), CheckError> {
        lock(&self.starts).push((instance.id.clone(), Instant::now()));
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        {
            let mut per = lock(&self.per_instance);
            let c = per.entry(instance.id.clone()).or_default();
            *c += 1;
            if *c > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        *lock(&self.per_instance)
            .entry(instance.id.clone())
            .or_default() -= 1;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if lock(&self.down).contains(&instance.id) {
            Err(CheckError::Connect {
                message: "scripted down".into(),
            })
        } else {
            Ok(())
        }
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
}

fn check(interval_ms: u64) -> HealthCheck {
    HealthCheck::tcp()
        .every(Duration::from_millis(interval_ms))
        .timeout(Duration::from_millis(500))
}

async fn setup(n: u16) -> (Memory, DiscoveryClient) {
    let reg = Memory::new();
    for p in 1..=n {
        reg.register(&ServiceConfig::new("svc", "127.0.0.1", p).instance())
            .await
            .expect("register");
    }
    let client = DiscoveryClient::new(Arc::new(reg.clone()));
    (reg, client)
}

fn id(port: u16) -> String {
    format!("svc-127.0.0.1-{port}")
}

async fn next(rx: &mut broadcast::Receiver<Transition>) -> Transition {
    tokio::time::timeout(Duration::from_secs(600), rx.recv())
        .await
        .expect("a transition")
        .expect("open")
}

async fn healthy_ids(client: &DiscoveryClient) -> Vec<String> {
    client
        .discover_with_filter("svc", &Filter::new().healthy_only())
        .await
        .expect("discover")
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transitions_follow_thresholds_at_the_interval() {
    let (_reg, client) = setup(1).await;
    let checker = HealthChecker::builder().jitter(0.0).build(client.clone());
    let mut rx = checker.subscribe();
    let probe = Scripted::with_delay(Duration::ZERO);
    let t0 = Instant::now();
    checker
        .watch_with("svc", check(1000), probe.clone())
        .await
        .expect("watch");

    let up = next(&mut rx).await;
    assert_eq!(
        (up.from, up.to),
        (HealthStatus::Unknown, HealthStatus::Healthy)
    );
    assert_eq!(
        up.at - t0,
        Duration::ZERO,
        "first check at once without jitter"
    );

    // Goes down between the checks at 2 s and 3 s: fails at 3, 4, 5 -> unhealthy at 5 s.
    tokio::time::sleep_until(t0 + Duration::from_millis(2500)).await;
    probe.set_down(&id(1), true);
    let down = next(&mut rx).await;
    assert_eq!(down.to, HealthStatus::Unhealthy);
    assert_eq!(down.at - t0, Duration::from_secs(5));
    assert!(matches!(down.reason, Some(CheckError::Connect { .. })));
    assert!(healthy_ids(&client).await.is_empty());
    let h = checker.health("svc", &id(1)).expect("known");
    assert_eq!((h.status, h.failures), (HealthStatus::Unhealthy, 3));

    // Back between 5 s and 6 s: passes at 6 and 7 -> healthy at 7 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    probe.set_down(&id(1), false);
    let back = next(&mut rx).await;
    assert_eq!(back.to, HealthStatus::Healthy);
    assert_eq!(back.at - t0, Duration::from_secs(7));
    assert!(back.reason.is_none());
    assert_eq!(healthy_ids(&client).await, vec![id(1)]);
    let starts = probe.starts_of(&id(1));
    assert!(
        starts
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn slow_probes_never_overlap_and_concurrency_is_bounded() {
    let (_reg, client) = setup(10).await;
    let checker = HealthChecker::builder()
        .jitter(0.0)
        .max_concurrency(3)
        .build(client);
    // Each probe takes 400 ms; the interval is 100 ms.
    let probe = Scripted::with_delay(Duration::from_millis(400));
    checker
        .watch_with("svc", check(100), probe.clone())
        .await
        .expect("watch");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 3);
    // 3 permits, 400 ms per probe: 150 probes in 20 s, shared fairly.
    let total = lock(&probe.starts).len();
    assert!((148..=153).contains(&total), "{total}");
    for p in 1..=10 {
        let n = probe.starts_of(&id(p)).len();
        assert!((13..=17).contains(&n), "instance {p}: {n} checks");
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_checks_and_never_lengthens_the_interval() {
    let (_reg, client) = setup(8).await;
    let checker = HealthChecker::builder().jitter(0.5).build(client);
    let probe = Scripted::with_delay(Duration::ZERO);
    let t0 = Instant::now();
    checker
        .watch_with("svc", check(10_000), probe.clone())
        .await
        .expect("watch");
    tokio::time::sleep(Duration::from_secs(100)).await;
    let mut firsts = HashSet::new();
    for p in 1..=8 {
        let starts = probe.starts_of(&id(p));
        assert!(
            starts[0] - t0 < Duration::from_secs(5),
            "first check within jitter"
        );
        firsts.insert(starts[0]);
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_secs(5) && gap <= Duration::from_secs(10),
                "{gap:?}"
            );
        }
    }
    assert!(firsts.len() > 1, "first checks are spread");
}

#[tokio::test(start_paused = true)]
async fn follows_instances_as_they_come_and_go() {
    let (reg, client) = setup(1).await;
    let checker = HealthChecker::builder().jitter(0.0).build(client.clone());
    let mut rx = checker.subscribe();
    let probe = Scripted::with_delay(Duration::ZERO);
    probe.set_down(&id(2), true);
    checker
        .watch_with("svc", check(1000), probe.clone())
        .await
        .expect("watch");
    assert_eq!(next(&mut rx).await.id, id(1));

    reg.register(&ServiceConfig::new("svc", "127.0.0.1", 2).instance())
        .await
        .expect("register");
    let t = next(&mut rx).await;
    assert_eq!(
        (t.id.as_str(), t.to),
        (id(2).as_str(), HealthStatus::Unhealthy)
    );
    assert_eq!(healthy_ids(&client).await, vec![id(1)]);

    reg.deregister("svc", &id(2)).await.expect("deregister");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let checks = probe.starts_of(&id(2)).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        probe.starts_of(&id(2)).len(),
        checks,
        "removed instances are not checked"
    );
    assert!(checker.health("svc", &id(2)).is_none());
    assert_eq!(checker.service_health("svc").len(), 1);

    checker.unwatch("svc");
    let checks = probe.starts_of(&id(1)).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(probe.starts_of(&id(1)).len(), checks);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_checker_clears_its_verdicts() {
    let (_reg, client) = setup(2).await;
    let checker = HealthChecker::builder().jitter(0.0).build(client.clone());
    let mut rx = checker.subscribe();
    let probe = Scripted::with_delay(Duration::ZERO);
    probe.set_down(&id(2), true);
    checker
        .watch_with("svc", check(1000), probe.clone())
        .await
        .expect("watch");
    next(&mut rx).await;
    next(&mut rx).await;
    assert_eq!(healthy_ids(&client).await, vec![id(1)]);
    drop(checker);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(healthy_ids(&client).await, vec![id(1), id(2)]);
    let checks = lock(&probe.starts).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lock(&probe.starts).len(),
        checks,
        "no check runs after drop"
    );
}

#[tokio::test(start_paused = true)]
async fn critical_instances_are_deregistered_after_the_configured_time() {
    let (reg, client) = setup(2).await;
    let checker = HealthChecker::builder().jitter(0.0).build(client);
    let probe = Scripted::with_delay(Duration::ZERO);
    probe.set_down(&id(2), true);
    let t0 = Instant::now();
    checker
        .watch_with(
            "svc",
            check(1000).deregister_after(Duration::from_secs(10)),
            probe.clone(),
        )
        .await
        .expect("watch");
    // Unhealthy at 0 s (first result); the check at 10 s finds it critical for 10 s.
    while reg.instances("svc").await.expect("list").len() == 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took <= Duration::from_millis(10_100),
        "{took:?}"
    );
    assert_eq!(reg.instances("svc").await.expect("list")[0].id, id(1));
}

#[tokio::test(start_paused = true)]
async fn own_registration_reports_through_the_manager() {
    let reg = Memory::new();
    let manager =
        Arc::new(ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_secs(1)));
    let cfg = ServiceConfig::new("svc", "127.0.0.1", 1);
    manager.register(cfg.clone()).await.expect("register");
    let checker = HealthChecker::builder()
        .jitter(0.0)
        .build(DiscoveryClient::new(Arc::new(reg.clone())));
    let probe = Scripted::with_delay(Duration::ZERO);
    let own = checker.check_own_with(
        manager.clone(),
        cfg.instance(),
        check(1000).deregister_after(Duration::from_secs(5)),
        probe.clone(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(manager.status()[0].health, HealthStatus::Healthy);
    assert_eq!(
        reg.instances("svc").await.expect("list")[0].health,
        HealthStatus::Healthy
    );

    probe.set_down(&id(1), true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manager.status()[0].health, HealthStatus::Unhealthy);
    assert_eq!(
        reg.instances("svc").await.expect("list")[0].health,
        HealthStatus::Unhealthy
    );
    assert!(own.health().expect("known").failures >= 3);

    // Unhealthy since 3 s; the check at 8 s deregisters it and the check ends.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(reg.instances("svc").await.expect("list").is_empty());
    assert!(manager.status().is_empty());
    assert!(own.is_finished());
}

#[test]
fn only_the_live_generation_publishes() {
    let mut st = States::default();
    let key: Key = ("svc".into(), "a".into());
    let first = st.start(key.clone());
    assert!(st.may_publish(&key, Some(first)));
    let second = st.start(key.clone());
    assert!(!st.may_publish(&key, Some(first)), "replaced");
    assert!(st.may_publish(&key, Some(second)));
    st.forget(&key);
    assert!(!st.may_publish(&key, Some(second)), "forgotten");
    assert!(st.may_publish(&key, None), "own checks always publish");
}

#[tokio::test(start_paused = true)]
async fn a_moved_instance_is_checked_afresh() {
    let (reg, client) = setup(1).await;
    let checker = HealthChecker::builder().jitter(0.0).build(client.clone());
    let mut rx = checker.subscribe();
    let probe = Scripted::with_delay(Duration::ZERO);
    probe.set_down(&id(1), true);
    checker
        .watch_with("svc", check(1000), probe.clone())
        .await
        .expect("watch");
    assert_eq!(next(&mut rx).await.to, HealthStatus::Unhealthy);
    // Same id, new address: the old verdict is dropped and the new address probed.
    let moved = ServiceConfig::new("svc", "127.0.0.2", 1)
        .instance()
        .with_id(id(1));
    probe.set_down(&id(1), false);
    reg.register(&moved).await.expect("re-register");
    let t = next(&mut rx).await;
    assert_eq!(
        (t.from, t.to),
        (HealthStatus::Unknown, HealthStatus::Healthy)
    );
    let last = lock(&probe.starts).len();
    assert!(last >= 2);
}

#[tokio::test]
async fn ttl_checks_have_no_probe() {
    let (_reg, client) = setup(0).await;
    let checker = HealthChecker::new(client);
    let err = checker
        .watch("svc", HealthCheck::ttl(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TTL"), "{err}");
}
