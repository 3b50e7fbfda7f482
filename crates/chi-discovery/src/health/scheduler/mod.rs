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
//! Where results go. [`HealthChecker::watch`] follows a service through a [`Membership`] (the
//! [`DiscoveryClient`](crate::DiscoveryClient) is one): instances that appear are checked,
//! instances that leave are dropped (and their verdicts cleared), and every transition is laid over
//! the discovery snapshot. [`HealthChecker::check_own`] checks this process's own registration and
//! reports to a [`HealthSink`] (the [`ServiceManager`](crate::ServiceManager), which each backend
//! maps onto its mechanism: Consul TTL pass/fail, Nacos healthy flag, etcd lease). Both honour
//! `deregister_critical_service_after` (Consul's `DeregisterCriticalServiceAfter`): an instance
//! unhealthy for that long is deregistered from the registry.

mod task;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;

use super::{CheckError, HealthSink, Membership, Probe, Thresholds, probe_for};
use crate::error::Result;
use crate::instance::{HealthCheck, HealthStatus, Instance};
use crate::util::{AbortOnDrop, lock};
use task::{follow, run_instance};

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
pub struct CheckerBuilder {
    thresholds: Thresholds,
    max_concurrency: usize,
    jitter: f64,
}

impl CheckerBuilder {
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

    /// A checker of this process's own registrations only ([`HealthChecker::check_own`]): it
    /// follows no membership, and [`HealthChecker::watch`] answers an error. The
    /// [`ServiceManager`](crate::ServiceManager) runs its registrations' checks on one.
    pub fn build_for_own(self) -> HealthChecker {
        self.build(NoMembership)
    }

    /// The checker.
    pub fn build(self, client: impl Membership) -> HealthChecker {
        let (events, _) = broadcast::channel(1024);
        HealthChecker {
            inner: Arc::new(Inner {
                client: Arc::new(client),
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

/// The membership of a checker built for own registrations: there is none to follow.
struct NoMembership;

#[async_trait::async_trait]
impl HealthSink for NoMembership {
    fn set_health(&self, _service: &str, _id: &str, _health: HealthStatus) {}

    async fn deregister(&self, _service: &str, _id: &str) -> Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Membership for NoMembership {
    async fn watch(&self, service: &str) -> Result<crate::registry::WatchStream> {
        Err(crate::error::Error::invalid(
            "health checker",
            service,
            "was built for own registrations only (CheckerBuilder::build_for_own) and follows no service",
        ))
    }

    fn clear_health(&self, _service: &str, _id: &str) {}

    async fn reload(&self, _service: &str) -> Result<()> {
        Ok(())
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
    client: Arc<dyn Membership>,
    thresholds: Thresholds,
    jitter: f64,
    permits: Arc<Semaphore>,
    events: broadcast::Sender<Transition>,
    states: Mutex<States>,
    services: Mutex<HashMap<String, AbortOnDrop>>,
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

impl HealthChecker {
    /// A checker with the default thresholds, concurrency and jitter.
    pub fn new(client: impl Membership) -> Self {
        Self::builder().build(client)
    }

    /// A builder for other settings.
    pub fn builder() -> CheckerBuilder {
        CheckerBuilder {
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
        let task = AbortOnDrop::spawn(follow(
            self.inner.clone(),
            service.to_owned(),
            check,
            probe,
            watcher,
        ));
        lock(&self.inner.services).insert(service.to_owned(), task);
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
                if let Err(e) = client.reload(&service).await {
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
            self.inner.client.clear_health(service, &key.1);
        }
    }

    /// Checks this process's own registration `instance` with the built-in probe for `check`;
    /// results go to `sink` (the [`ServiceManager`](crate::ServiceManager) it is registered with,
    /// which reports them with its keep-alives), and with `deregister_critical_service_after` the
    /// registration is deregistered after that long unhealthy. Runs until the returned handle is
    /// dropped.
    pub fn check_own(
        &self,
        sink: Arc<dyn HealthSink>,
        instance: Instance,
        check: HealthCheck,
    ) -> Result<OwnCheck> {
        let probe = probe_for(&check)?;
        Ok(self.check_own_with(sink, instance, check, probe))
    }

    /// [`HealthChecker::check_own`] with a custom probe.
    pub fn check_own_with(
        &self,
        sink: Arc<dyn HealthSink>,
        instance: Instance,
        check: HealthCheck,
        probe: Arc<dyn Probe>,
    ) -> OwnCheck {
        let key = (instance.name.clone(), instance.id.clone());
        let task = AbortOnDrop::spawn(run_instance(
            self.inner.clone(),
            instance,
            check,
            probe,
            sink,
            None,
        ));
        OwnCheck {
            task,
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
    task: AbortOnDrop,
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
        self.task.is_finished()
    }

    /// Stops the check.
    pub fn stop(self) {}
}

#[cfg(test)]
mod tests;
