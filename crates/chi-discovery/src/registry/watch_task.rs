//! A background task that feeds a stream, and stops when the stream is dropped.
//!
//! Every watch is the same machine: a task talks to the backend (a blocking query, a gRPC
//! stream, server pushes) and hands changes to the consumer through a bounded channel. Written
//! once per adapter, the four copies differed in how (or whether) they noticed the consumer
//! leaving. Here, as in linkerd2-proxy's `discover/buffer.rs`, one spawn owns the only
//! [`Sender`], and the returned [`TaskStream`] aborts the task when it is dropped, so a watch
//! nobody reads costs nothing afterwards. The task sees the consumer leave too (a failed
//! [`Sender::send`], [`Sender::closed`], [`Sender::sleep`]), and can stop at a point of its own
//! choosing; clean-up that must run either way belongs in a `Drop` of something the task owns.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Change, WatchStream};
use crate::error::Result;

/// Items a watch task may run ahead of its consumer.
pub(crate) const BUFFER: usize = 256;

/// The task's end of the channel.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    tx: mpsc::Sender<T>,
}

impl<T> Sender<T> {
    /// Sends `item`, waiting while the consumer is `BUFFER` items behind. False when the
    /// consumer is gone: the task should end.
    pub(crate) async fn send(&self, item: T) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// Completes when the consumer is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Waits `delay`, or less when the consumer leaves first. False when it left.
    pub(crate) async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.tx.closed() => false,
        }
    }
}

/// The consumer's end: a stream of what the task sends. Dropping it aborts the task.
#[derive(Debug)]
pub(crate) struct TaskStream<T> {
    rx: mpsc::Receiver<T>,
    task: JoinHandle<()>,
}

impl<T> Stream for TaskStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns `task` with the sending end of a channel of `buffer` items and answers the receiving
/// end. The stream ends when the task returns (after the items it sent).
pub(crate) fn spawn<T, F, Fut>(buffer: usize, task: F) -> TaskStream<T>
where
    T: Send + 'static,
    F: FnOnce(Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let task = tokio::spawn(task(Sender { tx }));
    TaskStream { rx, task }
}

/// [`spawn`] for a registry watch: a [`WatchStream`] of [`BUFFER`] changes.
pub(crate) fn spawn_watch<F, Fut>(task: F) -> WatchStream
where
    F: FnOnce(Sender<Result<Change>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn(BUFFER, task).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn items_arrive_in_order_and_the_stream_ends_with_the_task() {
        let stream = spawn(4, |tx| async move {
            for i in 0..10 {
                if !tx.send(i).await {
                    return;
                }
            }
        });
        let got: Vec<i32> = stream.collect().await;
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_task() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let mut stream = spawn(1, move |tx| async move {
            let _flag = flag;
            let _ = tx.send(1).await;
            // Never returns by itself.
            std::future::pending::<()>().await;
        });
        assert_eq!(stream.next().await, Some(1));
        drop(stream);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the task outlived its stream");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_ends_early_when_the_consumer_leaves() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let (tx, rx) = mpsc::channel::<()>(1);
        let sender = Sender { tx };
        let waiter = tokio::spawn(async move {
            let _ = seen_tx.send(sender.sleep(Duration::from_secs(3600)).await);
        });
        drop(rx);
        assert_eq!(seen_rx.await.ok(), Some(false));
        waiter.await.ok();
    }
}
