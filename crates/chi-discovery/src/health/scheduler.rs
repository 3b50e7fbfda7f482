//! The scheduler: runs probes at their interval and publishes what they decide.
//!
//! One task per checked instance runs a plain loop (probe, record, wait), so two checks of one
//! instance can never overlap, and a slow probe delays only its own instance. A semaphore shared
//! by all instances bounds how many probes are in flight (default 32), so a service of 5,000
//! instances does not open 5,000 connections at once.
//!
//! Timing. Checks start every `interval`, measured from the start of the previous one. Jitter
//! (default 10 %, HAProxy's `spread-checks`) spreads the checks of many instances apart: the first
//! check of an instance waits a random `[0, jitter × interval)`, and every later wait is shortened
//! by a random `[0, jitter × interval)`. Jitter only ever *shortens* a wait, so the documented
//! detection bound holds: an instance that dies is marked unhealthy within
//! `interval × fall + timeout` (plus any wait for a concurrency permit), and comes back within
//! `interval × rise + timeout` of recovering.
//!
//! Where results go. [`HealthChecker::watch`] follows a service through
//! [`DiscoveryClient::watch`]: instances that appear are checked, instances that leave are
//! dropped (and their overlay cleared), and every transition is laid over the discovery snapshot
//! with [`DiscoveryClient::set_health`]. [`HealthChecker::check_own`] checks this process's own
//! registration and reports through [`ServiceManager::set_health`], which each backend maps onto
//! its mechanism (Consul TTL pass/fail, Nacos healthy flag, etcd lease). Both honour
//! `deregister_critical_service_after` (Consul's `DeregisterCriticalServiceAfter`): an instance
//! unhealthy for that long is deregistered from the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{CheckError, HealthState, Probe, Thresholds, probe_for};
use crate::discovery::{DiscoveryClient, Watcher};
use crate::error::Result;
use crate::instance::{HealthCheck, HealthStatus, Instance};
use crate::manager::ServiceManager;
use crate::registry::Change;

/// Default bound on probes in flight.
pub const DEFAULT_MAX_CONCURRENCY: usize = 32;
/// Default jitter, as a fraction of the interval.
pub const DEFAULT_JITTER: f64 = 0.1;

/// A change of status decided by an active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Status before.
    pub from: HealthStatus,
    /// Status after.
    pub to: HealthStatus,
    /// When it was decided.
    pub at: Instant,
    /// The failure that decided it (`None` for a transition to healthy).
    pub reason: Option<CheckError>,
}

/// What the checker knows about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    /// Current status.
    pub status: HealthStatus,
    /// Since when.
    pub since: Instant,
    /// Consecutive successes.
    pub successes: u32,
    /// Consecutive failures.
    pub failures: u32,
    /// Probes run.
    pub checks: u64,
    /// Why the last probe failed, if it did.
    pub last_error: Option<CheckError>,
}

/// Builds a [`HealthChecker`].
#[derive(Debug, Clone)]
pub struct Builder {
    thresholds: Thresholds,
    max_concurrency: usize,
    jitter: f64,
}

impl Builder {
    /// Rise / fall thresholds (default rise 2, fall 3).
    pub fn thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Most probes in flight at once (default 32, at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Jitter as a fraction of the interval, `0.0..=0.5` (default 0.1; 0 for exact timing).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        self
    }

    /// The checker.
    pub fn build(self, client: DiscoveryClient) -> HealthChecker {
        let (events, _) = broadcast::channel(1024);
        HealthChecker {
            inner: Arc::new(Inner {
                client,
                thresholds: self.thresholds,
                jitter: self.jitter,
                permits: Arc::new(Semaphore::new(self.max_concurrency)),
                events,
                states: Mutex::new(States::default()),
                services: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Runs active health checks; see the module docs. Dropping it stops every watch and clears
/// the health it laid over discovery ([`OwnCheck`]s live as long as their handle).
pub struct HealthChecker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("thresholds", &self.inner.thresholds)
            .field("jitter", &self.inner.jitter)
            .field(
                "services",
                &lock(&self.inner.services).keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: DiscoveryClient,
    thresholds: Thresholds,
    jitter: f64,
    permits: Arc<Semaphore>,
    events: broadcast::Sender<Transition>,
    states: Mutex<States>,
    services: Mutex<HashMap<String, Task>>,
}

type Key = (String, String);

/// What the checks decided, and which check task may still publish for each watched instance.
///
/// A removed instance's task is aborted, but an abort lands at the task's next `.await`; a
/// task that already finished its probe could otherwise lay a stale status over an instance
/// that is gone. Publishing and forgetting both happen under this lock, and a task publishes
/// only while its generation is the live one.
#[derive(Default)]
struct States {
    health: HashMap<Key, InstanceHealth>,
    live: HashMap<Key, u64>,
    next_generation: u64,
}

impl States {
    /// Registers a new check task for `key`; the previous one (if any) may no longer publish.
    fn start(&mut self, key: Key) -> u64 {
        self.next_generation += 1;
        self.live.insert(key, self.next_generation);
        self.next_generation
    }

    /// Stops `key` from publishing and forgets what it decided.
    fn forget(&mut self, key: &Key) {
        self.live.remove(key);
        self.health.remove(key);
    }

    fn may_publish(&self, key: &Key, generation: Option<u64>) -> bool {
        generation.is_none_or(|g| self.live.get(key) == Some(&g))
    }
}

/// A task aborted when dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one instance's results go.
#[derive(Clone)]
enum Sink {
    /// Another service's instance: the discovery overlay; deregistration through the registry.
    Discovery(DiscoveryClient),
    /// This process's own registration: the service manager.
    Own(Arc<ServiceManager>),
}

impl HealthChecker {
    /// A checker with the default thresholds, concurrency and jitter.
    pub fn new(client: DiscoveryClient) -> Self {
        Self::builder().build(client)
    }

    /// A builder for other settings.
    pub fn builder() -> Builder {
        Builder {
            thresholds: Thresholds::default(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            jitter: DEFAULT_JITTER,
        }
    }

    /// Checks every instance of `service` with the built-in probe for `check`, following the
    /// service as instances come and go. Watching a service again replaces the previous check.
    pub async fn watch(&self, service: &str, check: HealthCheck) -> Result<()> {
        let probe = probe_for(&check)?;
        self.watch_with(service, check, probe).await
    }

    /// [`HealthChecker::watch`] with a custom probe; `check` gives the interval, the timeout and
    /// `deregister_critical_service_after` (its target is ignored).
    pub async fn watch_with(
        &self,
        service: &str,
        check: HealthCheck,
        probe: Arc<dyn Probe>,
    ) -> Result<()> {
        let watcher = self.inner.client.watch(service).await?;
        // Replacing a watch: the old tasks must stop publishing before the new ones start.
        let previous = lock(&self.inner.services).remove(service);
        if previous.is_some() {
            drop(previous);
            self.clear(service);
        }
        let task = tokio::spawn(follow(
            self.inner.clone(),
            service.to_owned(),
            check,
            probe,
            watcher,
        ));
        lock(&self.inner.services).insert(service.to_owned(), Task(task));
        Ok(())
    }

    /// Stops checking `service` and clears the health chi laid over its instances. The cached
    /// list still carries the last verdicts until it is reloaded, so a refresh from the registry
    /// is started at once (when called inside a tokio runtime).
    pub fn unwatch(&self, service: &str) {
        drop(lock(&self.inner.services).remove(service));
        self.clear(service);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.inner.client.clone();
            let service = service.to_owned();
            rt.spawn(async move {
                if let Err(e) = client.refresh(&service).await {
                    tracing::debug!(%service, error = %e, "refresh after unwatch failed");
                }
            });
        }
    }

    fn clear(&self, service: &str) {
        let mut states = lock(&self.inner.states);
        let keys: Vec<Key> = states
            .live
            .keys()
            .chain(states.health.keys())
            .filter(|(s, _)| s == service)
            .cloned()
            .collect();
        for key in keys {
            states.forget(&key);
            self.inner.client.set_health(service, &key.1, None);
        }
    }

    /// Checks this process's own registration `instance` (as registered with `manager`) with the
    /// built-in probe for `check`; results go to [`ServiceManager::set_health`], and with
    /// `deregister_critical_service_after` the registration is deregistered after that long
    /// unhealthy. Runs until the returned handle is dropped.
    pub fn check_own(
        &self,
        manager: Arc<ServiceManager>,
        instance: Instance,
        check: HealthCheck,
    ) -> Result<OwnCheck> {
        let probe = probe_for(&check)?;
        Ok(self.check_own_with(manager, instance, check, probe))
    }

    /// [`HealthChecker::check_own`] with a custom probe.
    pub fn check_own_with(
        &self,
        manager: Arc<ServiceManager>,
        instance: Instance,
        check: HealthCheck,
        probe: Arc<dyn Probe>,
    ) -> OwnCheck {
        let key = (instance.name.clone(), instance.id.clone());
        let task = tokio::spawn(run_instance(
            self.inner.clone(),
            instance,
            check,
            probe,
            Sink::Own(manager),
            None,
        ));
        OwnCheck {
            task: Task(task),
            key,
            inner: self.inner.clone(),
        }
    }

    /// Every transition from now on (a lagging receiver misses the oldest ones).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// What the checker knows about one instance.
    pub fn health(&self, service: &str, id: &str) -> Option<InstanceHealth> {
        lock(&self.inner.states)
            .health
            .get(&(service.to_owned(), id.to_owned()))
            .cloned()
    }

    /// What the checker knows about every checked instance of `service`, by id.
    pub fn service_health(&self, service: &str) -> Vec<(String, InstanceHealth)> {
        let mut out: Vec<(String, InstanceHealth)> = lock(&self.inner.states)
            .health
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, id), h)| (id.clone(), h.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Drop for HealthChecker {
    /// Stops every watch and clears the health it laid over discovery: a verdict nobody keeps
    /// up to date must not hold an instance out of rotation forever.
    fn drop(&mut self) {
        let services: Vec<String> = lock(&self.inner.services).keys().cloned().collect();
        for service in services {
            self.unwatch(&service);
        }
    }
}

/// The check of this process's own registration; dropping it stops the check.
#[derive(Debug)]
pub struct OwnCheck {
    task: Task,
    key: (String, String),
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

impl OwnCheck {
    /// What the check knows so far.
    pub fn health(&self) -> Option<InstanceHealth> {
        lock(&self.inner.states).health.get(&self.key).cloned()
    }

    /// True once the check has ended (after deregistering a critical instance).
    pub fn is_finished(&self) -> bool {
        self.task.0.is_finished()
    }

    /// Stops the check.
    pub fn stop(self) {}
}

/// Follows one service's membership, with one checking task per instance.
async fn follow(
    inner: Arc<Inner>,
    service: String,
    check: HealthCheck,
    probe: Arc<dyn Probe>,
    mut watcher: Watcher,
) {
    let mut running: HashMap<String, (Instance, Task)> = HashMap::new();
    let sink = Sink::Discovery(inner.client.clone());
    let forget = |id: &str| {
        let mut states = lock(&inner.states);
        states.forget(&(service.clone(), id.to_owned()));
        inner.client.set_health(&service, id, None);
    };
    let start = |mut i: Instance| {
        // The key is the watched name, whatever the registry put in the instance.
        i.name = service.clone();
        let generation = lock(&inner.states).start((service.clone(), i.id.clone()));
        Task(tokio::spawn(run_instance(
            inner.clone(),
            i,
            check.clone(),
            probe.clone(),
            sink.clone(),
            Some(generation),
        )))
    };
    while let Some(event) = watcher.next().await {
        let upserts = match event {
            Ok(Change::Reset(all)) => {
                let keep: std::collections::HashSet<&str> =
                    all.iter().map(|i| i.id.as_str()).collect();
                let gone: Vec<String> = running
                    .keys()
                    .filter(|id| !keep.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    running.remove(&id);
                    forget(&id);
                }
                all
            }
            Ok(Change::Add(i) | Change::Update(i)) => vec![i],
            Ok(Change::Remove(i)) => {
                if running.remove(&i.id).is_some() {
                    forget(&i.id);
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(%service, error = %e, "health checker's watch reports an error; it resyncs on its own");
                continue;
            }
        };
        for i in upserts {
            let same_target = running
                .get(&i.id)
                .is_some_and(|(old, _)| old.address == i.address && old.port == i.port);
            if !same_target {
                if running.remove(&i.id).is_some() {
                    // Moved to another address: its old results say nothing about the new one.
                    forget(&i.id);
                }
                let task = start(i.clone());
                running.insert(i.id.clone(), (i, task));
            }
        }
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    interval.mul_f64(1.0 - rand::random::<f64>() * jitter)
}

/// Checks one instance until aborted (or until it is deregistered as critical).
async fn run_instance(
    inner: Arc<Inner>,
    instance: Instance,
    check: HealthCheck,
    probe: Arc<dyn Probe>,
    sink: Sink,
    generation: Option<u64>,
) {
    let interval = check.interval.max(Duration::from_millis(1));
    let timeout = check.timeout.max(Duration::from_millis(1));
    let key = (instance.name.clone(), instance.id.clone());
    let mut state = HealthState::new(inner.thresholds);
    let mut checks: u64 = 0;
    if inner.jitter > 0.0 {
        tokio::time::sleep(interval.mul_f64(rand::random::<f64>() * inner.jitter)).await;
    }
    loop {
        let started = Instant::now();
        let result = {
            let Ok(_permit) = inner.permits.acquire().await else {
                return;
            };
            match tokio::time::timeout(timeout, probe.check(&instance)).await {
                Ok(r) => r,
                Err(_) => Err(CheckError::Timeout { after: timeout }),
            }
        };
        checks += 1;
        let from = state.status();
        let changed = state.record(result.is_ok());
        let error = result.err();
        {
            let mut states = lock(&inner.states);
            if !states.may_publish(&key, generation) {
                return;
            }
            states.health.insert(
                key.clone(),
                InstanceHealth {
                    status: state.status(),
                    since: state.since(),
                    successes: state.successes(),
                    failures: state.failures(),
                    checks,
                    last_error: error.clone(),
                },
            );
            if let Some(to) = changed {
                match &sink {
                    Sink::Discovery(client) => client.set_health(&key.0, &key.1, Some(to)),
                    Sink::Own(manager) => manager.set_health(&key.1, to),
                }
            }
        }
        if let Some(to) = changed {
            match to {
                HealthStatus::Healthy => {
                    tracing::info!(service = %key.0, id = %key.1, probe = probe.kind(), "instance is healthy")
                }
                _ => {
                    tracing::warn!(service = %key.0, id = %key.1, probe = probe.kind(), error = ?error, "instance is unhealthy")
                }
            }
            let _ = inner.events.send(Transition {
                service: key.0.clone(),
                id: key.1.clone(),
                from,
                to,
                at: state.since(),
                reason: if to == HealthStatus::Healthy {
                    None
                } else {
                    error
                },
            });
        }
        if let Some(after) = check.deregister_critical_service_after
            && state.status() == HealthStatus::Unhealthy
            && state.elapsed() >= after
        {
            tracing::warn!(service = %key.0, id = %key.1, ?after, "critical too long; deregistering");
            let result = match &sink {
                Sink::Discovery(client) => client.registry().deregister(&key.0, &key.1).await,
                Sink::Own(manager) => manager.deregister(&key.0, &key.1).await,
            };
            match result {
                Ok(()) => {
                    let mut states = lock(&inner.states);
                    if states.may_publish(&key, generation) {
                        states.health.remove(&key);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(service = %key.0, id = %key.1, error = %e, "deregistration failed; will retry")
                }
            }
        }
        tokio::time::sleep_until(started + jittered(interval, inner.jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{Filter, ServiceConfig};
    use crate::registry::{Memory, Registry};
    use async_trait::async_trait;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let manager = Arc::new(
            ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_secs(1)),
        );
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
}
