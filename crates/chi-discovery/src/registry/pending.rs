//! A member of a multi-registry that could not connect when the process started, connected on
//! its first use after that.
//!
//! With several registries enabled, one that is down at start-up must keep neither the process
//! from starting nor the others from serving: the process registers in the others at once and
//! in the missing one when it comes back. Consul's client and etcd's (without auth) connect
//! lazily and cannot fail there, but Nacos' client makes real calls when it connects (as does
//! etcd's when it logs in), and against a server that is down it retries for seconds before it
//! fails. So with several registries, [`connect`](super::connect()) gives each member
//! [`AT_START`] to connect; one that failed because its server is unreachable, or is still
//! trying, becomes a [`Pending`] member. Until it is connected, a call fails at once while the
//! start-up attempt still runs (a connection it makes is taken), and otherwise starts a new
//! attempt and waits for it, at most one attempt per [`RETRY_GAP`] (calls in between fail at
//! once with the last error). Once connected, the member is the backend itself. The
//! [`ServiceManager`](crate::ServiceManager) retries the registration there with its backoff,
//! like any failing backend.
//!
//! Only an unreachable server ([`Error::Unavailable`], [`Error::Timeout`]) makes a member
//! pending: a refused login or a bad setting still fails the start, where it is found.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Liveness, Registry, WatchStream};
use crate::error::{Error, Result};
use crate::instance::{HealthCheck, HealthStatus, Instance};

/// How long a member of several registries may take to connect at start-up before the others
/// go on without it. A local rnacos connects in about 0.2 s on a loaded 2-core machine.
pub(crate) const AT_START: Duration = Duration::from_secs(1);

/// Shortest wait between two connection attempts.
pub(crate) const RETRY_GAP: Duration = Duration::from_secs(1);

/// Connects the backend.
pub(crate) type Connect =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Registry>>> + Send + Sync>;

/// Where connecting stands.
enum Attempt {
    /// The start-up attempt, still running.
    Running(JoinHandle<Result<Arc<dyn Registry>>>),
    /// The last attempt failed then, with this.
    Failed(Instant, Error),
}

/// A backend that connects on first use; see the module docs.
pub(crate) struct Pending {
    backend: &'static str,
    keep_alive_interval: Duration,
    connect: Connect,
    connected: OnceCell<Arc<dyn Registry>>,
    /// Held while an attempt runs.
    attempt: Mutex<Attempt>,
}

/// Connects one member of several registries: the backend when it connects within
/// [`AT_START`], a [`Pending`] one when its server is unreachable or it is still connecting,
/// and the error of any other failure. `keep_alive_interval` is the backend's own (the manager
/// asks before it connects).
pub(crate) async fn connect_member<F, Fut>(
    backend: &'static str,
    keep_alive_interval: Duration,
    connect: F,
) -> Result<Arc<dyn Registry>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn Registry>>> + Send + 'static,
{
    let mut first = tokio::spawn(connect());
    let attempt = match tokio::time::timeout(AT_START, &mut first).await {
        Ok(done) => match flatten(backend, done) {
            Err(e) if unreachable(&e) => {
                tracing::warn!(backend, error = %e, "registry unreachable at start; the others serve meanwhile, and it is connected again on use");
                Attempt::Failed(Instant::now(), e)
            }
            done => return done,
        },
        Err(_) => {
            tracing::warn!(
                backend,
                "registry not connected within {AT_START:?} at start; the others serve meanwhile"
            );
            Attempt::Running(first)
        }
    };
    Ok(Arc::new(Pending {
        backend,
        keep_alive_interval,
        connect: Box::new(move || Box::pin(connect())),
        connected: OnceCell::new(),
        attempt: Mutex::new(attempt),
    }))
}

fn flatten(
    backend: &'static str,
    done: std::result::Result<Result<Arc<dyn Registry>>, tokio::task::JoinError>,
) -> Result<Arc<dyn Registry>> {
    done.unwrap_or_else(|e| {
        Err(Error::Unavailable {
            backend: backend.into(),
            message: format!("connecting failed: {e}"),
        })
    })
}

impl Pending {
    /// The connected backend; see the module docs for when this connects and when it fails at
    /// once.
    async fn get(&self) -> Result<&Arc<dyn Registry>> {
        if let Some(r) = self.connected.get() {
            return Ok(r);
        }
        let mut attempt = self.attempt.lock().await;
        if let Some(r) = self.connected.get() {
            return Ok(r);
        }
        let result = match &mut *attempt {
            Attempt::Running(first) if !first.is_finished() => {
                return Err(self.not_yet("still connecting"));
            }
            Attempt::Running(first) => match flatten(self.backend, first.await) {
                Ok(registry) => Ok(registry),
                // It failed a while ago, unseen: try again now.
                Err(_) => (self.connect)().await,
            },
            Attempt::Failed(at, error) if at.elapsed() < RETRY_GAP => {
                return Err(self.not_yet(error));
            }
            Attempt::Failed(..) => (self.connect)().await,
        };
        match result {
            Ok(registry) => {
                tracing::info!(backend = self.backend, "registry connected");
                Ok(self.connected.get_or_init(|| async { registry }).await)
            }
            Err(error) => {
                let out = self.not_yet(&error);
                *attempt = Attempt::Failed(Instant::now(), error);
                Err(out)
            }
        }
    }

    fn not_yet(&self, why: impl std::fmt::Display) -> Error {
        Error::Unavailable {
            backend: self.backend.into(),
            message: format!("not connected yet: {why}"),
        }
    }
}

/// True for the errors that make a member pending rather than fail the start.
fn unreachable(e: &Error) -> bool {
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

    /// A backend that connects when `up`, after `delay`, counting attempts.
    fn backend(
        up: &Arc<AtomicBool>,
        delay: Duration,
        attempts: &Arc<AtomicUsize>,
        memory: &Memory,
    ) -> impl Fn() -> BoxFuture<'static, Result<Arc<dyn Registry>>> + Send + Sync + 'static {
        let (up, attempts, memory) = (up.clone(), attempts.clone(), memory.clone());
        move || {
            attempts.fetch_add(1, Ordering::SeqCst);
            let (up, memory) = (up.clone(), memory.clone());
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if up.load(Ordering::SeqCst) {
                    Ok(Arc::new(memory) as Arc<dyn Registry>)
                } else {
                    Err(Error::Unavailable {
                        backend: "memory".into(),
                        message: "connection refused".into(),
                    })
                }
            })
        }
    }

    fn i() -> Instance {
        Instance::new("svc", "127.0.0.1", 1)
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_at_start_then_connected_on_use_at_most_once_per_gap() {
        let (up, attempts, memory) = (Arc::default(), Arc::default(), Memory::new());
        let connect = backend(&up, Duration::ZERO, &attempts, &memory);
        let pending = connect_member("memory", Duration::from_secs(2), connect)
            .await
            .expect("pending, not an error");
        assert_eq!(pending.backend(), "memory");
        assert_eq!(pending.keep_alive_interval(), Duration::from_secs(2));

        // Within the gap of the failed start: no attempt, the start's error.
        let e = pending.register(&i()).await.unwrap_err();
        assert!(e.to_string().contains("not connected yet: "), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        tokio::time::sleep(RETRY_GAP).await;
        assert!(pending.register(&i()).await.is_err());
        assert!(
            pending.instances("svc").await.is_err(),
            "within the gap again"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);

        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(RETRY_GAP).await;
        pending.register(&i()).await.expect("connected");
        assert_eq!(memory.instances("svc").await.expect("list").len(), 1);
        assert_eq!(pending.instances("svc").await.expect("list").len(), 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "connected once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_goes_on_in_the_background_and_is_taken_when_done() {
        let (up, attempts, memory) = (
            Arc::new(AtomicBool::new(true)),
            Arc::default(),
            Memory::new(),
        );
        let connect = backend(&up, AT_START * 3, &attempts, &memory);
        let started = Instant::now();
        let pending = connect_member("memory", Duration::from_secs(2), connect)
            .await
            .expect("pending");
        assert_eq!(started.elapsed(), AT_START, "the others do not wait longer");
        let e = pending.register(&i()).await.unwrap_err();
        assert!(e.to_string().contains("still connecting"), "{e}");
        tokio::time::sleep(AT_START * 2 + Duration::from_millis(1)).await;
        pending
            .register(&i())
            .await
            .expect("the start-up attempt connected");
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "no second attempt");
    }

    /// A start-up attempt that failed unseen (the server came back meanwhile) is not reported:
    /// the first call after it connects again at once.
    #[tokio::test(start_paused = true)]
    async fn a_slow_start_that_failed_is_tried_again_by_the_next_call() {
        let (up, attempts, memory) = (Arc::default(), Arc::default(), Memory::new());
        let connect = backend(&up, AT_START * 3, &attempts, &memory);
        let pending = connect_member("memory", Duration::from_secs(2), connect)
            .await
            .expect("pending");
        tokio::time::sleep(AT_START * 5).await;
        up.store(true, Ordering::SeqCst);
        pending
            .register(&i())
            .await
            .expect("connected on this call");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_connects_in_time_is_itself_and_other_errors_fail_the_start() {
        let (up, attempts, memory) = (
            Arc::new(AtomicBool::new(true)),
            Arc::default(),
            Memory::new(),
        );
        let connected = connect_member(
            "memory",
            Duration::from_secs(2),
            backend(&up, Duration::ZERO, &attempts, &memory),
        )
        .await
        .expect("connected");
        connected.register(&i()).await.expect("register");
        let refused = connect_member("memory", Duration::from_secs(2), || async {
            Err(Error::config(
                "service_discovery.registries.nacos.client_config.password",
                "refused",
            ))
        })
        .await;
        assert!(matches!(refused, Err(Error::Config { .. })));
    }
}
