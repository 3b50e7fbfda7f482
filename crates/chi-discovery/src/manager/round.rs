//! The keep-alive rounds: one loop per backend, each at the manager's interval, keeping alive
//! what the backend holds and registering again what it lost or never took.
//!
//! Each backend has its own loop so that a backend that is down, whose calls wait for their
//! timeouts, never delays the keep-alives of the others. One round over every backend waited
//! for its slowest call: a dead backend's timeouts (5 s by default) were added to the gap
//! between two renewals of a healthy etcd's leases (10 s by default, renewed every 3.3 s), and
//! with 1,000 instances at 64 calls at a time, a round of timeouts lasts over a minute.
//!
//! Every call's outcome moves the backend's state ([`settle`]); a change of state (registered,
//! failing, registered again after a loss) is logged and sent to the manager's subscribers
//! ([`BackendEvent`]).

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::report::{BackendChange, BackendEvent};
use super::{BackendState, Inner};
use crate::error::Error;
use crate::instance::{HealthCheck, HealthStatus, Instance};
use crate::registry::Liveness;
use crate::retry::RetryPolicy;

/// How many keep-alive / registration calls one round runs at once. Unbounded, a process with
/// 1,000 instances opened hundreds of HTTP connections to its Consul agent each round, and the
/// agent closes connections beyond `limits.http_max_conns_per_client` (200): registrations
/// failed with "connection closed before message completed" and kept failing on retry.
const ROUND_CONCURRENCY: usize = 64;

enum Work {
    KeepAlive,
    Register,
}

/// One call of a round: keep alive or register one instance on the round's backend.
struct Job {
    id: String,
    generation: u64,
    instance: Instance,
    health: HealthStatus,
    checks: Vec<HealthCheck>,
    work: Work,
}

/// Backend `idx`'s loop: a round every `interval`, or at once when woken, until the manager is
/// gone.
pub(super) async fn run(inner: Weak<Inner>, idx: usize, interval: Duration) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let wake = inner.wake[idx].notified();
        tokio::pin!(wake);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut wake => {}
        }
        inner.round(idx).await;
    }
}

/// Applies one call's outcome (`Ok(true)`: the instance was registered, not only kept alive)
/// to a backend's state, and answers the change to report, if the state changed.
pub(super) fn settle(
    st: &mut BackendState,
    outcome: std::result::Result<bool, &Error>,
    now: Instant,
    retry: &RetryPolicy,
) -> Option<BackendChange> {
    match outcome {
        Ok(registered) => {
            let change = if registered && st.registered {
                st.reregistrations += 1;
                Some(BackendChange::Reregistered)
            } else if !st.registered || st.failures > 0 {
                Some(BackendChange::Registered)
            } else {
                None
            };
            st.registered = true;
            st.failures = 0;
            st.last_error = None;
            change
        }
        Err(e) => {
            st.failures = st.failures.saturating_add(1);
            st.errors += 1;
            st.next_attempt = now + retry.delay(st.failures);
            let error = e.to_string();
            st.last_error = Some(error.clone());
            (st.failures == 1).then_some(BackendChange::Failing { error })
        }
    }
}

impl Inner {
    /// Logs `change` of `instance` on backend `idx` and tells the subscribers.
    pub(super) fn report(&self, instance: &Instance, idx: usize, change: BackendChange) {
        let backend = self.backends[idx].backend();
        let (service, id) = (&instance.name, &instance.id);
        match &change {
            BackendChange::Registered => {
                tracing::info!(backend, %service, %id, "registered");
            }
            BackendChange::Reregistered => {
                tracing::info!(backend, %service, %id, "the registry had lost the registration; registered again");
            }
            BackendChange::Failing { error } => {
                tracing::warn!(backend, %service, %id, %error, "registration failing; retrying");
            }
        }
        // No subscriber is not an error.
        let _ = self.events.send(BackendEvent {
            service: service.clone(),
            id: id.clone(),
            backend: backend.to_owned(),
            change,
        });
    }

    /// One pass over every instance on backend `idx`: keep alive what it holds, register what
    /// is due. Calls run concurrently (at most [`ROUND_CONCURRENCY`] at once) and without the
    /// lock held.
    pub(super) async fn round(&self, idx: usize) {
        let now = Instant::now();
        let jobs: Vec<Job> = {
            let state = self.lock();
            let mut jobs = Vec::new();
            for (id, m) in state.iter() {
                let st = &m.backends[idx];
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
                    instance,
                    health: m.health,
                    checks: st.checks.clone(),
                    work,
                });
            }
            jobs
        };
        let backend = &self.backends[idx];
        let results: Vec<_> = futures_util::stream::iter(jobs.into_iter().map(|job| async move {
            let Job { id, generation, instance, health, checks, work } = job;
            let _write = self.writes.lock(&(id.clone(), idx)).await;
            // Under the lock, with what is managed now: deregistered or replaced meanwhile,
            // this job is stale and the next round does what is due.
            let unchanged = self
                .lock()
                .get(&id)
                .is_some_and(|m| m.generation == generation && m.health == health);
            if !unchanged {
                return (id, generation, None);
            }
            let outcome = match work {
                Work::KeepAlive => match backend.keep_alive(&instance, health).await {
                    Ok(Liveness::Alive) => Ok(false),
                    Ok(Liveness::Lost) => {
                        tracing::debug!(backend = backend.backend(), %id, "registration lost; registering again");
                        backend.register_with_checks(&instance, &checks).await.map(|()| true)
                    }
                    Err(e) => Err(e),
                },
                Work::Register => backend.register_with_checks(&instance, &checks).await.map(|()| true),
            };
            (id, generation, Some(outcome))
        }))
        .buffer_unordered(ROUND_CONCURRENCY)
        .collect()
        .await;

        // Every call ran under its instance's write lock, after checking that the instance was
        // still the one the job was made for; a deregistration or a new registration waited for
        // it. What changed since then made a new state: this outcome belongs to the old one.
        let now = Instant::now();
        let mut changes = Vec::new();
        {
            let mut state = self.lock();
            for (id, generation, outcome) in results {
                let Some(outcome) = outcome else {
                    continue;
                };
                let Some(m) = state.get_mut(&id).filter(|m| m.generation == generation) else {
                    continue;
                };
                if let Err(e) = &outcome
                    && m.backends[idx].failures > 0
                {
                    tracing::debug!(backend = backend.backend(), %id, error = %e, failures = m.backends[idx].failures + 1, "registration still failing");
                }
                if let Some(change) = settle(
                    &mut m.backends[idx],
                    outcome.as_ref().copied(),
                    now,
                    &self.retry,
                ) {
                    changes.push((m.instance.clone(), change));
                }
            }
        }
        for (instance, change) in changes {
            self.report(&instance, idx, change);
        }
    }
}
