//! Watch streams that survive registry trouble.
//!
//! A [`Watcher`] runs one task that holds a registry watch open: it forwards every change to the
//! consumer and into the cache, forwards errors in line (and marks the cached list stale, never
//! emptying it), and when the registry's stream fails or ends it reconnects after the client's
//! retry curve ([`Backoff`](crate::retry::Backoff): jittered, so the watchers of a registry that
//! restarted do not all come back at the same instant).
//!
//! With a restart grace in the client's [`OutagePolicy`](crate::registry::outage::OutagePolicy),
//! what the consumer gets goes through a [`Grace`]: after an error (or a failed probe of the
//! registry), the resync's removals of instances served before it wait for the grace, and come
//! as `Remove`s when it ends. A reconnected stream starts with a `Reset`, so the consumer resyncs and misses nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Inner;
use super::probe::Watching;
use crate::error::{Error, Result};
use crate::registry::Change;
use crate::registry::outage::Grace;
use crate::util::AbortOnDrop;

const BUFFER: usize = 256;

/// A stream of changes to one service; see [`DiscoveryClient::watch`](super::DiscoveryClient::watch).
/// Dropping it (or [`Watcher::close`]) stops the watch.
#[derive(Debug)]
pub struct Watcher {
    service: String,
    rx: mpsc::Receiver<Result<Change>>,
    _task: AbortOnDrop,
}

impl Watcher {
    /// The watched service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The next change or error; `None` once closed.
    pub async fn next(&mut self) -> Option<Result<Change>> {
        self.rx.recv().await
    }

    /// Stops the watch.
    pub fn close(self) {}
}

impl Stream for Watcher {
    type Item = Result<Change>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(super) fn spawn(inner: Arc<Inner>, service: String) -> Watcher {
    let (tx, rx) = mpsc::channel(BUFFER);
    let _task = AbortOnDrop::spawn(run(inner, service.clone(), tx));
    Watcher { service, rx, _task }
}

async fn run(inner: Arc<Inner>, service: String, tx: mpsc::Sender<Result<Change>>) {
    // A watched service is in use: the cache keeps it past its TTL until the watch ends.
    let _in_use = inner.cache.watching(&service);
    let mut backoff = inner.retry.backoff();
    let mut held = inner.outage.is_on().then(|| Held::new(&inner));
    loop {
        let error = match inner.registry.watch(&service).await {
            Ok(mut stream) => {
                if let Some(h) = &mut held {
                    // Failures the probe saw before this stream opened are this reconnect's.
                    h.failures.borrow_and_update();
                }
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        wake = wake(&mut held) => {
                            if let Some(h) = &mut held {
                                let gone = h.woken(wake, &service, &inner);
                                if !send_all(&tx, gone).await {
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    match item {
                        Some(Ok(change)) => {
                            backoff.reset();
                            inner.cache.update(&service, change.clone());
                            let served = match &mut held {
                                Some(h) => h.apply(&service, change),
                                None => vec![change],
                            };
                            if !send_all(&tx, served).await {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            inner.cache.failed(&service);
                            if let Some(h) = &mut held {
                                h.grace.failed();
                            }
                            if tx.send(Err(e)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            break Error::WatchClosed {
                                service: service.clone(),
                                message: "the registry ended the stream; reconnecting".into(),
                            };
                        }
                    }
                }
            }
            Err(e) => e,
        };
        inner.cache.failed(&service);
        if let Some(h) = &mut held {
            h.grace.failed();
        }
        if tx.send(Err(error)).await.is_err() {
            return;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The restart grace of one watch.
struct Held {
    grace: Grace,
    period: std::time::Duration,
    /// The failures of the client's registry probe.
    failures: watch::Receiver<u64>,
    _watching: Watching,
}

/// What woke a watch besides its registry stream.
enum Wake {
    /// The probe found the registry failing.
    Probe,
    /// The grace may be over.
    GraceOver,
}

impl Held {
    fn new(inner: &Arc<Inner>) -> Held {
        Held {
            grace: Grace::new(inner.outage.restart_grace),
            period: inner.outage.restart_grace,
            failures: inner.outages.subscribe(),
            _watching: inner.watching(),
        }
    }

    /// The changes served for one change of the registry.
    fn apply(&mut self, service: &str, change: Change) -> Vec<Change> {
        let before = self.grace.held();
        let served = self.grace.apply(change, Instant::now());
        let held = self.grace.held();
        if held > before {
            let grace = self.period;
            tracing::info!(%service, held, ?grace, "resynced after a registry error; instances not back yet are kept for the restart grace");
        }
        served
    }

    /// Takes in a wake-up: a failed probe starts the grace over; at its end, the removals due.
    fn woken(&mut self, wake: Wake, service: &str, inner: &Inner) -> Vec<Change> {
        match wake {
            Wake::Probe => {
                self.grace.failed();
                Vec::new()
            }
            Wake::GraceOver => {
                let now = Instant::now();
                let gone = self.grace.expire(now);
                if !gone.is_empty() {
                    tracing::info!(%service, removed = gone.len(), "restart grace over: removing the instances that did not come back");
                    inner.cache.settle(now);
                }
                gone
            }
        }
    }
}

/// Sends `changes` in order; false when the consumer is gone.
async fn send_all(tx: &mpsc::Sender<Result<Change>>, changes: Vec<Change>) -> bool {
    for c in changes {
        if tx.send(Ok(c)).await.is_err() {
            return false;
        }
    }
    true
}

/// Waits for a failure of the probe or the end of the grace (forever without a grace).
async fn wake(held: &mut Option<Held>) -> Wake {
    let Some(h) = held else {
        return std::future::pending().await;
    };
    let deadline = h.grace.deadline();
    tokio::select! {
        Ok(()) = h.failures.changed() => Wake::Probe,
        () = sleep_until(deadline) => Wake::GraceOver,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
