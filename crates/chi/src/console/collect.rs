//! What the registries behind the process hold, kept live while the console is looked at.
//!
//! Each registry is read on its own, a multi-registry's members one by one, so every instance
//! carries the registries that list it (its origin) and every registry its own state. Per
//! registry, the service catalogue is listed every [`LIST_PERIOD`] and every listed service is
//! watched ([`Registry::watch`]: a `Reset` first, then changes, errors inline), so instances that
//! come and go reach the page as they happen; new services within a listing period. The
//! catalogue listing is also the registry's health probe: a failed or slow listing marks it down
//! from that moment, a failing watch degraded.
//!
//! Nothing runs while nobody looks: the [`Collector`] lives only as long as the console's live
//! task ([`super::live`]), and dropping it stops every watch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use chi_discovery::{Change, Instance, Registry};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::model::{RegistryRow, RegistryState, Stamped};
use crate::sync;
use crate::xds::clients::unix_ms;

/// How often each registry's services are listed.
const LIST_PERIOD: Duration = Duration::from_secs(2);
/// A listing slower than this counts as a failure.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Most services watched per registry; the rest are counted, not shown.
pub(crate) const MAX_SERVICES: usize = 1000;
/// The longest wait before a watch that could not be opened (or ended) is tried again.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A task aborted when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registries behind a process, read live; see the module docs.
pub(crate) struct Collector {
    members: Vec<Arc<Member>>,
    changed: Arc<Notify>,
    _listing: Vec<Task>,
}

/// One registry and what it holds.
struct Member {
    registry: Arc<dyn Registry>,
    state: Mutex<MemberState>,
}

#[derive(Default)]
struct MemberState {
    /// Listed (or failed to list) at least once.
    listed: bool,
    /// Services the last listing named.
    listing: usize,
    /// The listing fails since then.
    down_since: Option<u64>,
    last_error: Option<Stamped>,
    services: BTreeMap<String, Watched>,
    /// The state shown last, and since when.
    shown: Option<(RegistryState, u64)>,
}

struct Watched {
    instances: BTreeMap<String, Instance>,
    /// The watch delivered its first list (or failed).
    ready: bool,
    /// The watch's last error, while it lasts.
    error: Option<Stamped>,
    _task: Task,
}

/// Instances by service, then by id: the first registry's copy and every registry listing it.
pub(crate) type Merged = BTreeMap<String, BTreeMap<String, (Instance, Vec<String>)>>;

impl Collector {
    /// Starts listing and watching `registry` (each member of a multi-registry).
    pub(crate) fn start(registry: &Arc<dyn Registry>) -> Collector {
        let registries: Vec<Arc<dyn Registry>> = match registry.members() {
            Some(members) => members.to_vec(),
            None => vec![registry.clone()],
        };
        let changed = Arc::new(Notify::new());
        let members: Vec<Arc<Member>> = registries
            .into_iter()
            .map(|registry| {
                Arc::new(Member {
                    registry,
                    state: Mutex::new(MemberState::default()),
                })
            })
            .collect();
        let listing = members
            .iter()
            .map(|m| Task(tokio::spawn(list(Arc::downgrade(m), changed.clone()))))
            .collect();
        Collector {
            members,
            changed,
            _listing: listing,
        }
    }

    /// Told whenever something changed.
    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Every registry listed once and every watch delivered its first list (or failed).
    pub(crate) fn is_ready(&self) -> bool {
        self.members.iter().all(|m| {
            let s = m.lock();
            s.listed && s.services.values().all(|w| w.ready)
        })
    }

    /// Every service and instance, merged over the registries in order.
    pub(crate) fn services(&self) -> Merged {
        let mut out = Merged::new();
        for m in &self.members {
            let backend = m.registry.backend().to_owned();
            let s = m.lock();
            for (name, watched) in &s.services {
                let service = out.entry(name.clone()).or_default();
                for (id, i) in &watched.instances {
                    service
                        .entry(id.clone())
                        .or_insert_with(|| (i.clone(), Vec::new()))
                        .1
                        .push(backend.clone());
                }
            }
        }
        out
    }

    /// Each registry's row; `failing(backend)` is true when the process's own registration
    /// fails there (that degrades it too).
    pub(crate) fn registries(&self, failing: impl Fn(&str) -> bool) -> Vec<RegistryRow> {
        let now = unix_ms(SystemTime::now());
        self.members
            .iter()
            .map(|m| {
                let backend = m.registry.backend().to_owned();
                let mut s = m.lock();
                let watch_error = s
                    .services
                    .values()
                    .filter_map(|w| w.error.clone())
                    .max_by_key(|e| e.at);
                let state = if s.down_since.is_some() {
                    RegistryState::Down
                } else if watch_error.is_some() || failing(&backend) {
                    RegistryState::Degraded
                } else {
                    RegistryState::Connected
                };
                let since = match s.shown {
                    Some((shown, since)) if shown == state => since,
                    _ => {
                        let since = if state == RegistryState::Down {
                            s.down_since.unwrap_or(now)
                        } else {
                            now
                        };
                        s.shown = Some((state, since));
                        since
                    }
                };
                let last_error = [s.last_error.clone(), watch_error]
                    .into_iter()
                    .flatten()
                    .max_by_key(|e| e.at);
                RegistryRow {
                    backend,
                    state,
                    since,
                    last_error,
                    services: s.listing,
                }
            })
            .collect()
    }
}

impl Drop for Collector {
    /// Stops every watch (their tasks hold the members only weakly).
    fn drop(&mut self) {
        for m in &self.members {
            m.lock().services.clear();
        }
    }
}

impl Member {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        sync::lock(&self.state)
    }

    /// Takes a listing's outcome: starts watching new services, stops watching gone ones.
    fn listed(self: &Arc<Self>, result: Result<Vec<String>, String>, changed: &Arc<Notify>) {
        let now = unix_ms(SystemTime::now());
        let mut s = self.lock();
        s.listed = true;
        let mut names = match result {
            Ok(names) => names,
            Err(message) => {
                s.down_since.get_or_insert(now);
                s.last_error = Some(Stamped { message, at: now });
                return;
            }
        };
        s.down_since = None;
        s.listing = names.len();
        names.sort();
        names.dedup();
        names.truncate(MAX_SERVICES);
        s.services
            .retain(|name, _| names.binary_search(name).is_ok());
        for name in names {
            if let std::collections::btree_map::Entry::Vacant(slot) = s.services.entry(name) {
                let name = slot.key().clone();
                let task = tokio::spawn(follow(Arc::downgrade(self), name, changed.clone()));
                slot.insert(Watched {
                    instances: BTreeMap::new(),
                    ready: false,
                    error: None,
                    _task: Task(task),
                });
            }
        }
    }

    /// Applies one item of `service`'s watch.
    fn apply(&self, service: &str, item: Result<Change, String>) {
        let mut s = self.lock();
        let Some(w) = s.services.get_mut(service) else {
            return;
        };
        w.ready = true;
        match item {
            Ok(change) => {
                w.error = None;
                let mut map: std::collections::HashMap<String, Instance> =
                    std::mem::take(&mut w.instances).into_iter().collect();
                change.apply(&mut map);
                w.instances = map.into_iter().collect();
            }
            Err(e) => {
                w.error = Some(Stamped {
                    message: format!("watching {service}: {e}"),
                    at: unix_ms(SystemTime::now()),
                });
            }
        }
    }
}

/// Lists the member's services every [`LIST_PERIOD`] until the collector goes.
async fn list(member: Weak<Member>, changed: Arc<Notify>) {
    loop {
        let Some(m) = member.upgrade() else { return };
        let registry = m.registry.clone();
        let result = match tokio::time::timeout(LIST_TIMEOUT, registry.services()).await {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(e)) => Err(format!("listing services: {e}")),
            Err(_) => Err(format!(
                "listing services: no answer within {}",
                humantime::format_duration(LIST_TIMEOUT)
            )),
        };
        m.listed(result, &changed);
        drop(m);
        changed.notify_one();
        tokio::time::sleep(LIST_PERIOD).await;
    }
}

/// Follows `service`'s watch on the member until it stops being watched; a watch that cannot
/// be opened, or ends, is tried again with backoff.
async fn follow(member: Weak<Member>, service: String, changed: Arc<Notify>) {
    let mut wait = Duration::from_millis(250);
    loop {
        let Some(registry) = member.upgrade().map(|m| m.registry.clone()) else {
            return;
        };
        let error = match registry.watch(&service).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    let Some(m) = member.upgrade() else { return };
                    m.apply(&service, item.map_err(|e| e.to_string()));
                    changed.notify_one();
                }
                "the watch ended".to_owned()
            }
            Err(e) => e.to_string(),
        };
        let Some(m) = member.upgrade() else { return };
        m.apply(&service, Err(error));
        drop(m);
        changed.notify_one();
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}
