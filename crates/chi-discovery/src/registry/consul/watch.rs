//! The watch task of the Consul adapter: blocking queries on the health endpoint, by Consul's
//! documented rules (see the module docs of `registry::consul`).
//!
//! The first query is made in [`start`], so an unreachable agent fails the `watch` call itself;
//! the loop then runs under [`watch_task`] and ends when the consumer drops the stream. Errors,
//! spurious wake-ups and empty lists held back each back off with their own [`Backoff`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::api::HealthQuery;
use super::convert::to_instances;
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::watch_task::{self, Sender};
use crate::registry::{Change, WatchStream, diff};
use crate::retry::Backoff;

/// The index of a blocking query, kept by Consul's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct BlockingIndex(pub(super) u64);

/// What an answer's index means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexMove {
    /// Moved forward: something may have changed.
    Forward,
    /// Same index: nothing changed (a wait that timed out, or a spurious wake-up).
    Same,
    /// Went backwards (a new cluster, a restore): start over from 0.
    Reset,
}

impl BlockingIndex {
    /// The next index after an answer carrying `answer`, and how it moved.
    pub(super) fn after_answer(self, answer: u64) -> (BlockingIndex, IndexMove) {
        if answer == 0 {
            // Consul should never answer 0 (it did, in some versions); waiting on 1 is always
            // safe, where waiting on 0 would not block at all.
            (BlockingIndex(1), IndexMove::Same)
        } else if answer < self.0 {
            (BlockingIndex(0), IndexMove::Reset)
        } else if answer == self.0 {
            (self, IndexMove::Same)
        } else {
            (BlockingIndex(answer), IndexMove::Forward)
        }
    }
}

/// Does the first (non-blocking) query here, then hands the loop to a task.
pub(super) async fn start(inner: Arc<Inner>, service: String) -> Result<WatchStream> {
    let answer = inner.note_health(
        inner
            .client
            .health_service(&service, &HealthQuery::default(), None)
            .await,
    )?;
    let index = answer.index;
    let list = to_instances(answer.entries);
    inner.guard_empty(&service, &list)?;
    let view = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
    Ok(watch_task::spawn_watch(move |tx| async move {
        if !tx.send(Ok(Change::Reset(list))).await {
            return;
        }
        Task {
            inner,
            service,
            index: BlockingIndex::default().after_answer(index).0,
            view: Some(view),
            failures: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            // Capped at 2 s: a misbehaving server gets at most one query every ~2 s, and a real
            // change that lands during the pause is still seen within 2 s (the next query with
            // the old index answers at once).
            spurious: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            hold: Backoff::new(Duration::from_millis(200), Duration::from_millis(400))
                .multiplier(1.0),
            tx,
        }
        .run()
        .await;
    }))
}

struct Task {
    inner: Arc<Inner>,
    service: String,
    index: BlockingIndex,
    /// The list as the consumer knows it; `None` after an error (the next answer is a `Reset`).
    view: Option<HashMap<String, Instance>>,
    /// Consecutive failed queries.
    failures: Backoff,
    /// Consecutive blocking queries that came back early without a new index.
    spurious: Backoff,
    /// The pause before asking again for an empty list not believed yet: 200 to 400 ms, jittered,
    /// so the watches of a restarted agent do not all ask at the same instants.
    hold: Backoff,
    tx: Sender<Result<Change>>,
}

impl Task {
    async fn run(mut self) {
        // The pause before the next query: after a failure, or after a spurious wake-up.
        let mut pause = None;
        loop {
            if let Some(delay) = pause.take()
                && !self.tx.sleep(delay).await
            {
                return;
            }
            match self.query().await {
                Step::Send(items, spurious) => {
                    for item in items {
                        if !self.tx.send(item).await {
                            return;
                        }
                    }
                    pause = spurious;
                }
                Step::Failed(e, delay) => {
                    if !self.tx.send(Err(e)).await {
                        return;
                    }
                    pause = Some(delay);
                }
                Step::Hold => pause = Some(self.hold.next_delay()),
            }
        }
    }

    /// One query and what it means for the consumer.
    async fn query(&mut self) -> Step {
        let wait = self.inner.config.wait;
        // Without a list to diff against, ask without blocking: the consumer needs a Reset now.
        let block = (self.view.is_some() && self.index.0 > 0).then_some((self.index.0, wait));
        let started = Instant::now();
        // A consumer that leaves during the (long) wait aborts the task, and the query with it.
        let answer = self
            .inner
            .client
            .health_service(&self.service, &HealthQuery::default(), block)
            .await;
        let (entries, index) = match self.inner.note_health(answer) {
            Ok(answer) => (answer.entries, answer.index),
            Err(e) => {
                self.view = None;
                self.index = BlockingIndex(0);
                let delay = self.failures.next_delay();
                // One warning per outage; the retries that follow are debug noise.
                if self.failures.failures() == 1 {
                    tracing::warn!(service = %self.service, error = %e, "consul watch failed; retrying with backoff");
                } else {
                    tracing::debug!(service = %self.service, failures = self.failures.failures(), error = %e, "consul watch still failing");
                }
                return Step::Failed(e, delay);
            }
        };
        self.failures.reset();
        let (next, moved) = self.index.after_answer(index);
        self.index = next;
        // Only a blocking answer says anything about the server's behaviour: one that comes back
        // early without a new index is a spurious wake-up. Non-blocking answers (after an error
        // or an index reset) leave the count alone, so a server whose index keeps going
        // backwards cannot alternate us into a tight loop.
        let mut pause = None;
        if block.is_some() {
            let early = started.elapsed() < wait / 2;
            if early && moved != IndexMove::Forward {
                pause = Some(self.spurious.next_delay());
                tracing::debug!(service = %self.service, index, "consul blocking query returned early without a new index; backing off");
            } else {
                self.spurious.reset();
            }
        }
        let list = to_instances(entries);
        if self.inner.guard_empty(&self.service, &list).is_err() {
            // A restarted agent before its registrants are back: hold the list.
            tracing::info!(service = %self.service, "empty list from an agent that just came back; holding the last list until confirmed");
            return Step::Hold;
        }
        match self.view.as_mut() {
            Some(view) => {
                let changes = diff(view, &list);
                for c in &changes {
                    c.clone().apply(view);
                }
                Step::Send(changes.into_iter().map(Ok).collect(), pause)
            }
            None => {
                self.view = Some(list.iter().map(|i| (i.id.clone(), i.clone())).collect());
                Step::Send(vec![Ok(Change::Reset(list))], pause)
            }
        }
    }
}

/// What one query leads to.
enum Step {
    /// Items for the consumer (possibly none), and the pause after a spurious wake-up.
    Send(Vec<Result<Change>>, Option<Duration>),
    /// The query failed: report it, then wait this long.
    Failed(crate::Error, Duration),
    /// An empty list that is not believed yet: keep the last list, ask again shortly.
    Hold,
}
