//! Small helpers shared across the crate.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Locks `m`, poisoned or not. chi's mutexes guard maps and counters that a panicking holder
/// cannot leave in a state worse than losing them (a half-done update is overwritten by the next
/// refresh or round), and a cache or a manager that stopped working after one panic elsewhere
/// would be the bigger failure, so poisoning is ignored in one place instead of at every lock.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A spawned task, aborted when this handle is dropped: background work (the cache refresher, a
/// watch, a health check loop, the keep-alive rounds) lives exactly as long as what owns it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `task` on the current runtime.
    pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }

    /// True once the task has ended (on its own or aborted).
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The longest wait chi's timers take: about 30 years, "never" for a running process (tokio's own
/// "far future" is the same).
pub(crate) const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `at + d` with `d` cut at [`FOREVER`], so a duration near `Duration::MAX` given through the API
/// means "never" instead of overflowing the clock (the `+` of `Instant` panics then).
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FOREVER)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_near_max_after_now_is_far_away_not_a_panic() {
        let now = Instant::now();
        let far = after(now, Duration::MAX);
        assert_eq!(far - now, FOREVER);
        assert_eq!(
            after(now, Duration::from_secs(3)) - now,
            Duration::from_secs(3)
        );
    }
}
