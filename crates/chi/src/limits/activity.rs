//! What one connection is doing: requests in flight and when the last one ended, so a watchdog
//! can close a connection that sent no request within the header timeout, or none for the idle
//! timeout since its last one ended.
//!
//! A request counts from its head to the end of its response body (an agent's watch stream, an
//! ADS stream: as long as it is open). The bookkeeping is two atomics per request and a clock
//! read at its end; the watchdog sleeps until the next deadline and wakes at most once per idle
//! period while requests run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::Reason;

/// One connection's requests in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when the last request ended.
    last_ms: AtomicU64,
    /// A request has started on this connection.
    started: AtomicBool,
    /// Set by the watchdog of a connection it cannot drop itself (tonic's): reads and writes
    /// fail from then on.
    killed: AtomicBool,
    /// The connection's reader, woken when it is killed.
    pub(super) reader: AtomicWaker,
}

/// A request in flight; ends when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms.store(millis(a.born.elapsed()), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            started: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        })
    }

    /// A request starts.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has waited too long: no first request within `header`
    /// ([`Reason::HeaderTimeout`]), or none in flight for `idle` since the last one ended
    /// ([`Reason::IdleTimeout`]).
    pub(crate) async fn idle(&self, header: Duration, idle: Duration) -> Reason {
        loop {
            let (deadline, reason) = if self.started.load(Ordering::Relaxed) {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                (self.born + last + idle, Reason::IdleTimeout)
            } else {
                (self.born + header, Reason::HeaderTimeout)
            };
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
            } else if self.in_flight.load(Ordering::Acquire) == 0 {
                return reason;
            } else {
                // Busy: look again an idle period later (each end moves the deadline).
                tokio::time::sleep(idle).await;
            }
        }
    }

    /// Makes the connection's reads and writes fail (see [`super::Watched`]).
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.reader.wake();
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_at_the_header_timeout() {
        let a = Activity::new();
        let start = Instant::now();
        let reason = a.idle(Duration::from_secs(2), Duration::from_secs(9)).await;
        assert_eq!(reason, Reason::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_from_the_end_of_the_last_request_never_during_one() {
        let a = Activity::new();
        let start = Instant::now();
        let request = a.start();
        let watchdog = tokio::spawn({
            let a = a.clone();
            async move { a.idle(Duration::from_secs(1), Duration::from_secs(5)).await }
        });
        // A request of 12 s: not idle meanwhile.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!watchdog.is_finished());
        drop(request);
        let reason = watchdog.await.expect("watchdog");
        assert_eq!(reason, Reason::IdleTimeout);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(17) && took <= Duration::from_secs(18),
            "{took:?}"
        );
    }
}
