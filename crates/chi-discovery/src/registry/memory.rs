//! The embedded, in-process registry: chi's zero-setup default.
//!
//! `Memory` is a complete registry, not a test double: registrations can carry a TTL and expire
//! when their keep-alive stops (as an etcd lease or a Consul TTL check would), watches stream
//! `Reset / Add / Remove / Update`, and a lagging watcher is resynced with a `Reset` rather than
//! silently missing changes. Clones share one registry, so several clients in one process (or a
//! test) see the same state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Change, Liveness, Registry, WatchStream};
use crate::error::Result;
use crate::instance::{HealthStatus, Instance, validate_name};

const BACKEND: &str = "memory";
const WATCH_BUFFER: usize = 1024;

/// Settings of the embedded registry (`registries.memory`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryConfig {
    /// Registrations expire this long after their last keep-alive (`None`: never).
    pub ttl: Option<Duration>,
}

/// The embedded registry. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    ttl: Option<Duration>,
    reaper_started: AtomicBool,
}

#[derive(Default)]
struct State {
    services: HashMap<String, Service>,
}

struct Service {
    instances: BTreeMap<String, Entry>,
    events: broadcast::Sender<Change>,
}

struct Entry {
    instance: Instance,
    deadline: Option<Instant>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    /// A registry whose registrations never expire (until deregistered).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A registry whose registrations expire `ttl` after their last register / keep-alive.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self::build(Some(ttl))
    }

    /// A registry with `config`'s settings.
    pub fn from_config(config: &MemoryConfig) -> Self {
        Self::build(config.ttl)
    }

    fn build(ttl: Option<Duration>) -> Self {
        Memory {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                // A TTL near `Duration::MAX` means never; cut, it cannot overflow the reaper's
                // clock.
                ttl: ttl.map(|t| t.min(crate::util::FOREVER)),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    fn start_reaper(&self) {
        let Some(ttl) = self.inner.ttl else { return };
        if self.inner.reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = (ttl / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.expire(Instant::now());
            }
        });
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing the registry, so keep going with the data.
        crate::util::lock(&self.state)
    }

    fn expire(&self, now: Instant) {
        let mut state = self.lock();
        for svc in state.services.values_mut() {
            let expired: Vec<String> = svc
                .instances
                .iter()
                .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(e) = svc.instances.remove(&id) {
                    tracing::debug!(service = %e.instance.name, id = %id, "registration expired");
                    let _ = svc.events.send(Change::Remove(e.instance));
                }
            }
        }
        state
            .services
            .retain(|_, s| !s.instances.is_empty() || s.events.receiver_count() > 0);
    }

    fn list(&self, service: &str) -> Vec<Instance> {
        self.lock()
            .services
            .get(service)
            .map(|s| s.instances.values().map(|e| e.instance.clone()).collect())
            .unwrap_or_default()
    }
}

fn new_service() -> Service {
    Service {
        instances: BTreeMap::new(),
        events: broadcast::channel(WATCH_BUFFER).0,
    }
}

#[async_trait]
impl Registry for Memory {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        instance.validate_registration()?;
        self.start_reaper();
        let deadline = self
            .inner
            .ttl
            .map(|ttl| crate::util::after(Instant::now(), ttl));
        let mut state = self.inner.lock();
        let svc = state
            .services
            .entry(instance.name.clone())
            .or_insert_with(new_service);
        let change = match svc.instances.get(&instance.id) {
            None => Some(Change::Add(instance.clone())),
            Some(e) if e.instance != *instance => Some(Change::Update(instance.clone())),
            Some(_) => None,
        };
        svc.instances.insert(
            instance.id.clone(),
            Entry {
                instance: instance.clone(),
                deadline,
            },
        );
        if let Some(change) = change {
            let _ = svc.events.send(change);
        }
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        validate_name("service name", service)?;
        let mut state = self.inner.lock();
        if let Some(svc) = state.services.get_mut(service)
            && let Some(e) = svc.instances.remove(id)
        {
            let _ = svc.events.send(Change::Remove(e.instance));
        }
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let deadline = self
            .inner
            .ttl
            .map(|ttl| crate::util::after(Instant::now(), ttl));
        let mut state = self.inner.lock();
        let Some(svc) = state.services.get_mut(&instance.name) else {
            return Ok(Liveness::Lost);
        };
        let Some(entry) = svc.instances.get_mut(&instance.id) else {
            return Ok(Liveness::Lost);
        };
        entry.deadline = deadline;
        if entry.instance.health != health {
            entry.instance.health = health;
            let _ = svc.events.send(Change::Update(entry.instance.clone()));
        }
        Ok(Liveness::Alive)
    }

    fn keep_alive_interval(&self) -> Duration {
        self.inner
            .ttl
            .map(|ttl| (ttl / 3).max(Duration::from_millis(10)))
            .unwrap_or(Duration::from_secs(5))
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_name("service name", service)?;
        Ok(self.inner.list(service))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let state = self.inner.lock();
        let mut names: Vec<String> = state
            .services
            .iter()
            .filter(|(_, s)| !s.instances.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        validate_name("service name", service)?;
        let (rx, first) = {
            let mut state = self.inner.lock();
            let svc = state
                .services
                .entry(service.to_owned())
                .or_insert_with(new_service);
            let list: Vec<Instance> = svc.instances.values().map(|e| e.instance.clone()).collect();
            (svc.events.subscribe(), list)
        };
        let st = WatchState {
            rx,
            inner: self.inner.clone(),
            service: service.to_owned(),
            first: Some(first),
        };
        Ok(futures_util::stream::unfold(st, next_change).boxed())
    }
}

struct WatchState {
    rx: broadcast::Receiver<Change>,
    inner: Arc<Inner>,
    service: String,
    first: Option<Vec<Instance>>,
}

/// A watch that ends lets go of its service's entry when it was the last watcher of a service
/// without instances: a name nobody registered costs nothing once its watchers left (each entry
/// holds a broadcast buffer of [`WATCH_BUFFER`] changes, about 190 KiB).
impl Drop for WatchState {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let unused = state.services.get(&self.service).is_some_and(|s| {
            // This watch's own receiver is still counted.
            s.instances.is_empty() && s.events.receiver_count() <= 1
        });
        if unused {
            state.services.remove(&self.service);
        }
    }
}

async fn next_change(mut st: WatchState) -> Option<(Result<Change>, WatchState)> {
    if let Some(list) = st.first.take() {
        return Some((Ok(Change::Reset(list)), st));
    }
    let item = match st.rx.recv().await {
        Ok(c) => Ok(c),
        // After a gap, the only honest thing is the whole list again.
        Err(broadcast::error::RecvError::Lagged(_)) => {
            Ok(Change::Reset(st.inner.list(&st.service)))
        }
        Err(broadcast::error::RecvError::Closed) => return None,
    };
    Some((item, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Instance {
        Instance::new("svc", "127.0.0.1", 8000).with_id(id)
    }

    #[tokio::test]
    async fn register_list_deregister() {
        let m = Memory::new();
        m.register(&inst("a")).await.expect("register");
        m.register(&inst("b")).await.expect("register");
        assert_eq!(m.instances("svc").await.expect("list").len(), 2);
        assert_eq!(
            m.services().await.expect("services"),
            vec!["svc".to_string()]
        );
        m.deregister("svc", "a").await.expect("deregister");
        m.deregister("svc", "missing")
            .await
            .expect("unknown id is fine");
        let ids: Vec<String> = m
            .instances("svc")
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec!["b"]);
        assert!(m.instances("other").await.expect("empty list").is_empty());
    }

    #[tokio::test]
    async fn rejects_bad_names() {
        let m = Memory::new();
        let err = m.register(&Instance::new("a/b", "h", 1)).await.unwrap_err();
        assert!(err.to_string().contains("must not contain `/`"), "{err}");
        assert!(m.instances("..").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_without_keep_alive() {
        let m = Memory::with_ttl(Duration::from_secs(3));
        m.register(&inst("kept")).await.expect("register");
        m.register(&inst("dropped")).await.expect("register");
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                m.keep_alive(&inst("kept"), HealthStatus::Healthy)
                    .await
                    .expect("ka"),
                Liveness::Alive
            );
        }
        let ids: Vec<String> = m
            .instances("svc")
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec!["kept"]);
        assert_eq!(
            m.keep_alive(&inst("dropped"), HealthStatus::Healthy)
                .await
                .expect("ka"),
            Liveness::Lost
        );
    }

    #[tokio::test]
    async fn watch_starts_with_reset_then_streams_changes() {
        let m = Memory::new();
        m.register(&inst("a")).await.expect("register");
        let mut w = m.watch("svc").await.expect("watch");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Reset(vec![inst("a")])
        );
        m.register(&inst("b")).await.expect("register");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Add(inst("b"))
        );
        m.register(&inst("b")).await.expect("same again: no event");
        let b2 = inst("b").with_weight(5);
        m.register(&b2).await.expect("register");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Update(b2.clone())
        );
        m.keep_alive(&b2, HealthStatus::Unhealthy)
            .await
            .expect("ka");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Update(b2.clone().with_health(HealthStatus::Unhealthy))
        );
        m.deregister("svc", "a").await.expect("deregister");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Remove(inst("a"))
        );
    }

    #[tokio::test]
    async fn watches_of_unknown_names_leave_nothing_behind() {
        let reg = Memory::new();
        let mut watches = Vec::new();
        for n in 0..100 {
            watches.push(reg.watch(&format!("nobody-{n}")).await.expect("watch"));
        }
        let twice = reg.watch("nobody-0").await.expect("watch");
        assert_eq!(reg.inner.lock().services.len(), 100);
        drop(watches);
        assert_eq!(reg.inner.lock().services.len(), 1, "one name still watched");
        drop(twice);
        assert!(reg.inner.lock().services.is_empty());
        // A service with instances stays when its watchers go.
        reg.register(&inst("a")).await.expect("register");
        drop(reg.watch("svc").await.expect("watch"));
        assert_eq!(reg.instances("svc").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_ttl_near_the_largest_duration_means_never() {
        let reg = Memory::with_ttl(Duration::MAX);
        reg.register(&inst("a")).await.expect("register");
        assert_eq!(
            reg.keep_alive(&inst("a"), HealthStatus::Healthy)
                .await
                .expect("keep alive"),
            Liveness::Alive
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reg.instances("svc").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn lagging_watcher_gets_a_reset() {
        let m = Memory::new();
        let mut w = m.watch("svc").await.expect("watch");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Reset(vec![])
        );
        for n in 0..(WATCH_BUFFER + 10) {
            m.register(&inst(&format!("i{n:05}")))
                .await
                .expect("register");
        }
        match w.next().await.expect("item").expect("ok") {
            Change::Reset(all) => assert_eq!(all.len(), WATCH_BUFFER + 10),
            other => panic!("expected a Reset after lag, got {other:?}"),
        }
    }
}
