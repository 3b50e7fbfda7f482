//! The services one stream follows, whichever variant of ADS it speaks.
//!
//! A state-of-the-world stream and an incremental one want the same thing from the registry:
//! the current view of every service some resource name of theirs points at, plus the service
//! catalogue while a wildcard subscription is open, and a wake-up when any of it changes. This
//! holds the stream's place in those watches (shared through [`Hub`], which tells the stream's
//! one [`Inbox`] which services changed) so that the two protocols differ only in what they send.
//!
//! A name costs a registry watch for as long as some stream follows it, whether or not the
//! registry knows it: a stream may follow a bounded number of names the registry does not know
//! (`chi xds --max-unknown-names`, [`Following::bound_unknown`]), so that a few names asked for
//! before their services register are fine, and a request naming thousands of made-up services
//! is refused with `RESOURCE_EXHAUSTED` before any watch opens for it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

use super::state::{Catalog, Followed, Hub, Inbox};
use super::view::ServiceView;

/// What woke a stream up.
pub(crate) enum Woken {
    /// These services' views changed: a push looks at them only, not at every service the
    /// stream follows.
    Views(Vec<Arc<Followed>>),
    /// The catalogue changed: wildcard subscriptions cover other services now.
    Catalog,
}

/// The service views and the catalogue one stream follows.
pub(crate) struct Following {
    hub: Arc<Hub>,
    /// Each followed service, through which its current view is read.
    pub(crate) views: Views,
    /// Where the hub marks the services that changed.
    inbox: Arc<Inbox>,
    catalog: Option<watch::Receiver<Catalog>>,
    /// Most followed names the registry does not know.
    max_unknown: usize,
}

/// The services one stream follows, sorted by name (a sorted list of pointers: 8 bytes a
/// service, where a map cost about 30).
pub(crate) struct Views(Vec<Arc<Followed>>);

impl Views {
    fn find(&self, service: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|f| (*f.name).cmp(service))
    }

    /// The current view of `service`, when the stream follows it.
    pub(crate) fn get(&self, service: &str) -> Option<Arc<ServiceView>> {
        self.find(service).ok().map(|i| self.0[i].view())
    }

    /// The name of `service` as every stream that follows it shares it.
    pub(crate) fn name(&self, service: &str) -> Option<Arc<str>> {
        self.find(service).ok().map(|i| self.0[i].name.clone())
    }
}

/// How long a stream waits for the registry's first list of services, to tell the names it knows
/// from those it does not; without one by then, only names with instances count as known.
const CATALOG_WAIT: Duration = Duration::from_secs(2);

impl Following {
    /// Follows services through `hub`, at most `max_unknown` of them unknown to the registry.
    pub(crate) fn new(hub: Arc<Hub>, max_unknown: usize) -> Following {
        let inbox = hub.inbox();
        Following {
            hub,
            views: Views(Vec::new()),
            inbox,
            catalog: None,
            max_unknown,
        }
    }

    /// Refuses, with `RESOURCE_EXHAUSTED`, to follow `named` when more than the bound of its
    /// names are unknown: in no list of the registry's services, nor with instances on this
    /// stream. Costs
    /// nothing when `named` is within the bound; otherwise one look per name at the catalogue
    /// (read every few seconds for the whole server, not per stream).
    pub(crate) async fn bound_unknown(&self, named: &BTreeSet<String>) -> Result<(), Status> {
        if named.len() <= self.max_unknown {
            return Ok(());
        }
        let catalog = self.hub.catalog_within(CATALOG_WAIT).await;
        let known = |name: &String| {
            catalog.as_ref().is_some_and(|c| c.contains(name))
                || self
                    .views
                    .get(name.as_str())
                    .is_some_and(|v| v.instances.is_some())
        };
        let unknown = named.iter().filter(|n| !known(n)).count();
        if unknown <= self.max_unknown {
            return Ok(());
        }
        Err(Status::resource_exhausted(format!(
            "{unknown} of the {} services this stream asks for are not in the registry; at most {} (--max-unknown-names)",
            named.len(),
            self.max_unknown
        )))
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
        let inbox = &self.inbox;
        self.views.0.retain(|followed| {
            let keep = named.contains(&*followed.name);
            if !keep {
                followed.unfollow(inbox);
            }
            keep
        });
        for name in named {
            let Err(at) = self.views.find(&name) else {
                continue;
            };
            if let Some(followed) = self.hub.follow(&name, &self.inbox) {
                self.views.0.insert(at, followed);
            }
        }
    }

    /// Waits for the next change: the services that changed since the last one (however many
    /// changed meanwhile, one wake-up), or the catalogue. Cancel safe.
    pub(crate) async fn changed(&mut self) -> Woken {
        let Some(catalog) = &mut self.catalog else {
            // No wildcard: the inbox alone (the common case, one waker and no select).
            return Woken::Views(self.inbox.changed().await);
        };
        let catalog_changed = async {
            if catalog.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = self.inbox.changed() => Woken::Views(changed),
            () = catalog_changed => Woken::Catalog,
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        for followed in &self.views.0 {
            followed.unfollow(&self.inbox);
        }
    }
}
