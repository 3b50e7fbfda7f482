//! The shared watches on the embedded registry, on a paused clock: a state the follower reaches
//! by itself is checked after [`settle`]. Through an outage: `tests/it/outage.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::*;
use crate::instance::HealthStatus;
use crate::registry::outage::OutagePolicy;
use crate::registry::{Liveness, Memory, Registry, WatchStream};
use crate::retry::RetryPolicy;

fn inst(id: &str) -> Instance {
    Instance::new("svc", "127.0.0.1", 8000).with_id(id)
}

fn ids<T>(view: &View<T>) -> Vec<String> {
    view.instances
        .as_ref()
        .map(|l| l.iter().map(|i| i.id.clone()).collect())
        .unwrap_or_default()
}

/// Lets every task run until none has anything left to do (paused clock: the sleep ends only
/// once the runtime is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A registry that counts its open watches.
#[derive(Clone)]
struct Counted {
    inner: Arc<dyn Registry>,
    open: Arc<AtomicUsize>,
}

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
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.inner.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.inner.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        let stream = self.inner.watch(service).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = Open(self.open.clone());
        Ok(stream
            .map(move |item| {
                let _ = &open;
                item
            })
            .boxed())
    }
}

fn counted(registry: Arc<dyn Registry>) -> Counted {
    Counted {
        inner: registry,
        open: Arc::new(AtomicUsize::new(0)),
    }
}

fn client(registry: Arc<dyn Registry>, grace: Duration) -> DiscoveryClient {
    DiscoveryClient::builder()
        .retry(RetryPolicy {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(200),
            ..RetryPolicy::default()
        })
        .outage(OutagePolicy::with_restart_grace(grace))
        .build(registry)
}

#[tokio::test(start_paused = true)]
async fn one_registry_watch_per_service_whatever_the_subscribers() {
    let memory = Memory::new();
    memory.register(&inst("a")).await.expect("register");
    let registry = counted(Arc::new(memory.clone()));
    let shared = Shared::new(client(Arc::new(registry.clone()), Duration::ZERO));
    let mut subscribers: Vec<_> = (0..100)
        .map(|_| shared.subscribe("svc").expect("subscribe"))
        .collect();
    settle().await;
    assert_eq!(registry.open.load(Ordering::SeqCst), 1);
    assert_eq!(shared.followed(), 1);
    for rx in &mut subscribers {
        let view = rx.borrow_and_update().clone();
        assert_eq!(ids(&view), vec!["a"]);
        assert!(view.known);
    }
    // A change reaches every subscriber, as one shared list.
    memory.register(&inst("b")).await.expect("register");
    settle().await;
    let first = subscribers[0].borrow_and_update().clone();
    assert_eq!(ids(&first), vec!["a", "b"]);
    for rx in &mut subscribers[1..] {
        assert!(rx.has_changed().expect("open"));
        let view = rx.borrow_and_update();
        assert!(Arc::ptr_eq(
            view.instances.as_ref().expect("listed"),
            first.instances.as_ref().expect("listed")
        ));
    }
    // The last one to leave closes the registry watch.
    subscribers.truncate(1);
    settle().await;
    assert_eq!(registry.open.load(Ordering::SeqCst), 1);
    drop(subscribers);
    settle().await;
    assert_eq!(registry.open.load(Ordering::SeqCst), 0);
    assert_eq!(shared.followed(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_name_is_known_absent_and_costs_nothing_once_left() {
    let registry = counted(Arc::new(Memory::new()));
    let shared = Shared::new(client(Arc::new(registry.clone()), Duration::ZERO));
    let mut rx = shared.subscribe("ghost").expect("subscribe");
    assert!(!rx.borrow().known, "not read yet");
    rx.changed().await.expect("an answer");
    let view = rx.borrow_and_update().clone();
    assert!(view.known && view.instances.is_none(), "{view:?}");
    assert_eq!(view.revision, 0);
    drop(rx);
    settle().await;
    assert_eq!(registry.open.load(Ordering::SeqCst), 0);
    assert_eq!(shared.followed(), 0);
    assert!(shared.subscribe("a/b").is_err(), "not a chi name");
}

#[tokio::test(start_paused = true)]
async fn the_digest_is_computed_once_per_change_and_revisions_never_repeat() {
    let memory = Memory::new();
    memory.register(&inst("a")).await.expect("register");
    let digests = Arc::new(AtomicUsize::new(0));
    let count = digests.clone();
    let shared = Shared::with_digest(client(Arc::new(memory.clone()), Duration::ZERO), move |l| {
        count.fetch_add(1, Ordering::SeqCst);
        l.len()
    });
    let subscribers: Vec<_> = (0..10)
        .map(|_| shared.subscribe("svc").expect("subscribe"))
        .collect();
    settle().await;
    // One for the empty view before the first answer, one for the first list.
    assert_eq!(digests.load(Ordering::SeqCst), 2);
    let first = subscribers[9].borrow().clone();
    assert_eq!(*first.digest, 1);
    memory.register(&inst("b")).await.expect("register");
    settle().await;
    assert_eq!(digests.load(Ordering::SeqCst), 3);
    let second = subscribers[0].borrow().clone();
    assert_eq!(*second.digest, 2);
    assert!(second.revision > first.revision);
    // Followed again after everyone left: a new follower, later revisions.
    drop(subscribers);
    settle().await;
    let mut again = shared.subscribe("svc").expect("subscribe");
    again.changed().await.expect("a list");
    assert!(again.borrow().revision > second.revision);
}
