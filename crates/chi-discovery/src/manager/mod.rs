//! The registration lifecycle: register, keep alive, re-register, deregister on shutdown.
//!
//! A [`ServiceManager`] owns the instances this process registered. One background task keeps each
//! of them alive on each backend at the backend's [`keep_alive_interval`](Registry::keep_alive_interval):
//!
//! - a backend that answers [`Liveness::Lost`] (lease expired, agent restarted, registry wiped) gets
//!   the instance registered again at once;
//! - a backend that failed to register is retried with exponential backoff ([`RetryPolicy`]) until
//!   it succeeds, while the other backends keep serving the registration;
//! - [`ServiceManager::shutdown`] deregisters everything, on every backend.
//!
//! With a [`MultiRegistry`](crate::registry::MultiRegistry) the manager tracks every member apart
//! (through [`Registry::members`]), so one dead backend is retried alone.
//!
//! A registration's [`HealthCheck`] runs where its registry expects it (the `checks` module): Consul's agent
//! runs it itself (and reaps the instance after `deregister_critical_service_after`); for etcd,
//! Nacos and the embedded registry the manager probes in this process and reports the verdict
//! with each keep-alive (the instance's health in etcd, Nacos' healthy flag). The service itself
//! can report too, with [`ServiceManager::set_health`] (a TTL check).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::health::{HealthChecker, HealthSink, InstanceHealth, OwnCheck, probe_for};
use crate::instance::{HealthCheck, HealthStatus, Instance, ServiceConfig};
use crate::keyed::KeyedLocks;
use crate::registry::{Liveness, Registry};
use crate::retry::RetryPolicy;
use crate::util::{AbortOnDrop, lock};

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
    backends: Vec<Arc<dyn Registry>>,
    /// Runs the probes of registrations whose check no backend runs itself.
    checker: HealthChecker,
    interval: Duration,
    retry: RetryPolicy,
    state: Mutex<HashMap<String, Managed>>,
    wake: Notify,
    /// Source of [`Managed::generation`].
    generations: std::sync::atomic::AtomicU64,
    /// One lock per instance id, held across every backend write of that instance
    /// (registration, keep-alive, deregistration), so that two writers never race and an older
    /// copy never lands after a newer one or after a deregistration.
    writes: KeyedLocks<String>,
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
        }
    }
}

/// The outcome of one registration on each backend.
#[derive(Debug)]
pub struct RegistrationReport {
    /// The registered instance's id.
    pub id: String,
    /// `(backend, result)` for every backend, in the registry's order.
    pub results: Vec<(String, Result<()>)>,
}

impl RegistrationReport {
    /// True if every backend holds the registration.
    pub fn is_complete(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// Backends that failed (they are retried in the background).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(b, r)| r.as_ref().err().map(|e| (b.as_str(), e)))
    }
}

/// Where one registration stands on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// Backend name.
    pub backend: String,
    /// True when the backend holds the registration.
    pub registered: bool,
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// How many times the instance was registered again after the backend lost it.
    pub reregistrations: u64,
}

/// One managed registration and its per-backend status.
#[derive(Debug, Clone)]
pub struct RegistrationStatus {
    /// The instance.
    pub instance: Instance,
    /// Health reported with keep-alives.
    pub health: HealthStatus,
    /// True when chi probes the registration in this process (no backend runs its check).
    pub probed_here: bool,
    /// What that probe knows (`None` before its first verdict, or with no probe).
    pub probe: Option<InstanceHealth>,
    /// One entry per backend.
    pub backends: Vec<BackendStatus>,
}

impl ServiceManager {
    /// A manager over `registry` (a [`MultiRegistry`](crate::registry::MultiRegistry)'s members
    /// are tracked one by one). Keep-alives run at the fastest interval the backends ask for.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let backends: Vec<Arc<dyn Registry>> = match registry.members() {
            Some(members) => members.to_vec(),
            None => vec![registry],
        };
        let interval = backends
            .iter()
            .map(|b| b.keep_alive_interval())
            .min()
            .unwrap_or(Duration::from_secs(5));
        ServiceManager {
            inner: Arc::new(Inner {
                checker: HealthChecker::builder().build_for_own(),
                backends,
                interval,
                retry: RetryPolicy::default(),
                state: Mutex::new(HashMap::new()),
                writes: KeyedLocks::new(),
                wake: Notify::new(),
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
    /// Returns the per-backend report when at least one backend holds the registration, and
    /// [`Error::Backends`] when none does; either way the instance stays managed, and failed
    /// backends are retried in the background until [`ServiceManager::deregister`]. A check
    /// that cannot run (`checked_by: registry` on etcd, an HTTP check without the `http`
    /// feature) is an error before anything is registered.
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
        let plan = checks::plan(&self.inner.backends, check)?;
        let probe = plan.local.as_ref().map(probe_for).transpose()?;
        self.ensure_task();
        let _write = self.inner.writes.lock(&instance.id).await;
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
        for ((backend, result), checks) in self
            .inner
            .backends
            .iter()
            .zip(results)
            .zip(plan.registry_checks)
        {
            let mut st = BackendState::new(checks);
            match &result {
                Ok(()) => st.registered = true,
                Err(e) => {
                    tracing::warn!(backend = backend.backend(), id = %instance.id, error = %e, "registration failed; will retry");
                    st.failures = 1;
                    st.next_attempt = now + self.inner.retry.delay(1);
                    st.last_error = Some(e.to_string());
                }
            }
            states.push(st);
            report.push((backend.backend().to_owned(), result));
        }
        let id = instance.id.clone();
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
        self.inner.wake.notify_one();
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
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        out
    }

    /// Runs one keep-alive round now (the background task does this every interval).
    pub async fn tick(&self) {
        self.inner.round().await;
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
        *slot = Some(AbortOnDrop::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let wake = inner.wake.notified();
                tokio::pin!(wake);
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = &mut wake => {}
                }
                inner.round().await;
            }
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

/// How many keep-alive / registration calls one round runs at once. Unbounded, a process with
/// 1,000 instances opened hundreds of HTTP connections to its Consul agent each round, and the
/// agent closes connections beyond `limits.http_max_conns_per_client` (200): registrations
/// failed with "connection closed before message completed" and kept failing on retry.
const ROUND_CONCURRENCY: usize = 64;

enum Work {
    KeepAlive,
    Register,
}

/// One call of a round: keep alive or register one instance on one backend.
struct Job {
    id: String,
    generation: u64,
    idx: usize,
    instance: Instance,
    health: HealthStatus,
    checks: Vec<HealthCheck>,
    work: Work,
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
            self.wake.notify_one();
        }
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let _write = self.writes.lock(&id.to_owned()).await;
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

    /// One pass over every (instance, backend): keep alive what is registered, register what is
    /// due. Calls run concurrently (at most [`ROUND_CONCURRENCY`] at once) and without the lock
    /// held.
    async fn round(&self) {
        let now = Instant::now();
        let jobs: Vec<Job> = {
            let state = self.lock();
            let mut jobs = Vec::new();
            for (id, m) in state.iter() {
                for (idx, st) in m.backends.iter().enumerate() {
                    let work = if st.registered {
                        Work::KeepAlive
                    } else if st.next_attempt <= now {
                        Work::Register
                    } else {
                        continue;
                    };
                    let mut instance = m.instance.clone();
                    instance.health = m.health;
                    jobs.push(Job {
                        id: id.clone(),
                        generation: m.generation,
                        idx,
                        instance,
                        health: m.health,
                        checks: st.checks.clone(),
                        work,
                    });
                }
            }
            jobs
        };
        let results: Vec<_> = futures_util::stream::iter(jobs.into_iter().map(|Job { id, generation, idx, instance: inst, health, checks, work }| async move {
            let backend = &self.backends[idx];
            let _write = self.writes.lock(&id).await;
            // Under the lock, with what is managed now: deregistered or replaced meanwhile,
            // this job is stale and the next round does what is due.
            let unchanged = self
                .lock()
                .get(&id)
                .is_some_and(|m| m.generation == generation && m.health == health);
            if !unchanged {
                return (id, generation, idx, None);
            }
            let outcome = match work {
                Work::KeepAlive => match backend.keep_alive(&inst, health).await {
                    Ok(Liveness::Alive) => Ok(false),
                    Ok(Liveness::Lost) => {
                        tracing::info!(backend = backend.backend(), %id, "registration lost; registering again");
                        backend.register_with_checks(&inst, &checks).await.map(|()| true)
                    }
                    Err(e) => Err(e),
                },
                Work::Register => backend.register_with_checks(&inst, &checks).await.map(|()| true),
            };
            (id, generation, idx, Some(outcome))
        }))
        .buffer_unordered(ROUND_CONCURRENCY)
        .collect()
        .await;

        // Every call ran under its instance's write lock, after checking that the instance was
        // still the one the job was made for; a deregistration or a new registration waited for
        // it. What changed since then made a new state: this outcome belongs to the old one.
        let now = Instant::now();
        let mut state = self.lock();
        for (id, generation, idx, outcome) in results {
            let Some(outcome) = outcome else {
                continue;
            };
            let Some(m) = state.get_mut(&id).filter(|m| m.generation == generation) else {
                continue;
            };
            let st = &mut m.backends[idx];
            match outcome {
                Ok(registered_again) => {
                    if registered_again && st.registered {
                        st.reregistrations += 1;
                    }
                    st.registered = true;
                    st.failures = 0;
                    st.last_error = None;
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    st.next_attempt = now + self.retry.delay(st.failures);
                    st.last_error = Some(e.to_string());
                    if !st.registered {
                        tracing::warn!(backend = self.backends[idx].backend(), %id, error = %e, "registration retry failed");
                    } else {
                        tracing::warn!(backend = self.backends[idx].backend(), %id, error = %e, "keep-alive failed");
                    }
                }
            }
        }
    }
}

mod checks;
#[cfg(test)]
mod tests;
