//! A connection's writes gathered until its task has let the others run once.
//!
//! A change reaches every stream of a connection at about the same time, and each stream's
//! response leaves as an HTTP/2 DATA frame. h2 writes each frame over 256 bytes with a system
//! call of its own (the frame is chained to its header, not copied), and tokio runs a task woken
//! by the running one right after it: a stream's task queues its frame, wakes the connection's
//! task, that one writes the frame, and the next stream's task runs. A hundred streams on a
//! connection made a hundred writes (each a TCP segment through the loopback and the peer's
//! receive path), whatever the writer held per poll.
//!
//! [`Gathered`] holds what the connection writes, up to [`HOLD_MAX`], and writes it once the
//! connection's task has been polled again: its first held write wakes the task, which tokio
//! then queues behind the tasks already woken (the other streams of the change), so their
//! frames join the same write. This is Envoy's write per turn of its event loop, for a runtime
//! that has no turns to hook: the [`Turns`] of the connection's task count its polls instead.
//! What is held is written before any flush in a later poll returns, and no later than the next
//! poll of the task, which the first held write asked for. The price: the last responses a
//! connection holds in a change wait for its task to come around the run queue, behind every
//! task woken before it (at most the change's round), instead of leaving as their stream ran.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before they are written at once: about six responses of a hundred
/// endpoints, and what a connection holds at most between two of its polls. 16, 24, 32, 64 and
/// 128 KiB measured alike within the fan-out bench's noise; the smaller the bound, the less a
/// burst holds.
const HOLD_MAX: usize = 32 * 1024;

/// The polls of one connection's task, counted by [`Turns::count`].
#[derive(Clone, Default)]
pub(crate) struct Turns(Arc<AtomicU64>);

impl Turns {
    /// `future`, counting each poll of it: the task that polls it is the connection's.
    pub(crate) async fn count<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            future.as_mut().poll(cx)
        })
        .await
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `io` with its writes gathered over a turn of its connection's task (see the module docs).
pub(crate) struct Gathered<IO> {
    io: IO,
    turns: Turns,
    held: Vec<u8>,
    /// How much of `held` went out already (a write may take part of it).
    written: usize,
    /// The turn in which the first of the held bytes came.
    since: Option<u64>,
}

impl<IO> Gathered<IO> {
    pub(crate) fn new(io: IO, turns: Turns) -> Gathered<IO> {
        Gathered {
            io,
            turns,
            held: Vec::new(),
            written: 0,
            since: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Gathered<IO> {
    /// Writes everything held.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Nothing kept between turns: a connection at rest holds no buffer.
        self.held = Vec::new();
        self.written = 0;
        self.since = None;
        Poll::Ready(Ok(()))
    }

    /// Holds `bufs` (of `len` bytes in all), writing what is held first when they would not
    /// fit; a single write larger than the bound goes out as it is.
    fn hold(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len > HOLD_MAX {
            ready!(self.drain(cx))?;
            if len > HOLD_MAX {
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
        }
        if self.since.is_none() && len > 0 {
            self.since = Some(self.turns.now());
            // The next poll of the task writes it, behind the tasks woken already.
            cx.waker().wake_by_ref();
        }
        if self.held.capacity() == 0 {
            self.held.reserve_exact(HOLD_MAX);
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gathered<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gathered<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.hold(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.hold(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.since {
            None => {}
            // Held for this turn: the task was woken to write it in the next.
            Some(turn) if turn == self.turns.now() => return Poll::Ready(Ok(())),
            Some(_) => ready!(self.drain(cx))?,
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// A socket that records each write, taking at most `max` bytes of one.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        max: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn gathered(max: usize) -> (Gathered<Recorder>, Turns) {
        let turns = Turns::default();
        let io = Recorder {
            writes: Vec::new(),
            max,
        };
        (Gathered::new(io, turns.clone()), turns)
    }

    fn write(g: &mut Gathered<Recorder>, cx: &mut Context<'_>, bufs: &[&[u8]]) -> usize {
        let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        match Pin::new(g).poll_write_vectored(cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("a write not taken: {other:?}"),
        }
    }

    fn flush(g: &mut Gathered<Recorder>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(g).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    /// What one turn writes leaves in one write in the next turn, and the first held write
    /// asked for that turn; the buffer is not kept after.
    #[test]
    fn one_turn_leaves_in_one_write() {
        let (mut g, turns) = gathered(usize::MAX);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(write(&mut g, &mut cx, &[b"head", b"body"]), 8);
        assert_eq!(write(&mut g, &mut cx, &[b"more"]), 4);
        flush(&mut g, &mut cx);
        assert!(g.io.writes.is_empty(), "held through the turn");
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "one wake for the next turn"
        );
        turns.0.fetch_add(1, Ordering::Relaxed);
        assert_eq!(write(&mut g, &mut cx, &[b"late"]), 4);
        flush(&mut g, &mut cx);
        assert_eq!(g.io.writes, vec![b"headbodymorelate".to_vec()]);
        assert_eq!(g.held.capacity(), 0, "nothing kept between turns");
        flush(&mut g, &mut cx);
        assert_eq!(g.io.writes.len(), 1, "nothing more to write");
    }

    /// A write that would pass the bound sends what is held first; one larger than the bound
    /// goes out as it is, in order; a socket taking part of a write gets the rest after.
    #[test]
    fn the_bound_writes_at_once_in_order() {
        let (mut g, _turns) = gathered(HOLD_MAX / 2);
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let small = vec![1u8; HOLD_MAX / 4];
        let big = vec![2u8; HOLD_MAX + 1];
        for _ in 0..4 {
            write(&mut g, &mut cx, &[&small]);
        }
        assert!(g.io.writes.is_empty(), "four quarters fit");
        write(&mut g, &mut cx, &[&small]);
        assert_eq!(
            g.io.writes.len(),
            2,
            "the held bound went in two partial writes"
        );
        let n = write(&mut g, &mut cx, &[&big]);
        assert_eq!(n, HOLD_MAX / 2, "the large write as the socket took it");
        let sent: Vec<u8> = g.io.writes.concat();
        assert_eq!(sent.len(), HOLD_MAX + HOLD_MAX / 4 + HOLD_MAX / 2);
        assert!(sent[..HOLD_MAX + HOLD_MAX / 4].iter().all(|b| *b == 1));
        assert!(sent[HOLD_MAX + HOLD_MAX / 4..].iter().all(|b| *b == 2));
    }

    /// Shutting down writes what is held, in the same turn.
    #[test]
    fn shutdown_writes_what_is_held() {
        let (mut g, _turns) = gathered(usize::MAX);
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        write(&mut g, &mut cx, &[b"goaway"]);
        assert!(matches!(
            Pin::new(&mut g).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.io.writes, vec![b"goaway".to_vec()]);
    }

    /// The turns are the polls of the future counted.
    #[tokio::test]
    async fn turns_count_polls() {
        let turns = Turns::default();
        let before = turns.now();
        turns.count(tokio::task::yield_now()).await;
        assert_eq!(turns.now() - before, 2, "pending once, then ready");
    }
}
