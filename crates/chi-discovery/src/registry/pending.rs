//! A member of a multi-registry that could not connect when the process started, connected on
//! its first use after that.
//!
//! With several registries enabled, one that is down at start-up must keep neither the process
//! from starting nor the others from serving: the process registers in the others at once and
//! in the missing one when it comes back. Consul's client and etcd's (without auth) connect
//! lazily and cannot fail there, but Nacos' client makes a real call when it connects (as does
//! etcd's when it logs in), so an unreachable server fails [`connect`](super::connect()). Such a
//! member becomes a [`Pending`]: every call first connects (at most one attempt per
//! [`RETRY_GAP`]; calls in between fail at once with the last attempt's error), and once
//! connected, it is the backend itself. The [`ServiceManager`](crate::ServiceManager) retries
//! the registration there with its backoff, like any failing backend.
//!
//! Only an unreachable server ([`Error::Unavailable`], [`Error::Timeout`]) makes a member
//! pending: a refused login or a bad setting still fails the start, where it is found.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

use super::{Liveness, Registry, WatchStream};
use crate::error::{Error, Result};
use crate::instance::{HealthCheck, HealthStatus, Instance};

/// Shortest wait between two connection attempts.
pub(crate) const RETRY_GAP: Duration = Duration::from_secs(1);

/// Connects the backend.
pub(crate) type Connect =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Registry>>> + Send + Sync>;

/// A backend that connects on first use; see the module docs.
pub(crate) struct Pending {
    backend: &'static str,
    keep_alive_interval: Duration,
    connect: Connect,
    connected: OnceCell<Arc<dyn Registry>>,
    /// When the last attempt failed, and why; held while an attempt runs.
    last: Mutex<Option<(Instant, Error)>>,
}

impl Pending {
    /// `backend`, whose first attempt to connect failed with `error`; `connect` tries again.
    /// `keep_alive_interval` is the backend's own (the manager asks before it connects).
    pub(crate) fn new(
        backend: &'static str,
        keep_alive_interval: Duration,
        error: Error,
        connect: Connect,
    ) -> Self {
        tracing::warn!(backend, %error, "registry unreachable at start; connecting again on use");
        Pending {
            backend,
            keep_alive_interval,
            connect,
            connected: OnceCell::new(),
            last: Mutex::new(Some((Instant::now(), error))),
        }
    }

    /// The connected backend, connecting it now if the last attempt is [`RETRY_GAP`] old.
    async fn get(&self) -> Result<&Arc<dyn Registry>> {
        if let Some(r) = self.connected.get() {
            return Ok(r);
        }
        let mut last = self.last.lock().await;
        if let Some(r) = self.connected.get() {
            return Ok(r);
        }
        if let Some((at, error)) = last.as_ref()
            && at.elapsed() < RETRY_GAP
        {
            return Err(self.not_yet(error));
        }
        match (self.connect)().await {
            Ok(registry) => {
                tracing::info!(backend = self.backend, "registry connected");
                *last = None;
                Ok(self.connected.get_or_init(|| async { registry }).await)
            }
            Err(error) => {
                let out = self.not_yet(&error);
                *last = Some((Instant::now(), error));
                Err(out)
            }
        }
    }

    fn not_yet(&self, error: &Error) -> Error {
        Error::Unavailable {
            backend: self.backend.into(),
            message: format!("not connected yet: {error}"),
        }
    }
}

/// True for the errors that make a member pending rather than fail the start.
pub(crate) fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. } | Error::Timeout { .. })
}

#[async_trait]
impl Registry for Pending {
    fn backend(&self) -> &str {
        self.backend
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        self.get().await?.register(instance).await
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.get().await?.deregister(service, id).await
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.get().await?.keep_alive(instance, health).await
    }

    fn keep_alive_interval(&self) -> Duration {
        self.keep_alive_interval
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.get().await?.instances(service).await
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.get().await?.services().await
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.get().await?.watch(service).await
    }

    /// Before it connects, none (only etcd and Nacos can be pending, and they run no checks).
    fn runs_check(&self, check: &HealthCheck) -> bool {
        self.connected.get().is_some_and(|r| r.runs_check(check))
    }

    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        self.get()
            .await?
            .register_with_checks(instance, checks)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Memory;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn connects_on_use_at_most_once_per_gap_then_is_the_backend() {
        let up = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let memory = Memory::new();
        let connect: Connect = {
            let (up, attempts, memory) = (up.clone(), attempts.clone(), memory.clone());
            Box::new(move || {
                attempts.fetch_add(1, Ordering::SeqCst);
                let (up, memory) = (up.load(Ordering::SeqCst), memory.clone());
                Box::pin(async move {
                    if up {
                        Ok(Arc::new(memory) as Arc<dyn Registry>)
                    } else {
                        Err(Error::Unavailable {
                            backend: "memory".into(),
                            message: "connection refused".into(),
                        })
                    }
                })
            })
        };
        let first = Error::Timeout {
            backend: "memory".into(),
            after: Duration::from_secs(10),
        };
        let pending = Pending::new("memory", Duration::from_secs(2), first, connect);
        assert_eq!(pending.keep_alive_interval(), Duration::from_secs(2));
        let i = Instance::new("svc", "127.0.0.1", 1);

        // Within the gap of the failed start: no attempt, the start's error.
        let e = pending.register(&i).await.unwrap_err();
        assert!(e.to_string().contains("did not answer within 10s"), "{e}");
        assert_eq!(attempts.load(Ordering::SeqCst), 0);
        tokio::time::sleep(RETRY_GAP).await;
        let e = pending.register(&i).await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable { backend, message } if backend == "memory" && message.contains("connection refused")),
            "{e}"
        );
        assert!(pending.instances("svc").await.is_err());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(RETRY_GAP).await;
        pending.register(&i).await.expect("connected");
        assert_eq!(memory.instances("svc").await.expect("list").len(), 1);
        assert_eq!(pending.instances("svc").await.expect("list").len(), 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "connected once");
    }
}
