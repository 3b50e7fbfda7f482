//! Watches: server pushes turned into `Add / Remove / Update`, a periodic direct check that
//! notices outages and resyncs with a `Reset`, and push-empty protection.
//!
//! One task per watch. nacos-sdk calls the listener from a fresh task per push, so two quick
//! pushes may arrive out of order; the listener therefore only says "something changed" and the
//! task reads the SDK's subscribed copy, which is always the latest.
//!
//! A [`Nacos`](super::Nacos) subscribes to a service once, however many watches it has on it:
//! nacos-sdk's `unsubscribe` ends the server subscription for the whole client, so the
//! subscription is shared and ended only when its last watch is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use nacos_sdk::api::naming::{NamingChangeEvent, NamingEventListener};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use super::{Shared, diff};
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::{Change, WatchStream};

const BUFFER: usize = 256;

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
    tx: mpsc::Sender<Result<Change>>,
    view: HashMap<String, Instance>,
    /// The server has answered continuously since then; `None` while it does not answer.
    up_since: Option<Instant>,
    /// The next good list goes out as a `Reset` (after an outage).
    resync: bool,
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
    let (tx, rx) = mpsc::channel(BUFFER);
    let view = first.iter().map(|i| (i.id.clone(), i.clone())).collect();
    // The first item is always the full list.
    let _ = tx.try_send(Ok(Change::Reset(first)));
    let task = Task {
        shared,
        service,
        tx,
        view,
        up_since: Some(Instant::now()),
        resync: false,
    };
    tokio::spawn(task.run(nudges));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
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
        .call(shared.naming.subscribe(
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
                .naming
                .unsubscribe(service.to_owned(), shared.group(), Vec::new(), listener),
        )
        .await;
    if let Err(e) = r {
        tracing::debug!(%service, error = %e, "nacos unsubscribe failed");
    }
}

impl Task {
    async fn run(mut self, mut nudges: broadcast::Receiver<()>) {
        let period = self.shared.config.watch_check_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
        drop(nudges);
        release(&self.shared, &self.service).await;
    }

    /// A push arrived: the connection is up, the SDK's copy is the latest list.
    async fn on_push(&mut self) -> bool {
        match self.shared.cached(&self.service).await {
            Ok(list) => {
                if self.up_since.is_none() {
                    self.recovered();
                }
                self.apply(list, Source::Push).await
            }
            Err(e) => self.failed(e).await,
        }
    }

    /// The periodic direct check.
    async fn on_tick(&mut self) -> bool {
        match self.shared.query(&self.service).await {
            Ok(list) => {
                if self.up_since.is_none() {
                    self.recovered();
                }
                self.apply(list, Source::Query).await
            }
            Err(e) => self.failed(e).await,
        }
    }

    fn recovered(&mut self) {
        tracing::info!(service = %self.service, "nacos answers again; resyncing the watch");
        self.up_since = Some(Instant::now());
        self.resync = true;
    }

    async fn failed(&mut self, e: crate::Error) -> bool {
        tracing::warn!(service = %self.service, error = %e, "nacos watch check failed");
        self.up_since = None;
        self.tx.send(Err(e)).await.is_ok()
    }

    /// Takes a new full list in, under push-empty protection.
    async fn apply(&mut self, mut list: Vec<Instance>, source: Source) -> bool {
        if list.is_empty() && !self.view.is_empty() && self.shared.config.push_empty_protection {
            let trusted = self
                .up_since
                .is_some_and(|t| t.elapsed() >= self.shared.config.empty_grace);
            if !trusted {
                tracing::info!(service = %self.service, ?source,
                    "empty list right after (re)connecting; holding the last list until confirmed");
                return true;
            }
            if source == Source::Push {
                // Confirm with the server itself before emptying anything.
                match self.shared.query(&self.service).await {
                    Ok(confirmed) => list = confirmed,
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
            if self.tx.send(Ok(c)).await.is_err() {
                return false;
            }
        }
        true
    }
}
