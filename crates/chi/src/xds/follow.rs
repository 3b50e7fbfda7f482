//! The services one stream follows, whichever variant of ADS it speaks.
//!
//! A state-of-the-world stream and an incremental one want the same thing from the registry:
//! the current view of every service some resource name of theirs points at, plus the service
//! catalogue while a wildcard subscription is open, and a wake-up when any of it changes. This
//! holds those watches (shared through [`Hub`]) so that the two protocols differ only in what
//! they send.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};

use super::state::{Catalog, Hub};
use super::view::ServiceView;

/// What woke a stream up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// One or more service views changed (already applied to [`Following::views`]).
    Views,
    /// The catalogue changed: wildcard subscriptions cover other services now.
    Catalog,
}

/// The service views and the catalogue one stream follows.
pub(crate) struct Following {
    hub: Arc<Hub>,
    /// The last view of each followed service.
    pub(crate) views: HashMap<String, ServiceView>,
    changes: StreamMap<String, WatchStream<ServiceView>>,
    catalog: Option<watch::Receiver<Catalog>>,
}

impl Following {
    pub(crate) fn new(hub: Arc<Hub>) -> Following {
        Following {
            hub,
            views: HashMap::new(),
            changes: StreamMap::new(),
            catalog: None,
        }
    }

    /// The catalogue, when a wildcard subscription asked for it and the registry listed its
    /// services at least once.
    pub(crate) fn catalog(&self) -> Catalog {
        self.catalog.as_ref().and_then(|c| c.borrow().clone())
    }

    /// Follows exactly the services in `named`, plus every service of the catalogue when
    /// `wildcard`; lets go of the others (a hub watch ends with its last stream).
    pub(crate) fn follow(&mut self, mut named: BTreeSet<String>, wildcard: bool) {
        if wildcard {
            if self.catalog.is_none() {
                self.catalog = Some(self.hub.catalog());
            }
            if let Some(all) = self.catalog() {
                named.extend(all.iter().cloned());
            }
        }
        let stale: Vec<String> = self
            .views
            .keys()
            .filter(|n| !named.contains(*n))
            .cloned()
            .collect();
        for name in stale {
            self.views.remove(&name);
            self.changes.remove(&name);
        }
        for name in named {
            if self.views.contains_key(&name) {
                continue;
            }
            let Some(rx) = self.hub.subscribe(&name) else {
                continue;
            };
            self.views.insert(name.clone(), rx.borrow().clone());
            self.changes.insert(name, WatchStream::from_changes(rx));
        }
    }

    /// Waits for the next change. Every view change that is ready is applied at once, so a
    /// stream that just subscribed to thousands of names answers once, not once per name.
    /// Cancel safe: a change is applied in the poll that takes it.
    pub(crate) async fn changed(&mut self) -> Woken {
        let changes = &mut self.changes;
        let catalog = &mut self.catalog;
        let catalog_changed = async {
            let changed = match catalog {
                Some(rx) => rx.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        let first = tokio::select! {
            Some(change) = changes.next() => change,
            () = catalog_changed => return Woken::Catalog,
        };
        let (name, view) = first;
        self.views.insert(name, view);
        while let Some(Some((name, view))) = self.changes.next().now_or_never() {
            self.views.insert(name, view);
        }
        Woken::Views
    }
}
