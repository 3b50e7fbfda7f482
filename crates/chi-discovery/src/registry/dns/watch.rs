//! The watch task of the DNS adapter: resolve again when the records' TTL runs out (within the
//! refresh bounds), send what changed.
//!
//! The first resolution is made in [`start`], so a server that does not answer fails the `watch`
//! call itself, as in the other adapters; the loop then runs under
//! [`watch_task`](crate::registry::watch_task) and ends when the consumer drops the stream. A
//! failed resolution is reported in the stream and the consumer keeps its list; the loop retries
//! with a [`Backoff`] from `min_refresh` to `max_refresh`, and the first answer after it is sent
//! as a `Reset`.

use std::collections::HashMap;
use std::sync::Arc;

use super::Inner;
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::watch_task::{self, Sender};
use crate::registry::{Change, WatchStream, diff};
use crate::retry::Backoff;

/// Resolves once here, then hands the loop to a task.
pub(super) async fn start(inner: Arc<Inner>, service: String) -> Result<WatchStream> {
    let first = inner.resolve(&service).await?;
    let delay = inner.refresh_after(first.ttl);
    let view: HashMap<String, Instance> = first
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.clone()))
        .collect();
    Ok(watch_task::spawn_watch(move |tx| async move {
        if !tx.send(Ok(Change::Reset(first.instances))).await {
            return;
        }
        let failures = Backoff::new(inner.config.min_refresh, inner.config.max_refresh);
        Task {
            inner,
            service,
            view: Some(view),
            failures,
            tx,
        }
        .run(delay)
        .await;
    }))
}

struct Task {
    inner: Arc<Inner>,
    service: String,
    /// The list as the consumer knows it; `None` after an error (the next answer is a `Reset`).
    view: Option<HashMap<String, Instance>>,
    failures: Backoff,
    tx: Sender<Result<Change>>,
}

impl Task {
    async fn run(mut self, mut delay: std::time::Duration) {
        loop {
            if !self.tx.sleep(delay).await {
                return;
            }
            let (items, next) = self.step().await;
            for item in items {
                if !self.tx.send(item).await {
                    return;
                }
            }
            delay = next;
        }
    }

    /// One resolution: what the consumer gets, and when to resolve again.
    async fn step(&mut self) -> (Vec<Result<Change>>, std::time::Duration) {
        let answer = match self.inner.resolve(&self.service).await {
            Ok(answer) => answer,
            Err(e) => {
                self.view = None;
                let delay = self.failures.next_delay();
                if self.failures.failures() == 1 {
                    tracing::warn!(service = %self.service, error = %e, "dns watch failed; keeping the last list and retrying with backoff");
                } else {
                    tracing::debug!(service = %self.service, failures = self.failures.failures(), error = %e, "dns watch still failing");
                }
                return (vec![Err(e)], delay);
            }
        };
        self.failures.reset();
        let delay = self.inner.refresh_after(answer.ttl);
        let items = match self.view.as_mut() {
            Some(view) => {
                let changes = diff(view, &answer.instances);
                for c in &changes {
                    c.clone().apply(view);
                }
                changes.into_iter().map(Ok).collect()
            }
            None => {
                self.view = Some(
                    answer
                        .instances
                        .iter()
                        .map(|i| (i.id.clone(), i.clone()))
                        .collect(),
                );
                vec![Ok(Change::Reset(answer.instances))]
            }
        };
        (items, delay)
    }
}
