//! Watches: server pushes turned into `Add / Remove / Update`, a periodic direct check that
//! notices outages and resyncs with a `Reset`, and push-empty protection.
//!
//! One task per watch. nacos-sdk calls the listener from a fresh task per push, so two quick
//! pushes may arrive out of order; the listener therefore only says "something changed" and the
//! task reads the SDK's subscribed copy, which is always the latest.
//!
//! The task runs under [`watch_task`]: dropping the stream stops it, and the subscription's
//! [`Release`] (owned by the task) ends the server subscription when the task goes, however it
//! goes. Whether an empty list is believed is `EmptyGuard`'s
//! rule, as for direct queries; each watch keeps its own guard, fed with what the watch itself
//! saw, so the grace period runs from the watch's own reconnection.
//!
//! A [`Nacos`](super::Nacos) subscribes to a service once, however many watches it has on it:
//! nacos-sdk's `unsubscribe` ends the server subscription for the whole client, so the
//! subscription is shared and ended only when its last watch is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use nacos_sdk::api::naming::{NamingChangeEvent, NamingEventListener};
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Shared, diff};
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::outage::EmptyGuard;
use crate::registry::watch_task::{self, Sender};
use crate::registry::{Change, WatchStream};

/// Tells the watch tasks of a service that a push arrived.
struct Nudge(broadcast::Sender<()>);

impl NamingEventListener for Nudge {
    fn event(&self, _event: Arc<NamingChangeEvent>) {
        // No receiver: the last watch is going away.
        let _ = self.0.send(());
    }
}

/// The shared subscription of one service.
pub(super) struct Subscription {
    nudges: broadcast::Sender<()>,
    listener: Arc<dyn NamingEventListener>,
}

/// Where a list came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// The SDK's copy after a push.
    Push,
    /// A direct query to the server.
    Query,
}

struct Task {
    shared: Arc<Shared>,
    service: String,
    tx: Sender<Result<Change>>,
    view: HashMap<String, Instance>,
    /// The last check failed (until the next answer).
    down: bool,
    /// The empty-answer rule, over this watch's own checks.
    empty: EmptyGuard,
    /// The next good list goes out as a `Reset` (after an outage).
    resync: bool,
}

/// A watch's hold on the shared subscription: dropping it (the task ended, or was aborted with
/// its stream) ends the server subscription if no other watch of the service is left.
struct Release {
    shared: Arc<Shared>,
    service: String,
    nudges: Option<broadcast::Receiver<()>>,
}

impl Release {
    fn nudges(&mut self) -> Option<&mut broadcast::Receiver<()>> {
        self.nudges.as_mut()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        // The receiver goes first, so `release` counts the watches left without this one.
        drop(self.nudges.take());
        let (shared, service) = (self.shared.clone(), std::mem::take(&mut self.service));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&shared, &service).await });
        }
    }
}

pub(super) async fn start(shared: Arc<Shared>, service: String) -> Result<WatchStream> {
    let nudges = subscribe(&shared, &service).await?;
    let first = match shared.query(&service).await {
        Ok(list) => list,
        Err(e) => {
            drop(nudges);
            release(&shared, &service).await;
            return Err(e);
        }
    };
    let view = first.iter().map(|i| (i.id.clone(), i.clone())).collect();
    // The grace period runs from the start of the watch, as after a reconnection.
    let empty = EmptyGuard::new(false);
    empty.believe(&service, &first, shared.config.empty_grace);
    let release = Release {
        shared: shared.clone(),
        service: service.clone(),
        nudges: Some(nudges),
    };
    Ok(watch_task::spawn_watch(move |tx| async move {
        // The first item is always the full list.
        if !tx.send(Ok(Change::Reset(first))).await {
            return;
        }
        let task = Task {
            shared,
            service,
            tx,
            view,
            down: false,
            empty,
            resync: false,
        };
        task.run(release).await;
    }))
}

/// A receiver of the service's pushes, subscribing on the server for the first watch.
async fn subscribe(shared: &Shared, service: &str) -> Result<broadcast::Receiver<()>> {
    let mut subs = shared.subscriptions.lock().await;
    if let Some(sub) = subs.get(service) {
        return Ok(sub.nudges.subscribe());
    }
    let (nudges, rx) = broadcast::channel(16);
    let listener: Arc<dyn NamingEventListener> = Arc::new(Nudge(nudges.clone()));
    shared
        .call(shared.naming().subscribe(
            service.to_owned(),
            shared.group(),
            Vec::new(),
            listener.clone(),
        ))
        .await?;
    subs.insert(service.to_owned(), Subscription { nudges, listener });
    Ok(rx)
}

/// Ends the server subscription once no watch of `service` is left (the caller has dropped
/// its receiver).
async fn release(shared: &Shared, service: &str) {
    let mut subs = shared.subscriptions.lock().await;
    let Some(sub) = subs.get(service) else {
        return;
    };
    if sub.nudges.receiver_count() > 0 {
        return;
    }
    let listener = sub.listener.clone();
    subs.remove(service);
    let r = shared
        .call(
            shared
                .naming()
                .unsubscribe(service.to_owned(), shared.group(), Vec::new(), listener),
        )
        .await;
    if let Err(e) = r {
        tracing::debug!(%service, error = %e, "nacos unsubscribe failed");
    }
}

impl Task {
    async fn run(mut self, mut release: Release) {
        let period = self.shared.config.watch_check_interval;
        let period = period.min(crate::util::FOREVER);
        let mut tick = tokio::time::interval_at(crate::util::after(Instant::now(), period), period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let Some(nudges) = release.nudges() else {
            return;
        };
        loop {
            let open = tokio::select! {
                _ = self.tx.closed() => false,
                // A lagged receiver missed nudges, not data: reading the copy catches up.
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) = nudges.recv() => {
                    self.on_push().await
                }
                _ = tick.tick() => self.on_tick().await,
            };
            if !open {
                break;
            }
        }
        // `release` drops here and ends the subscription if this was its last watch.
    }

    /// A push arrived: the connection is up, the SDK's copy is the latest list.
    async fn on_push(&mut self) -> bool {
        match self.shared.cached(&self.service).await {
            Ok(list) => {
                self.recovered();
                self.apply(list, Source::Push).await
            }
            Err(e) => self.failed(e).await,
        }
    }

    /// The periodic direct check.
    async fn on_tick(&mut self) -> bool {
        match self.shared.query(&self.service).await {
            Ok(list) => {
                self.recovered();
                self.apply(list, Source::Query).await
            }
            Err(e) => self.failed(e).await,
        }
    }

    /// After a failure, the next good list goes out as a `Reset`, and the grace period starts.
    fn recovered(&mut self) {
        self.empty.note::<()>(&Ok(()));
        if self.down {
            tracing::info!(service = %self.service, "nacos answers again; resyncing the watch");
            self.down = false;
            self.resync = true;
        }
    }

    async fn failed(&mut self, e: crate::error::Error) -> bool {
        tracing::warn!(service = %self.service, error = %e, "nacos watch check failed");
        // Any failed check (not only a transport error) restarts the grace period.
        self.empty.down();
        self.down = true;
        self.tx.send(Err(e)).await
    }

    /// Takes a new full list in, under push-empty protection.
    async fn apply(&mut self, mut list: Vec<Instance>, source: Source) -> bool {
        let grace = self.shared.config.empty_grace;
        let believed = self.empty.believe(&self.service, &list, grace);
        if list.is_empty() && !self.view.is_empty() && self.shared.config.push_empty_protection {
            if !believed {
                tracing::info!(service = %self.service, ?source,
                    "empty list right after (re)connecting; holding the last list until confirmed");
                return true;
            }
            if source == Source::Push {
                // Confirm with the server itself before emptying anything.
                match self.shared.query(&self.service).await {
                    Ok(confirmed) => {
                        self.empty.believe(&self.service, &confirmed, grace);
                        list = confirmed;
                    }
                    Err(e) => return self.failed(e).await,
                }
            }
        }
        let changes = if self.resync {
            self.resync = false;
            vec![Change::Reset(list.clone())]
        } else {
            diff(&self.view, &list)
        };
        self.view = list.into_iter().map(|i| (i.id.clone(), i)).collect();
        for c in changes {
            if !self.tx.send(Ok(c)).await {
                return false;
            }
        }
        true
    }
}
