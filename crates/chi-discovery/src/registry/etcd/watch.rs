//! The watch task of the etcd adapter: a prefix `get`, then a prefix watch from the next
//! revision, resumed from the last seen revision after a break and restarted from a fresh `get`
//! after a compaction (see the module docs of `registry::etcd`).
//!
//! The task owns the view (id -> last known instance), so a `Remove` carries the last copy and a
//! re-put of an unchanged value (a re-registration) is no event at all. It runs under
//! [`watch_task`], so it ends when the consumer drops the stream; every wait also watches for the
//! consumer leaving. Reopening backs off with [`Backoff`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};

use super::client::{Failure, scrub};
use super::{BACKEND, Inner};
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::registry::watch_task::{self, Sender};
use crate::registry::{Change, WatchStream};
use crate::retry::Backoff;

/// First wait before reopening a broken watch, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Does the initial `get` here (so a dead cluster fails the `watch` call itself), then hands the
/// rest to a task.
pub(super) async fn start(inner: Arc<Inner>, service: String) -> Result<WatchStream> {
    let (list, revision, term) = inner.list(&service).await?;
    let view = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
    Ok(watch_task::spawn_watch(move |tx| async move {
        if !tx.send(Ok(Change::Reset(list))).await {
            return;
        }
        Task {
            dir: inner.service_dir(&service),
            moved: inner.moved.subscribe(),
            inner,
            service,
            view,
            revision,
            term,
            tx,
        }
        .run()
        .await;
    }))
}

/// Why a watch stream stopped.
enum Stop {
    /// The consumer is gone.
    Closed,
    /// etcd compacted the revisions we need, or the store was replaced: start over.
    Resync,
    /// The stream broke; resume from the last seen revision.
    Broken(Error),
}

struct Task {
    inner: Arc<Inner>,
    service: String,
    dir: String,
    /// What the consumer holds, as of `revision`.
    view: HashMap<String, Instance>,
    /// Every event up to this revision is in `view`.
    revision: i64,
    /// The highest raft term seen. Terms never go back in one cluster's life, so a lower one
    /// means etcd lost its data.
    term: u64,
    tx: Sender<Result<Change>>,
    /// Tells when requests moved to another member (see `Inner::moved`).
    moved: tokio::sync::watch::Receiver<u64>,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // After a break the consumer was told about the error; once the watch is back, a `Reset`
        // tells it the view is whole again.
        let mut broken = false;
        loop {
            let stop = match self.open().await {
                Ok(stream) => {
                    // The stream is on the member requests go to now.
                    self.moved.mark_unchanged();
                    if broken && !self.send(Ok(Change::Reset(self.snapshot()))).await {
                        return;
                    }
                    broken = false;
                    backoff.reset();
                    self.pump(stream).await
                }
                Err(stop) => stop,
            };
            match stop {
                Stop::Closed => return,
                Stop::Resync => match self.inner.list(&self.service).await {
                    Ok((list, revision, term)) => {
                        tracing::info!(service = %self.service, revision, "etcd watch resynced");
                        self.view = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
                        self.revision = revision;
                        self.term = term;
                        broken = false;
                        backoff.reset();
                        if !self.send(Ok(Change::Reset(list))).await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        if !self.send(Err(e)).await {
                            return;
                        }
                        // Try the resync again after the backoff: open() fails on the same
                        // compacted revision and lands here.
                    }
                },
                Stop::Broken(e) => {
                    tracing::debug!(service = %self.service, error = %e, revision = self.revision, "etcd watch broke; resuming");
                    if !self.send(Err(e)).await {
                        return;
                    }
                    broken = true;
                }
            }
            if !self.tx.sleep(backoff.next_delay()).await {
                return;
            }
        }
    }

    fn snapshot(&self) -> Vec<Instance> {
        let mut all: Vec<Instance> = self.view.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    async fn send(&self, item: Result<Change>) -> bool {
        self.tx.send(item).await
    }

    /// Opens a prefix watch from `revision + 1` and waits for etcd to confirm it.
    async fn open(&self) -> std::result::Result<etcd_client::WatchStream, Stop> {
        let inner = &self.inner;
        // Is the history from our revision still there? A read at that revision fails with
        // OutOfRange when it was compacted (or lies in the future: a wiped store). etcd would
        // accept the watch either way and only cancel it a moment later, after the consumer had
        // been sent a `Reset` of the old view.
        let revision = self.revision;
        let probe = inner
            .call(|mut client| {
                let dir = self.dir.clone();
                async move {
                    let options = GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_revision(revision);
                    client.get(dir, Some(options)).await
                }
            })
            .await;
        match probe {
            Ok(_) => {}
            Err(Failure::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::OutOfRange =>
            {
                tracing::info!(service = %self.service, revision, reason = s.message(), "etcd history is gone; resyncing");
                return Err(Stop::Resync);
            }
            Err(f) => return Err(Stop::Broken(inner.error("watch", f))),
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify();
        let opened = inner
            .call(|mut client| {
                let (dir, options) = (self.dir.clone(), options.clone());
                async move {
                    let mut stream = client.watch(dir, Some(options)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await;
        let (stream, first) = match opened {
            Ok(v) => v,
            Err(f) => return Err(Stop::Broken(inner.error("watch", f))),
        };
        let Some(first) = first else {
            return Err(Stop::Broken(
                self.unavailable("the watch stream ended at once"),
            ));
        };
        if first.canceled() {
            return Err(self.cancelled(&first));
        }
        // The created answer carries the store's current revision and term. Lower than what we
        // have seen means this is another store (wiped and restarted): our revisions mean nothing
        // there.
        if let Some(h) = first.header()
            && (h.revision() < self.revision || h.raft_term() < self.term)
        {
            tracing::warn!(
                service = %self.service,
                seen_revision = self.revision,
                revision = h.revision(),
                seen_term = self.term,
                term = h.raft_term(),
                "etcd went back in time (wiped?); resyncing"
            );
            return Err(Stop::Resync);
        }
        Ok(stream)
    }

    fn unavailable(&self, message: &str) -> Error {
        Error::Unavailable {
            backend: BACKEND.into(),
            message: format!("watch of `{}`: {message}", self.service),
        }
    }

    fn cancelled(&self, resp: &WatchResponse) -> Stop {
        if resp.compact_revision() > 0 {
            tracing::info!(service = %self.service, compacted = resp.compact_revision(), seen = self.revision, "etcd compacted past the watch; resyncing");
            Stop::Resync
        } else {
            Stop::Broken(self.unavailable(&format!(
                "cancelled by etcd: {}",
                scrub(&self.inner.settings, resp.cancel_reason())
            )))
        }
    }

    /// Forwards events until the stream stops.
    async fn pump(&mut self, mut stream: etcd_client::WatchStream) -> Stop {
        loop {
            let msg = tokio::select! {
                m = stream.message() => Some(m),
                _ = self.tx.closed() => return Stop::Closed,
                Ok(()) = self.moved.changed() => None,
            };
            // Another request found this stream's member dead or leaderless and moved on. A
            // partitioned member drops packets silently, so the stream would only notice at the
            // next HTTP/2 ping; reopen it (from the last revision) on the member in use now.
            let Some(msg) = msg else {
                return Stop::Broken(
                    self.unavailable("requests moved to another etcd member; reopening the watch"),
                );
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => return Stop::Broken(self.unavailable("etcd closed the watch stream")),
                Err(e) => return Stop::Broken(self.inner.error("watch", Failure::Etcd(e))),
            };
            if resp.canceled() {
                return self.cancelled(&resp);
            }
            if let Some(h) = resp.header() {
                self.term = self.term.max(h.raft_term());
            }
            if resp.events().is_empty() {
                // A progress notification: every event up to its revision has been sent.
                if !resp.created()
                    && let Some(h) = resp.header()
                {
                    self.revision = self.revision.max(h.revision());
                }
                continue;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                self.revision = self.revision.max(kv.mod_revision());
                let Some(id) = Inner::id_in(&self.dir, kv.key()) else {
                    continue;
                };
                let change = match event.event_type() {
                    EventType::Put => {
                        let Some(new) = self.inner.parse(&self.service, id, kv.value()) else {
                            continue;
                        };
                        match self.view.insert(id.to_owned(), new.clone()) {
                            None => Change::Add(new),
                            Some(old) if old != new => Change::Update(new),
                            Some(_) => continue,
                        }
                    }
                    EventType::Delete => match self.view.remove(id) {
                        Some(old) => Change::Remove(old),
                        None => continue,
                    },
                };
                if !self.send(Ok(change)).await {
                    return Stop::Closed;
                }
            }
        }
    }
}
