//! The registration lifecycle: register, keep alive, re-register, deregister on shutdown.
//!
//! A [`ServiceManager`] owns the instances this process registered. A background loop per backend
//! keeps each of them alive there, at the fastest
//! [`keep_alive_interval`](Registry::keep_alive_interval) the backends ask for:
//!
//! - a backend that answers [`Liveness::Lost`](crate::registry::Liveness::Lost) (lease expired,
//!   agent restarted, registry wiped) gets the instance registered again at once;
//! - a backend that failed to register is retried with exponential backoff ([`RetryPolicy`]) until
//!   it succeeds, while the other backends keep serving the registration;
//! - [`ServiceManager::shutdown`] deregisters everything, on every backend.
//!
//! With a [`MultiRegistry`](crate::registry::MultiRegistry) the manager tracks every member apart
//! (through [`Registry::members`]), each in a loop of its own (the `round` module), so one dead
//! backend is retried alone and never slows the keep-alives of the others. A registration held
//! by some backends only is a success that says so ([`RegistrationReport`];
//! [`RegistrationReport::require_complete`] makes it an error), and every change of a backend's
//! standing (registered, failing, registered again after a loss) is logged and sent to
//! [`ServiceManager::subscribe`]rs; [`ServiceManager::status`] has the current state.
//! A read-only member ([`Registry::read_only`], DNS) is left out: nothing is registered there,
//! nothing retried, and it never shows as a failed backend; with only read-only registries a
//! registration is refused.
//!
//! A registration's [`HealthCheck`] runs where its registry expects it (the `checks` module): Consul's agent
//! runs it itself (and reaps the instance after `deregister_critical_service_after`); for etcd,
//! Nacos and the embedded registry the manager probes in this process and reports the verdict
//! with each keep-alive (the instance's health in etcd, Nacos' healthy flag). The service itself
//! can report too, with [`ServiceManager::set_health`] (a TTL check).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::health::{HealthChecker, HealthSink, OwnCheck, probe_for};
use crate::instance::{HealthCheck, HealthStatus, Instance, ServiceConfig};
use crate::keyed::{KeyGuard, KeyedLocks};
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::util::{AbortOnDrop, lock};

pub use report::{
    BackendChange, BackendEvent, BackendStatus, RegistrationReport, RegistrationStatus,
};

/// Registers instances and keeps them registered.
pub struct ServiceManager {
    inner: Arc<Inner>,
    /// The keep-alive rounds, stopped on shutdown or when the manager is dropped.
    task: Mutex<Option<AbortOnDrop>>,
}

impl std::fmt::Debug for ServiceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceManager")
            .field(
                "backends",
                &self
                    .inner
                    .backends
                    .iter()
                    .map(|b| b.backend())
                    .collect::<Vec<_>>(),
            )
            .field("interval", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// The backends that take writes.
    backends: Vec<Arc<dyn Registry>>,
    /// The read-only ones' names (DNS), for the refusal when there is no other.
    read_only: String,
    /// Runs the probes of registrations whose check no backend runs itself.
    checker: HealthChecker,
    interval: Duration,
    retry: RetryPolicy,
    state: Mutex<HashMap<String, Managed>>,
    /// Per backend: wakes its keep-alive loop before its interval is up.
    wake: Vec<Notify>,
    /// Changes of a backend's standing, for [`ServiceManager::subscribe`].
    events: broadcast::Sender<BackendEvent>,
    /// Source of [`Managed::generation`].
    generations: std::sync::atomic::AtomicU64,
    /// One lock per instance id and backend, held across every write of that instance to that
    /// backend (registration, keep-alive, deregistration), so that two writers never race and
    /// an older copy never lands after a newer one or after a deregistration. Registering and
    /// deregistering take every backend's lock of the id, in backend order; a keep-alive round
    /// takes its own backend's only, so a backend whose calls hang holds up no other.
    writes: KeyedLocks<(String, usize)>,
}

struct Managed {
    instance: Instance,
    /// Changes with every registration of this id, so a keep-alive round can tell that the
    /// instance was replaced (or deregistered) while its call ran.
    generation: u64,
    health: HealthStatus,
    backends: Vec<BackendState>,
    /// chi's own probe of this registration, when a backend needs it; dropped (and stopped) with
    /// the registration.
    probe: Option<OwnCheck>,
}

#[derive(Debug, Clone)]
struct BackendState {
    /// The checks this backend runs itself, sent with every registration.
    checks: Vec<HealthCheck>,
    registered: bool,
    failures: u32,
    next_attempt: Instant,
    last_error: Option<String>,
    reregistrations: u64,
    errors: u64,
}

impl BackendState {
    fn new(checks: Vec<HealthCheck>) -> Self {
        BackendState {
            checks,
            registered: false,
            failures: 0,
            next_attempt: Instant::now(),
            last_error: None,
            reregistrations: 0,
            errors: 0,
        }
    }
}

/// Events a subscriber may fall behind by before it misses some.
const EVENTS: usize = 1024;

impl ServiceManager {
    /// A manager over `registry` (a [`MultiRegistry`](crate::registry::MultiRegistry)'s members
    /// are tracked one by one). Keep-alives run at the fastest interval the backends ask for.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let (backends, read_only) = crate::registry::multi::split_writers(&registry);
        let interval = backends
            .iter()
            .map(|b| b.keep_alive_interval())
            .min()
            .unwrap_or(Duration::from_secs(5));
        let wake = backends.iter().map(|_| Notify::new()).collect();
        ServiceManager {
            inner: Arc::new(Inner {
                checker: HealthChecker::builder().build_for_own(),
                backends,
                read_only,
                interval,
                retry: RetryPolicy::default(),
                state: Mutex::new(HashMap::new()),
                writes: KeyedLocks::new(),
                wake,
                events: broadcast::channel(EVENTS).0,
                generations: std::sync::atomic::AtomicU64::new(0),
            }),
            task: Mutex::new(None),
        }
    }

    /// Sets the keep-alive interval (default: the backends' own).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.interval = interval.max(Duration::from_millis(1));
        }
        self
    }

    /// Sets the backoff for retrying failed backends.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.retry = retry;
        }
        self
    }

    /// Registers the instance described by `config` on every backend, with its health check
    /// where each backend runs it.
    ///
    /// - Every backend holds it: `Ok`, a [complete](RegistrationReport::is_complete) report.
    /// - Some do (a partial registration): `Ok` too, since the instance can be discovered, with
    ///   a report that names the backends that hold it
    ///   ([`registered`](RegistrationReport::registered)) and those that failed, with their
    ///   errors ([`failures`](RegistrationReport::failures)); each failure is logged at warn
    ///   level. For all or nothing, `.require_complete()?` turns it into
    ///   [`Error::PartialRegistration`].
    /// - None does: [`Error::Backends`], with every backend's error.
    ///
    /// In the last two cases the instance stays managed, and the backends that failed are
    /// retried in the background (with the [`RetryPolicy`]'s backoff) until they hold it or
    /// [`ServiceManager::deregister`] is called; [`ServiceManager::subscribe`] tells when they
    /// do. A check that cannot run (`checked_by: registry` on etcd, an HTTP check without the
    /// `http` feature) is an error before anything is registered, and so is a registry that is
    /// read-only (DNS) with no writable one beside it.
    pub async fn register(&self, config: ServiceConfig) -> Result<RegistrationReport> {
        self.register_checked(config.instance(), config.health_check.as_ref())
            .await
    }

    /// Registers an already built [`Instance`], without a check; see
    /// [`ServiceManager::register`].
    pub async fn register_instance(&self, instance: Instance) -> Result<RegistrationReport> {
        self.register_checked(instance, None).await
    }

    /// Registers `instance` with `check`; see [`ServiceManager::register`].
    pub async fn register_checked(
        &self,
        instance: Instance,
        check: Option<&HealthCheck>,
    ) -> Result<RegistrationReport> {
        instance.validate()?;
        if self.inner.backends.is_empty() {
            return Err(crate::registry::read_only(&self.inner.read_only));
        }
        let plan = checks::plan(&self.inner.backends, check)?;
        let probe = plan.local.as_ref().map(probe_for).transpose()?;
        self.ensure_task();
        let _write = self.inner.lock_writes(&instance.id).await;
        let results = join_all(
            self.inner
                .backends
                .iter()
                .zip(&plan.registry_checks)
                .map(|(b, checks)| b.register_with_checks(&instance, checks)),
        )
        .await;
        let now = Instant::now();
        let mut states = Vec::with_capacity(results.len());
        let mut report = Vec::with_capacity(results.len());
        let mut changes = Vec::with_capacity(results.len());
        for (idx, (result, checks)) in results.into_iter().zip(plan.registry_checks).enumerate() {
            let mut st = BackendState::new(checks);
            let outcome = result.as_ref().map(|()| true);
            changes
                .extend(round::settle(&mut st, outcome, now, &self.inner.retry).map(|c| (idx, c)));
            states.push(st);
            report.push((self.inner.backends[idx].backend().to_owned(), result));
        }
        let id = instance.id.clone();
        let instance_copy = instance.clone();
        let generation = self
            .inner
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            // The probe starts under the lock, so its first verdict cannot arrive before the
            // registration it is about.
            let mut state = self.inner.lock();
            let probe = match (plan.local, probe) {
                (Some(check), Some(probe)) => Some(self.inner.checker.check_own_with(
                    Arc::new(checks::OwnSink {
                        inner: Arc::downgrade(&self.inner),
                        generation,
                    }),
                    instance.clone(),
                    check,
                    probe,
                )),
                _ => None,
            };
            state.insert(
                id.clone(),
                Managed {
                    generation,
                    health: instance.health,
                    instance,
                    backends: states,
                    probe,
                },
            );
        }
        self.inner.wake_all();
        for (idx, change) in changes {
            self.inner.report(&instance_copy, idx, change);
        }
        let report = RegistrationReport {
            id,
            results: report,
        };
        if report.results.iter().any(|(_, r)| r.is_ok()) {
            Ok(report)
        } else {
            Err(Error::Backends {
                failures: report
                    .results
                    .into_iter()
                    .filter_map(|(b, r)| r.err().map(|e| (b, e)))
                    .collect(),
            })
        }
    }

    /// Deregisters an instance from every backend and stops managing it.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.inner.deregister(service, id).await
    }

    /// Sets the health reported with the instance's keep-alives, and reports it at once.
    pub fn set_health(&self, id: &str, health: HealthStatus) {
        self.inner.set_health(id, None, health);
    }

    /// The changes of every registration's standing on each backend from now on (see
    /// [`BackendEvent`]): a backend that took it, one that started failing, one that had lost
    /// it and holds it again. A subscriber that falls more than 1,024 events behind misses the
    /// oldest ([`broadcast`] semantics); [`ServiceManager::status`] has the current state.
    pub fn subscribe(&self) -> broadcast::Receiver<BackendEvent> {
        self.inner.events.subscribe()
    }

    /// Every managed registration and where it stands on each backend.
    pub fn status(&self) -> Vec<RegistrationStatus> {
        let state = self.inner.lock();
        let mut out: Vec<RegistrationStatus> = state
            .values()
            .map(|m| RegistrationStatus {
                instance: m.instance.clone(),
                health: m.health,
                probed_here: m.probe.is_some(),
                probe: m.probe.as_ref().and_then(OwnCheck::health),
                backends: self
                    .inner
                    .backends
                    .iter()
                    .zip(&m.backends)
                    .map(|(b, s)| BackendStatus {
                        backend: b.backend().to_owned(),
                        registered: s.registered,
                        failures: s.failures,
                        last_error: s.last_error.clone(),
                        reregistrations: s.reregistrations,
                        errors: s.errors,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        out
    }

    /// Runs one keep-alive round on every backend now (the background loops do this every
    /// interval).
    pub async fn tick(&self) {
        join_all((0..self.inner.backends.len()).map(|idx| self.inner.round(idx))).await;
    }

    /// Stops keeping instances alive and deregisters all of them from every backend.
    pub async fn shutdown(&self) -> Vec<(String, Result<()>)> {
        drop(self.task_slot().take());
        let all: Vec<(String, String)> = self
            .inner
            .lock()
            .drain()
            .map(|(id, m)| (m.instance.name, id))
            .collect();
        let mut out = Vec::new();
        for (service, id) in all {
            let r = self.deregister(&service, &id).await;
            if let Err(e) = &r {
                tracing::warn!(%service, %id, error = %e, "deregistration on shutdown failed");
            }
            out.push((id, r));
        }
        out
    }

    fn task_slot(&self) -> MutexGuard<'_, Option<AbortOnDrop>> {
        lock(&self.task)
    }

    fn ensure_task(&self) {
        let mut slot = self.task_slot();
        if slot.is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.interval;
        let loops: Vec<_> = (0..self.inner.backends.len())
            .map(|idx| round::run(weak.clone(), idx, interval))
            .collect();
        *slot = Some(AbortOnDrop::spawn(async move {
            join_all(loops).await;
        }));
    }
}

/// Verdicts on this process's own registration are reported with its keep-alives (Consul TTL
/// pass/fail, Nacos healthy flag), and a registration critical for too long is deregistered.
#[async_trait::async_trait]
impl HealthSink for ServiceManager {
    fn set_health(&self, _service: &str, id: &str, health: HealthStatus) {
        ServiceManager::set_health(self, id, health);
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        ServiceManager::deregister(self, service, id).await
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Managed>> {
        lock(&self.state)
    }

    /// Sets the health of `id` (of registration `generation` only, when given: a probe of a
    /// replaced registration does not speak for the new one) and wakes the keep-alives.
    fn set_health(&self, id: &str, generation: Option<u64>, health: HealthStatus) {
        let changed = match self.lock().get_mut(id) {
            Some(m) if m.health != health && generation.is_none_or(|g| g == m.generation) => {
                m.health = health;
                true
            }
            _ => false,
        };
        if changed {
            self.wake_all();
        }
    }

    /// The write locks of `id` on every backend, taken in backend order.
    async fn lock_writes(&self, id: &str) -> Vec<KeyGuard<'_, (String, usize)>> {
        let mut guards = Vec::with_capacity(self.backends.len());
        for idx in 0..self.backends.len() {
            guards.push(self.writes.lock(&(id.to_owned(), idx)).await);
        }
        guards
    }

    /// Wakes every backend's keep-alive loop.
    fn wake_all(&self) {
        for wake in &self.wake {
            wake.notify_one();
        }
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let _write = self.lock_writes(id).await;
        // Kept until the end: when chi's own probe deregisters a critical instance, it runs
        // inside the probe's task, which dropping the registration aborts.
        let removed = self.lock().remove(id);
        let results = join_all(self.backends.iter().map(|b| b.deregister(service, id))).await;
        drop(removed);
        let failures: Vec<(String, Error)> = self
            .backends
            .iter()
            .zip(results)
            .filter_map(|(b, r)| r.err().map(|e| (b.backend().to_owned(), e)))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Backends { failures })
        }
    }
}

mod checks;
mod report;
mod round;
#[cfg(test)]
mod tests;
