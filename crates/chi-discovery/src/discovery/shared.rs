//! Watches shared per service: one registry watch for every subscriber of a service.
//!
//! A process that serves many consumers of the same services (`chi xds`'s ADS streams, a proxy's
//! connections) should not open a registry watch per consumer. [`Shared::subscribe`] hands out a
//! `tokio::sync::watch` receiver of the service's [`View`]: the first subscriber of a service
//! starts its follower (one [`DiscoveryClient::watch`], so the client's retry curve, cache and
//! outage policy apply), later ones share it, and when the last subscriber is dropped the follower
//! ends and its registry watch closes: a name nobody follows any more costs nothing.
//!
//! - A subscriber is a receiver, not a task, and a view holds its list in an `Arc`: ten thousand
//!   subscribers of a service share one list.
//! - What subscribers derive from a list (`chi xds`: a fingerprint of each version's instances)
//!   is computed once per change, by the digest given to [`Shared::with_digest`], not once per
//!   subscriber.
//! - A watch error never changes the published list (stale on error); the resync after one goes
//!   through the client's restart grace ([`OutagePolicy`](super::OutagePolicy)).
//! - Revisions come from one counter for every service, so a service followed again after a
//!   pause never repeats a revision of its earlier follower (consumers cache what they built
//!   from a view by revision).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::DiscoveryClient;
use crate::error::Result;
use crate::instance::{Instance, validate_name};
use crate::util::lock;

/// One service as its subscribers see it.
#[derive(Debug)]
pub struct View<T = ()> {
    /// `None` until the service has had an instance: a name nobody registered yet has no list,
    /// and gets one once it appears. After that, an empty list means every instance left.
    pub instances: Option<Arc<Vec<Instance>>>,
    /// The registry answered at least once: `instances: None` then means "no such service"
    /// rather than "not read yet".
    pub known: bool,
    /// Changes with every change of `instances` (0 before any).
    pub revision: u64,
    /// What the digest derived from `instances` (from an empty list before any).
    pub digest: Arc<T>,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        View {
            instances: self.instances.clone(),
            known: self.known,
            revision: self.revision,
            digest: self.digest.clone(),
        }
    }
}

impl<T: PartialEq> PartialEq for View<T> {
    fn eq(&self, other: &Self) -> bool {
        self.instances == other.instances
            && self.known == other.known
            && self.revision == other.revision
            && self.digest == other.digest
    }
}

/// The services some subscriber follows, each with one registry watch. Cloning shares them.
pub struct Shared<T = ()> {
    hub: Arc<Hub<T>>,
}

type Digest<T> = Box<dyn Fn(&[Instance]) -> T + Send + Sync>;

struct Hub<T> {
    client: DiscoveryClient,
    digest: Digest<T>,
    services: Mutex<HashMap<String, watch::Sender<View<T>>>>,
    /// Source of every view's revision.
    revisions: AtomicU64,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            hub: self.hub.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("registry", &self.hub.client.registry().backend())
            .field("services", &self.hub.lock().len())
            .finish()
    }
}

impl Shared<()> {
    /// Services read through `client`.
    pub fn new(client: DiscoveryClient) -> Self {
        Shared::with_digest(client, |_| ())
    }
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// Services read through `client`, each view carrying `digest` of its list, computed once per
    /// change.
    pub fn with_digest(
        client: DiscoveryClient,
        digest: impl Fn(&[Instance]) -> T + Send + Sync + 'static,
    ) -> Self {
        Shared {
            hub: Arc::new(Hub {
                client,
                digest: Box::new(digest),
                services: Mutex::new(HashMap::new()),
                revisions: AtomicU64::new(0),
            }),
        }
    }

    /// The client the services are read through.
    pub fn client(&self) -> &DiscoveryClient {
        &self.hub.client
    }

    /// The views of `service`, following it if nobody does yet (within a tokio runtime). The
    /// receiver holds the current view; `changed()` tells of the next one. An invalid name is an
    /// error.
    pub fn subscribe(&self, service: &str) -> Result<watch::Receiver<View<T>>> {
        validate_name("service name", service)?;
        let mut services = self.hub.lock();
        if let Some(tx) = services.get(service) {
            return Ok(tx.subscribe());
        }
        let first = View {
            instances: None,
            known: false,
            revision: 0,
            digest: Arc::new((self.hub.digest)(&[])),
        };
        let (tx, rx) = watch::channel(first);
        services.insert(service.to_owned(), tx.clone());
        drop(services);
        tokio::spawn(follow(self.hub.clone(), service.to_owned(), tx));
        Ok(rx)
    }

    /// How many services are followed now.
    pub fn followed(&self) -> usize {
        self.hub.lock().len()
    }
}

impl<T> Hub<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<View<T>>>> {
        lock(&self.services)
    }
}

/// Follows `service` until no subscriber wants it: applies the watch's changes and publishes the
/// list when it changed. Errors are logged and leave the list as it was.
async fn follow<T: Send + Sync + 'static>(
    hub: Arc<Hub<T>>,
    service: String,
    tx: watch::Sender<View<T>>,
) {
    let mut watcher = match hub.client.watch(&service).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(%service, "cannot watch: {e}");
            hub.lock().remove(&service);
            return;
        }
    };
    let mut view: HashMap<String, Instance> = HashMap::new();
    loop {
        tokio::select! {
            item = watcher.next() => match item {
                None => {
                    tracing::warn!(%service, "the registry watch ended; keeping the last list");
                    hub.lock().remove(&service);
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(%service, "registry watch error, serving the last list: {e}");
                }
                Some(Ok(change)) => {
                    change.apply(&mut view);
                    let mut list: Vec<Instance> = view.values().cloned().collect();
                    list.sort_by(|a, b| a.id.cmp(&b.id));
                    publish(&hub, &tx, list);
                }
            },
            () = tx.closed() => {
                let mut services = hub.lock();
                if tx.receiver_count() == 0 {
                    services.remove(&service);
                    tracing::debug!(%service, "no subscriber follows the service any more");
                    return;
                }
            }
        }
    }
}

/// Publishes `list` (sorted by id) when it differs from what the channel holds. An empty list
/// is published only for a service that had instances (all of them left); a service never seen
/// stays without a list, but is marked `known` once the registry answered.
fn publish<T>(hub: &Hub<T>, tx: &watch::Sender<View<T>>, list: Vec<Instance>) {
    tx.send_if_modified(|current| {
        let same = match &current.instances {
            Some(old) => **old == list,
            None => list.is_empty(),
        };
        if same {
            let first = !current.known;
            current.known = true;
            return first;
        }
        current.known = true;
        current.digest = Arc::new((hub.digest)(&list));
        current.instances = Some(Arc::new(list));
        current.revision = hub.revisions.fetch_add(1, Ordering::Relaxed) + 1;
        true
    });
}

#[cfg(test)]
mod tests;
