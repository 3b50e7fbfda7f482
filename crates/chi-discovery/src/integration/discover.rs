//! A [`tower::discover::Discover`] over a chi [`Watcher`].
//!
//! tower's balancers (`tower::balance::p2c::Balance`) and tonic's
//! `Channel::balance_channel` take their endpoints as a stream of
//! [`tower::discover::Change`]`<K, S>`: `Insert(key, service)` and `Remove(key)`. [`Discover`]
//! turns chi's watch events into that stream: keys are instance ids, services are built from
//! instances by a closure the caller gives (a tonic `Endpoint`, an HTTP client for one address,
//! a `tower::load` wrapper...).
//!
//! Choices, and why:
//!
//! - **Unusable instances are removed.** An instance known to be unhealthy (by the registry or
//!   chi's checks laid over the cache) is `Remove`d and re-`Insert`ed when it recovers; tower's
//!   balancers have no notion of health beyond readiness. [`Discover::filter`] replaces the rule.
//! - **A moved instance is replaced.** An update that changes `address:port` is a `Remove` then an
//!   `Insert` (tower caches ready services by key); other updates (weight, tags) change nothing.
//! - **Errors don't end the stream.** A watch error means the registry is unreachable: chi keeps
//!   the last list and reconnects with a `Reset` (docs/DESIGN.md §4). tower ends a balancer on a
//!   discovery error, so the adapter logs the error and keeps the services it has; its error type
//!   is [`Infallible`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tower::discover::Change as TowerChange;

use crate::discovery::Watcher;
use crate::instance::Instance;

type Accept = Box<dyn Fn(&Instance) -> bool + Send + Sync>;

/// A tower `Discover` over a chi watch; see the module docs.
pub struct Discover<S, F> {
    watcher: Watcher,
    make: F,
    accept: Accept,
    /// Every instance the watch reported, by id.
    view: HashMap<String, Instance>,
    /// Id -> authority of the services handed out.
    inserted: HashMap<String, String>,
    pending: VecDeque<TowerChange<String, S>>,
}

// Services are stored in a queue and never pinned in place, so the adapter is `Unpin` whatever
// `S` is (tower's `Balance` needs an `Unpin` discover).
impl<S, F: Unpin> Unpin for Discover<S, F> {}

impl<S, F> fmt::Debug for Discover<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discover")
            .field("service", &self.watcher.service())
            .field("inserted", &self.inserted.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S, E, F> Discover<S, F>
where
    F: FnMut(&Instance) -> Result<S, E>,
    E: fmt::Display,
{
    /// Follows `watcher`, building a service for every usable instance with `make`. An
    /// instance `make` fails for is skipped (and logged) until its next change.
    pub fn new(watcher: Watcher, make: F) -> Self {
        Discover {
            watcher,
            make,
            accept: Box::new(|i| i.health.is_usable()),
            view: HashMap::new(),
            inserted: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// Which instances get a service (default: those not known to be unhealthy).
    pub fn filter(mut self, accept: impl Fn(&Instance) -> bool + Send + Sync + 'static) -> Self {
        self.accept = Box::new(accept);
        self
    }

    /// Whether instances known to be unhealthy are left out (`true`, the default) or handed out
    /// too (`false`: the config's `load_balancer.health_check_enabled: false`). Replaces
    /// [`Discover::filter`].
    pub fn skip_unhealthy(self, on: bool) -> Self {
        if on {
            self.filter(|i| i.health.is_usable())
        } else {
            self.filter(|_| true)
        }
    }

    /// Ids of the instances whose services are handed out now.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.inserted.keys().map(String::as_str)
    }

    /// Recomputes what to insert and remove after the view changed.
    fn reconcile(&mut self) {
        let wanted: HashMap<&str, &Instance> = self
            .view
            .values()
            .filter(|i| (self.accept)(i))
            .map(|i| (i.id.as_str(), i))
            .collect();
        let mut gone: Vec<String> = self
            .inserted
            .iter()
            .filter(|(id, authority)| {
                wanted
                    .get(id.as_str())
                    .is_none_or(|i| i.authority() != **authority)
            })
            .map(|(id, _)| id.clone())
            .collect();
        gone.sort();
        for id in &gone {
            self.inserted.remove(id);
            self.pending.push_back(TowerChange::Remove(id.clone()));
        }
        let mut new: Vec<&Instance> = wanted
            .values()
            .copied()
            .filter(|i| !self.inserted.contains_key(&i.id))
            .collect();
        new.sort_by(|a, b| a.id.cmp(&b.id));
        for i in new {
            match (self.make)(i) {
                Ok(svc) => {
                    self.inserted.insert(i.id.clone(), i.authority());
                    self.pending
                        .push_back(TowerChange::Insert(i.id.clone(), svc));
                }
                Err(e) => {
                    tracing::warn!(service = %i.name, id = %i.id, error = %e, "cannot build a service for this instance; skipped");
                }
            }
        }
    }

    /// Sends every change into `tx`, converted by `map`, until the watch or the receiver ends
    /// (e.g. into the sender of tonic's `Channel::balance_channel`; see
    /// [`Discover::forward_to_tonic`]).
    pub async fn forward<T>(
        mut self,
        tx: tokio::sync::mpsc::Sender<T>,
        map: impl Fn(TowerChange<String, S>) -> T,
    ) where
        F: Unpin,
    {
        while let Some(Ok(change)) = self.next().await {
            if tx.send(map(change)).await.is_err() {
                return;
            }
        }
    }

    /// Feeds tonic's `Channel::balance_channel` (tonic has its own `Change` type; feature `grpc`).
    #[cfg(feature = "grpc")]
    pub async fn forward_to_tonic(
        self,
        tx: tokio::sync::mpsc::Sender<tonic::transport::channel::Change<String, S>>,
    ) where
        F: Unpin,
    {
        use tonic::transport::channel::Change as TonicChange;
        self.forward(tx, |c| match c {
            TowerChange::Insert(k, s) => TonicChange::Insert(k, s),
            TowerChange::Remove(k) => TonicChange::Remove(k),
        })
        .await
    }
}

impl<S, E, F> Stream for Discover<S, F>
where
    F: FnMut(&Instance) -> Result<S, E> + Unpin,
    E: fmt::Display,
{
    type Item = Result<TowerChange<String, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut this.watcher).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Ok(change))) => {
                    change.apply(&mut this.view);
                    this.reconcile();
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(service = %this.watcher.service(), error = %e, "watch error; keeping the current services");
                }
            }
        }
    }
}
