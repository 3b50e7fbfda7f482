//! The server's going away, as every ADS stream waits for it: a flag each stream reads at every
//! turn of its loop, and its waker, registered once.
//!
//! A stream's loop polls this beside its requests and changes, so it is polled at every push
//! and every ACK of every stream. A `watch` (or any `Notify`) takes its notifier's lock at each
//! poll of a waiting future to check the waker, one lock shared by every stream of the server:
//! 20,000 turns of it per change at 10,000 streams, from both cores. Here a turn reads a flag
//! nobody writes before the close and compares the waker with the stream's own copy; the shared
//! lock is taken when a stream starts waiting, when its task's waker changes, and when it ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::sync;

/// Tells every stream that the server is going away.
#[derive(Debug, Clone, Default)]
pub(crate) struct Closing(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    closed: AtomicBool,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Closing {
    /// Ends every stream with `UNAVAILABLE`; clients reconnect (to this server once restarted,
    /// or to another one) and keep their resources meanwhile.
    pub(crate) fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        for waker in sync::lock(&self.0.waiting).values() {
            waker.wake_by_ref();
        }
    }

    /// A future that completes once [`Closing::close`] was called (at once if it was).
    pub(crate) fn closed(&self) -> Closed {
        Closed {
            shared: self.0.clone(),
            id: self.0.next.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }
}

/// See [`Closing::closed`].
#[derive(Debug)]
pub(crate) struct Closed {
    shared: Arc<Shared>,
    id: u64,
    /// The waker last registered, to tell without the lock whether the task's changed.
    registered: Option<Waker>,
}

impl Future for Closed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_none_or(|w| !w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            sync::lock(&this.shared.waiting).insert(this.id, waker.clone());
            this.registered = Some(waker);
            // A close between the first look and the registration woke nobody: look again.
            if this.shared.closed.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        if self.registered.is_some() {
            sync::lock(&self.shared.waiting).remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiting_stream_and_every_later_one_sees_the_close() {
        let closing = Closing::default();
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(closing.closed())).collect();
        tokio::task::yield_now().await;
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "nothing closed yet"
        );
        closing.close();
        for w in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("woken by the close")
                .expect("task");
        }
        closing.closed().await;
        assert!(
            sync::lock(&closing.0.waiting).is_empty(),
            "ended waits leave nothing behind"
        );
    }
}
