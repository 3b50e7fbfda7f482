//! Retries and backoff: the one place chi computes how long to wait before trying again.
//!
//! One curve serves every loop that tries again: [`RetryPolicy::run`] (a registry call, up to
//! `max_attempts`), and every loop that never gives up: the discovery watch reopening after a
//! break, the manager registering on a backend that failed, the adapters' watch tasks, the
//! stack's follower of its own service, the Nacos login. Each holds a `Backoff` (inside the
//! crate; [`RetryPolicy::run`] and [`RetryPolicy::delay`] draw from one), which counts
//! consecutive failures, answers the next delay, and starts over after a success (the manager,
//! which keeps a failure count per backend anyway, draws with [`RetryPolicy::delay`]); a fix to
//! the curve lands everywhere at once.
//!
//! # The curve: full jitter above a floor
//!
//! Without jitter, every client that saw the same registry restart retries at the same instants
//! (1 s, 3 s, 7 s ... after it), and the registry that just came back takes all of them at once,
//! over and over: the thundering herd. Marc Brooker's "Exponential Backoff and Jitter" (AWS
//! Architecture Blog, 2015) compares the cures; chi takes its *full jitter*, the one it
//! recommends, with the floor of its *decorrelated jitter*:
//!
//! ```text
//! ceiling(n) = min(max_interval, initial_interval * max(multiplier^n, 2))
//! delay(n)   = uniform(initial_interval, ceiling(n))        after the n-th consecutive failure
//! ```
//!
//! - **Full jitter** (a uniform draw up to an exponential ceiling) spreads the herd over the whole
//!   window, and in the article's simulation caused the least work of the jittered curves. It
//!   depends on the failure count alone, so a loop needs no state beyond it, and the config's
//!   numbers keep their meaning: `initial_interval`, `multiplier` and `max_interval` make the
//!   same exponential curve as before, and with the default doubling a wait is on average that
//!   curve's delay plus half an `initial_interval` (the ceiling is one step ahead). Past the cap a
//!   wait averages `(initial_interval + max_interval) / 2`, where it was `max_interval`.
//! - **The floor** (decorrelated jitter draws from `[base, ...]` too, where pure full jitter draws
//!   from `[0, ...]`): no wait is shorter than `initial_interval`, so a client never hammers a
//!   registry that is failing, and `max_attempts` keeps meaning a span of time; from zero, three
//!   attempts of a "1 s, doubling" policy could all be spent within a few milliseconds of a
//!   registry blip.
//! - The ceiling is at least twice the floor, so a multiplier of 1 (a constant delay) is spread
//!   too; only `max_interval == initial_interval` leaves no room for jitter.
//!
//! The randomness comes from a small generator per `Backoff`, seeded from the thread's
//! generator, or from a number (`Backoff::seeded`, for tests) for a sequence that repeats.

use std::future::Future;
use std::time::Duration;

use backon::Retryable;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How often and how patiently to retry a registry call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (`1` = no retry).
    pub max_attempts: u32,
    /// The shortest delay, and the base of the exponential ceiling.
    pub initial_interval: Duration,
    /// Upper bound of any delay.
    pub max_interval: Duration,
    /// Growth factor of the ceiling, per consecutive failure.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 3 attempts, 1 s, at most 10 s, doubling.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay after the `failures`-th consecutive failure (1-based), drawn on the curve (see
    /// the [module docs](self)) from the thread's generator: for loops that count their failures
    /// themselves.
    pub fn delay(&self, failures: u32) -> Duration {
        let curve = self.backoff();
        uniform(curve.initial, curve.ceiling(failures), &mut rand::rng())
    }

    /// A [`Backoff`] on this policy's curve (its `max_attempts` does not apply: a backoff never
    /// gives up).
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_interval, self.max_interval).multiplier(self.multiplier)
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the attempts run out;
    /// the waits between attempts are drawn on the curve of the [module docs](self).
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let retries = self.max_attempts.saturating_sub(1) as usize;
        op.retry(self.backoff().take(retries))
            .sleep(tokio::time::sleep)
            .when(Error::is_transient)
            .notify(|err: &Error, after: Duration| {
                tracing::debug!(error = %err, ?after, "retrying registry call");
            })
            .await
    }
}

/// Delays for a loop that tries again: after the `n`-th consecutive failure, a delay drawn
/// uniformly between `initial` and [`Backoff::ceiling`]`(n)`, which grows by the multiplier up to
/// `max` (see the [module docs](self) for why this curve). It counts the failures, and starts over
/// after a success.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    failures: u32,
    rng: SmallRng,
}

// `failures` and `reset` serve the adapters' watch loops, which come with their features.
#[cfg_attr(
    not(all(feature = "consul", feature = "etcd", feature = "chi")),
    allow(dead_code)
)]
impl Backoff {
    /// Doubling from `initial` up to `max` (a `max` below `initial` is taken as `initial`).
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            failures: 0,
            rng: SmallRng::from_rng(&mut rand::rng()),
        }
    }

    /// Another growth factor (values below 1 are taken as 1).
    pub(crate) fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// Draws the jitter from a generator seeded with `seed`: the same seed gives the same delays
    /// (for tests).
    #[cfg(test)]
    pub(crate) fn seeded(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over: the next delay is drawn from the first range again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The longest delay after the `failures`-th consecutive failure (1-based):
    /// `initial * max(multiplier^failures, 2)`, at most `max`. The shortest is `initial`.
    pub(crate) fn ceiling(&self, failures: u32) -> Duration {
        let growth = self.multiplier.powi(failures.min(1024) as i32).max(2.0);
        scale(self.initial, growth).min(self.max)
    }

    /// Counts one more failure and answers how long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        uniform(self.initial, self.ceiling(self.failures), &mut self.rng)
    }
}

/// A duration drawn uniformly from `[low, high]` (`low` when the range is empty).
fn uniform(low: Duration, high: Duration, rng: &mut impl Rng) -> Duration {
    if high > low {
        rng.random_range(low..=high)
    } else {
        low
    }
}

/// `d * factor` (`factor` at least 1, possibly infinite), saturating instead of overflowing.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never ends: see [`Backoff::next_delay`].
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests;
