//! The registries behind a test server: [`Flaky`], the embedded registry with an outage switch,
//! and [`Counted`], which counts the watches the server holds open on any registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use chi_discovery::registry::{Memory, WatchStream};
use chi_discovery::{Error, HealthStatus, Instance, Liveness, Registry};
use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::{broadcast, watch};

/// Memory with a switch: "down" ends every open watch with an error and fails new ones.
pub(crate) struct Flaky {
    inner: Memory,
    down: AtomicBool,
    outage: broadcast::Sender<()>,
    /// Calls refused while down, so a test can wait for the one it needs (a probe's).
    refused: watch::Sender<u64>,
}

impl Flaky {
    pub(crate) fn new() -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: Memory::new(),
            down: AtomicBool::new(false),
            outage: broadcast::channel(4).0,
            refused: watch::Sender::new(0),
        })
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.outage.send(());
        }
    }

    /// Down without ending the open watches: an outage only a probe of the registry notices
    /// (a registry restarted between two checks of a watch).
    pub(crate) fn set_down_quietly(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many calls the registry refused while down, to wait on: a test that needs the server
    /// to have asked during an outage (its probe) waits for the count to grow.
    pub(crate) fn refusals(&self) -> watch::Receiver<u64> {
        self.refused.subscribe()
    }

    fn check(&self) -> chi_discovery::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.send_modify(|n| *n += 1);
            return Err(Error::registry("flaky", "registry down"));
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for Flaky {
    fn backend(&self) -> &str {
        "flaky"
    }
    async fn register(&self, instance: &Instance) -> chi_discovery::Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> chi_discovery::Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, i: &Instance, h: HealthStatus) -> chi_discovery::Result<Liveness> {
        self.inner.keep_alive(i, h).await
    }
    async fn instances(&self, service: &str) -> chi_discovery::Result<Vec<Instance>> {
        self.check()?;
        self.inner.instances(service).await
    }
    async fn services(&self) -> chi_discovery::Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> chi_discovery::Result<WatchStream> {
        self.check()?;
        let changes = self.inner.watch(service).await?;
        let outage = self.outage.subscribe();
        // Forward the changes until an outage, then one error and the end of the stream.
        let s = stream::unfold(
            (changes, outage, false),
            |(mut changes, mut outage, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    item = changes.next() => item.map(|i| (i, (changes, outage, false))),
                    _ = outage.recv() => {
                        let e = Error::registry("flaky", "connection lost");
                        Some((Err(e), (changes, outage, true)))
                    }
                }
            },
        );
        Ok(s.boxed())
    }
}

/// `inner`, counting the watches open on it: the registry's side of the server's "one watch per
/// service, shared by every stream, closed with the last one".
pub(crate) struct Counted {
    inner: Arc<dyn Registry>,
    open: Arc<AtomicUsize>,
}

impl Counted {
    pub(crate) fn new(inner: Arc<dyn Registry>) -> Arc<Counted> {
        Arc::new(Counted {
            inner,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Watches open now.
    pub(crate) fn watches(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One open watch, counted until its stream is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Registry for Counted {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn register(&self, instance: &Instance) -> chi_discovery::Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> chi_discovery::Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, i: &Instance, h: HealthStatus) -> chi_discovery::Result<Liveness> {
        self.inner.keep_alive(i, h).await
    }
    async fn instances(&self, service: &str) -> chi_discovery::Result<Vec<Instance>> {
        self.inner.instances(service).await
    }
    async fn services(&self) -> chi_discovery::Result<Vec<String>> {
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> chi_discovery::Result<WatchStream> {
        let changes = self.inner.watch(service).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = Open(self.open.clone());
        Ok(changes
            .map(move |change| {
                let _counted = &open;
                change
            })
            .boxed())
    }
}
