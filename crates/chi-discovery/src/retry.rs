//! Retries and backoff: the one place chi computes how long to wait before trying again.
//!
//! [`RetryPolicy`] is the config's `retry` block for one registry call: the delays are
//! `initial_interval * multiplier^(n-1)`, capped at `max_interval`, with jitter so that many
//! clients recovering from the same outage do not retry in lockstep. Retries run through the
//! `backon` crate; only transient errors ([`Error::is_transient`]) are retried.
//!
//! `Backoff`, inside the crate, is the same curve for loops that never give up (a watch reopening its stream, a
//! blocking query after an error): it counts consecutive failures, answers the next jittered
//! delay, and starts over after a success. Every adapter's watch uses it, so a fix to the curve
//! (or the jitter) lands everywhere at once.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::Rng;

use crate::error::{Error, Result};

/// How often and how patiently to retry a registry call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (`1` = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_interval: Duration,
    /// Upper bound of any delay.
    pub max_interval: Duration,
    /// Growth factor of the delay.
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

    /// The delay after the `failures`-th consecutive failure (1-based), without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        self.backoff().nominal(failures)
    }

    /// A [`Backoff`] on this policy's curve (its `max_attempts` does not apply: a backoff never
    /// gives up).
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_interval, self.max_interval).multiplier(self.multiplier)
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_interval)
            .with_max_delay(self.max_interval)
            .with_factor(self.multiplier as f32)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the attempts run out.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        op.retry(self.builder())
            .sleep(tokio::time::sleep)
            .when(Error::is_transient)
            .notify(|err: &Error, after: Duration| {
                tracing::debug!(error = %err, ?after, "retrying registry call");
            })
            .await
    }
}

/// Delays for a loop that retries until it succeeds: `initial * multiplier^(n-1)` after the
/// `n`-th consecutive failure, capped at `max`, each one jittered by ±25 %.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    failures: u32,
}

// `failures` and `reset` serve the adapters' watch loops, which come with their features.
#[cfg_attr(
    not(all(feature = "consul", feature = "etcd", feature = "chi")),
    allow(dead_code)
)]
impl Backoff {
    /// Doubling from `initial` up to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
            failures: 0,
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

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over: the next delay is the initial one again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after the `failures`-th consecutive failure (1-based), without jitter.
    pub(crate) fn nominal(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max)
    }

    /// Counts one more failure and answers how long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jitter(self.nominal(self.failures))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never ends: see [`Backoff::next_delay`].
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// `d` ± 25 %, so that many clients do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(4), Duration::from_secs(8));
        assert_eq!(p.delay(5), Duration::from_secs(10));
        assert_eq!(p.delay(500), Duration::from_secs(10));
    }

    #[test]
    fn backoff_grows_is_capped_jittered_and_resets() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(base, cap);
        for n in 1..40u32 {
            let d = backoff.next_delay();
            assert_eq!(backoff.failures(), n);
            let nominal = base.saturating_mul(1 << (n - 1).min(16)).min(cap);
            assert_eq!(backoff.nominal(n), nominal);
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{n}: {d:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next().is_some_and(|d| d <= base.mul_f64(1.25)));
        assert_eq!(
            RetryPolicy::default().backoff().nominal(3),
            RetryPolicy::default().delay(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_up_to_max_attempts() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let res: Result<()> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Unavailable {
                    backend: "x".into(),
                    message: "down".into(),
                })
            })
            .await;
        assert!(res.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two waits of about 1 s and 2 s (jitter adds up to one more delay each).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(7),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_bad_input() {
        let calls = AtomicU32::new(0);
        let res: Result<()> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::invalid("service name", "a/b", "no"))
            })
            .await;
        assert!(res.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
