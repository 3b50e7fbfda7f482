//! Watches: server pushes turned into `Add / Remove / Update`, a periodic direct check that
//! notices outages and resyncs with a `Reset`, and push-empty protection.
//!
//! One task per watch. nacos-sdk calls the listener from a fresh task per push, so two quick
//! pushes may arrive out of order; the listener therefore only says "something changed" and the
//! task reads the SDK's subscribed copy, which is always the latest. The task ends (and
//! unsubscribes) when the consumer drops the stream.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use nacos_sdk::api::naming::{NamingChangeEvent, NamingEventListener};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Shared, diff};
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::{Change, WatchStream};

const BUFFER: usize = 256;

/// Tells the watch task that a push arrived.
struct Nudge(mpsc::Sender<()>);

impl NamingEventListener for Nudge {
    fn event(&self, _event: Arc<NamingChangeEvent>) {
        // A full channel already holds a nudge: the task will read the latest copy anyway.
        let _ = self.0.try_send(());
    }
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
    let (nudge_tx, nudge_rx) = mpsc::channel(1);
    let listener: Arc<dyn NamingEventListener> = Arc::new(Nudge(nudge_tx));
    shared
        .call(shared.naming.subscribe(
            service.clone(),
            shared.group(),
            Vec::new(),
            listener.clone(),
        ))
        .await?;
    let first = match shared.query(&service).await {
        Ok(list) => list,
        Err(e) => {
            unsubscribe(&shared, &service, listener).await;
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
    tokio::spawn(task.run(nudge_rx, listener));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

async fn unsubscribe(shared: &Shared, service: &str, listener: Arc<dyn NamingEventListener>) {
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
    async fn run(mut self, mut nudges: mpsc::Receiver<()>, listener: Arc<dyn NamingEventListener>) {
        let period = self.shared.config.watch_check_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let open = tokio::select! {
                _ = self.tx.closed() => false,
                Some(()) = nudges.recv() => self.on_push().await,
                _ = tick.tick() => self.on_tick().await,
            };
            if !open {
                break;
            }
        }
        unsubscribe(&self.shared, &self.service, listener).await;
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
