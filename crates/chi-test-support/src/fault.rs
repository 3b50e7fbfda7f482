//! A [`Registry`] wrapper that fails on demand, to rehearse an outage in the layers above the
//! registry (the discovery cache serving its last good list, the manager retrying a backend).
//!
//! An outage is seen from the client's side: every call fails with [`Error::Unavailable`], as an
//! unreachable server's would; open watches get one error item, then a `Reset` with the whole list
//! when the outage heals (a client that lost its connection cannot know what it missed). The
//! wrapped registry itself keeps running: a registration with a TTL there expires during a long
//! outage, because its keep-alives fail, as it would if the server were cut off from this client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::registry::WatchStream;
use chi_discovery::{
    Change, Error, HealthCheck, HealthStatus, Instance, Liveness, Registry, Result,
};
use futures_util::StreamExt;
use tokio::sync::broadcast;

/// `inner`, failing every call while [`Faulty::set_outage`] holds it down. Clones share the
/// switch.
pub struct Faulty<R> {
    inner: Arc<R>,
    state: Arc<State>,
}

impl<R> Clone for Faulty<R> {
    fn clone(&self) -> Self {
        Faulty {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Faulty<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty")
            .field("down", &self.state.down.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

struct State {
    down: AtomicBool,
    /// Every switch of `down`, in order, for the open watches.
    switches: broadcast::Sender<bool>,
}

impl<R: Registry> Faulty<R> {
    /// Wraps `inner`, up.
    pub fn new(inner: R) -> Self {
        Faulty {
            inner: Arc::new(inner),
            state: Arc::new(State {
                down: AtomicBool::new(false),
                switches: broadcast::channel(64).0,
            }),
        }
    }

    /// The wrapped registry, reachable whatever the switch says.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// `true`: every call fails and open watches get an error item; `false`: calls reach the
    /// registry again and open watches resync with a `Reset`.
    pub fn set_outage(&self, down: bool) {
        if self.state.down.swap(down, Ordering::SeqCst) != down {
            let _ = self.state.switches.send(down);
        }
    }

    /// True while [`Faulty::set_outage`] holds the registry down.
    pub fn is_down(&self) -> bool {
        self.state.down.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> Result<()> {
        if self.is_down() {
            Err(outage(self.inner.backend()))
        } else {
            Ok(())
        }
    }
}

fn outage(backend: &str) -> Error {
    Error::Unavailable {
        backend: backend.to_owned(),
        message: "simulated outage".into(),
    }
}

#[async_trait]
impl<R: Registry> Registry for Faulty<R> {
    fn backend(&self) -> &str {
        self.inner.backend()
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        self.check_up()?;
        self.inner.register(instance).await
    }

    fn runs_check(&self, check: &HealthCheck) -> bool {
        self.inner.runs_check(check)
    }

    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        self.check_up()?;
        self.inner.register_with_checks(instance, checks).await
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.check_up()?;
        self.inner.deregister(service, id).await
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.check_up()?;
        self.inner.keep_alive(instance, health).await
    }

    fn keep_alive_interval(&self) -> Duration {
        self.inner.keep_alive_interval()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.check_up()?;
        self.inner.instances(service).await
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.check_up()?;
        self.inner.services().await
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.check_up()?;
        // Subscribed before the watch opens, so no switch falls between the two.
        let switches = self.state.switches.subscribe();
        let changes = self.inner.watch(service).await?;
        let st = WatchState {
            changes,
            switches,
            registry: self.clone(),
            service: service.to_owned(),
            down: false,
        };
        Ok(futures_util::stream::unfold(st, next_item).boxed())
    }
}

struct WatchState<R> {
    changes: WatchStream,
    switches: broadcast::Receiver<bool>,
    registry: Faulty<R>,
    service: String,
    /// What this watch has reported: an outage it has not yet resynced from.
    down: bool,
}

async fn next_item<R: Registry>(mut st: WatchState<R>) -> Option<(Result<Change>, WatchState<R>)> {
    loop {
        let switch = tokio::select! {
            // Changes the registry made before a switch come out before it.
            biased;
            item = st.changes.next(), if !st.down => return item.map(|i| (i, st)),
            switch = st.switches.recv() => switch,
        };
        let down = match switch {
            Ok(down) => down,
            // Switches missed: what counts is where the switch is now.
            Err(broadcast::error::RecvError::Lagged(_)) => st.registry.is_down(),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        if down == st.down {
            continue;
        }
        st.down = down;
        let item = if down {
            Err(outage(st.registry.backend()))
        } else {
            st.registry
                .inner
                .instances(&st.service)
                .await
                .map(Change::Reset)
        };
        return Some((item, st));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chi_discovery::registry::Memory;

    fn inst(id: &str) -> Instance {
        Instance::new("svc", "127.0.0.1", 8000).with_id(id)
    }

    #[tokio::test]
    async fn outage_fails_calls_and_watch_resyncs_after() {
        let m = Faulty::new(Memory::new());
        m.register(&inst("a")).await.expect("register");
        let mut w = m.watch("svc").await.expect("watch");
        let _ = w.next().await;
        m.set_outage(true);
        assert!(m.instances("svc").await.unwrap_err().is_transient());
        assert!(m.register(&inst("b")).await.is_err());
        assert!(w.next().await.expect("item").is_err());
        m.set_outage(false);
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Reset(vec![inst("a")])
        );
        m.register(&inst("b")).await.expect("up again");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Add(inst("b"))
        );
    }

    #[tokio::test]
    async fn changes_before_an_outage_come_out_before_its_error() {
        let m = Faulty::new(Memory::new());
        let mut w = m.watch("svc").await.expect("watch");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Reset(vec![])
        );
        m.register(&inst("a")).await.expect("register");
        m.set_outage(true);
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Add(inst("a"))
        );
        assert!(w.next().await.expect("item").is_err());
    }
}
