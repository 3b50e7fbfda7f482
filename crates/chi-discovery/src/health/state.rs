//! The threshold state machine shared by every active check.
//!
//! HAProxy's `rise` / `fall` (and pingora's `consecutive_success` / `consecutive_failure`): a
//! healthy instance becomes unhealthy after `fall` failed probes in a row, an unhealthy one becomes
//! healthy after `rise` successful probes in a row. Defaults are HAProxy's: rise 2, fall 3.
//!
//! An instance starts [`HealthStatus::Unknown`] (usable, like Consul's instances without checks)
//! and its first probe result decides at once: a freshly discovered instance that is down leaves
//! rotation after one probe, not `fall` probes, and a healthy one is confirmed after one. This is
//! HAProxy's default `init-state up` behaviour (one failed check takes a new server down).

use std::time::Duration;

use tokio::time::Instant;

use crate::instance::HealthStatus;

/// Consecutive results needed to change status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes in a row that make an unhealthy instance healthy (HAProxy `rise`, default 2).
    pub rise: u32,
    /// Failures in a row that make a healthy instance unhealthy (HAProxy `fall`, default 3).
    pub fall: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { rise: 2, fall: 3 }
    }
}

impl Thresholds {
    /// `rise` and `fall`, each at least 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Thresholds {
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }
}

/// The health of one instance as its probe results decide it.
#[derive(Debug, Clone)]
pub struct HealthState {
    thresholds: Thresholds,
    status: HealthStatus,
    successes: u32,
    failures: u32,
    since: Instant,
}

impl HealthState {
    /// A new state, [`HealthStatus::Unknown`] since now.
    pub fn new(thresholds: Thresholds) -> Self {
        HealthState {
            thresholds: Thresholds::new(thresholds.rise, thresholds.fall),
            status: HealthStatus::Unknown,
            successes: 0,
            failures: 0,
            since: Instant::now(),
        }
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// When the current status began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// How long the instance has been in its current status.
    pub fn elapsed(&self) -> Duration {
        self.since.elapsed()
    }

    /// Consecutive successes so far (reset by a failure).
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures so far (reset by a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one probe result; returns the new status if it changed.
    pub fn record(&mut self, success: bool) -> Option<HealthStatus> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
        }
        let next = match self.status {
            HealthStatus::Unknown if success => HealthStatus::Healthy,
            HealthStatus::Unknown => HealthStatus::Unhealthy,
            HealthStatus::Healthy if self.failures >= self.thresholds.fall => {
                HealthStatus::Unhealthy
            }
            HealthStatus::Unhealthy if self.successes >= self.thresholds.rise => {
                HealthStatus::Healthy
            }
            current => current,
        };
        if next == self.status {
            return None;
        }
        self.status = next;
        self.since = Instant::now();
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::{Healthy, Unhealthy, Unknown};

    fn run(t: Thresholds, results: &str) -> Vec<HealthStatus> {
        let mut s = HealthState::new(t);
        results
            .chars()
            .map(|c| {
                s.record(c == '+');
                s.status()
            })
            .collect()
    }

    #[test]
    fn defaults_are_haproxys() {
        assert_eq!(Thresholds::default(), Thresholds { rise: 2, fall: 3 });
        assert_eq!(Thresholds::new(0, 0), Thresholds { rise: 1, fall: 1 });
    }

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let t = Thresholds::default();
        assert_eq!(HealthState::new(t).status(), Unknown);
        assert_eq!(run(t, "+"), vec![Healthy]);
        assert_eq!(run(t, "-"), vec![Unhealthy]);
        // Healthy: two failures are tolerated, the third takes it down.
        assert_eq!(
            run(t, "+--+---"),
            vec![
                Healthy, Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy
            ]
        );
        // Unhealthy: one success is not enough, two in a row are.
        assert_eq!(
            run(t, "-+-++"),
            vec![Unhealthy, Unhealthy, Unhealthy, Unhealthy, Healthy]
        );
    }

    #[test]
    fn record_reports_only_transitions() {
        let mut s = HealthState::new(Thresholds::new(1, 1));
        assert_eq!(s.record(true), Some(Healthy));
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(false), Some(Unhealthy));
        assert_eq!(s.failures(), 1);
        assert_eq!(s.record(true), Some(Healthy));
        assert_eq!(s.successes(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn since_marks_the_last_transition() {
        let mut s = HealthState::new(Thresholds::default());
        s.record(true);
        let t0 = s.since();
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.record(false);
        s.record(false);
        assert_eq!(s.since(), t0, "no transition yet");
        s.record(false);
        assert_eq!(s.since() - t0, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(s.elapsed(), Duration::from_secs(7));
    }

    proptest::proptest! {
        /// A status changes only after a run of `rise` successes or `fall` failures (one result
        /// from Unknown), and a long enough run always settles it.
        #[test]
        fn changes_only_after_a_full_run(
            results in proptest::collection::vec(proptest::bool::ANY, 1..200),
            rise in 1u32..6,
            fall in 1u32..6,
        ) {
            let t = Thresholds::new(rise, fall);
            let mut s = HealthState::new(t);
            for (n, ok) in results.iter().enumerate() {
                let before = s.status();
                let changed = s.record(*ok);
                let run = results[..=n].iter().rev().take_while(|r| *r == ok).count();
                if let Some(to) = changed {
                    proptest::prop_assert_eq!(to, if *ok { Healthy } else { Unhealthy });
                    let need = if before == Unknown { 1 } else if *ok { rise } else { fall };
                    proptest::prop_assert!(run >= need as usize);
                }
                if run >= rise.max(fall) as usize {
                    proptest::prop_assert_eq!(s.status(), if *ok { Healthy } else { Unhealthy });
                }
                proptest::prop_assert_ne!(s.status(), Unknown);
            }
        }
    }
}
