//! Watch streams that survive registry trouble.
//!
//! A [`Watcher`] runs one task that holds a registry watch open: it forwards every change to the
//! consumer and into the cache, forwards errors in line (and marks the cached list stale, never
//! emptying it), and when the registry's stream fails or ends it reconnects after the client's
//! retry curve ([`Backoff`](crate::retry::Backoff): jittered, so the watchers of a registry that
//! restarted do not all come back at the same instant). A reconnected stream starts with a `Reset`, so the consumer resyncs and misses nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::Inner;
use crate::error::{Error, Result};
use crate::registry::Change;
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
    let mut backoff = inner.retry.backoff();
    loop {
        let error = match inner.registry.watch(&service).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(change)) => {
                        backoff.reset();
                        let c = change.clone();
                        inner.cache.update(&service, move |view| c.apply(view));
                        if tx.send(Ok(change)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        inner.cache.mark_stale(&service);
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
            },
            Err(e) => e,
        };
        inner.cache.mark_stale(&service);
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
