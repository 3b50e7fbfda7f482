//! Passive health: Envoy's consecutive-failure outlier detection.
//!
//! The caller reports the outcome of each real request ([`OutlierDetector::record_success`],
//! [`OutlierDetector::record_failure`]: a 5xx, a connect error, a reset). As in Envoy's
//! `consecutive_5xx` detector:
//!
//! - `consecutive_failures` failures in a row (default 5) eject the instance;
//! - the ejection lasts `base_ejection_time × n` (default 30 s), where `n` counts the instance's
//!   ejections, capped at `max_ejection_time` (default 300 s), so an instance that keeps failing
//!   stays out longer each time; `n` decays by one for every `base_ejection_time` the instance
//!   then spends in rotation (Envoy decays it per sweep `interval`; chi has no sweep);
//! - at most `max_ejection_percent` (default 10 %) of the known instances are ejected at once.
//!   Envoy's rule is followed: an ejection is allowed while the share *already* ejected is below
//!   the limit, so a small service can still eject one instance (10 % of 5 instances would
//!   otherwise be none);
//! - an instance returns to rotation when its time is up. There is no background sweep: the
//!   ejection deadline is compared with the clock when it is read.
//!
//! The read path, [`OutlierDetector::is_ejected`], is one `ArcSwap` load, one hash lookup and one
//! atomic load (plus a clock read only for an instance that was ever ejected): cheap enough for a
//! balancer to call on every pick. Reporting a success is one atomic load (and a store after a
//! failure); only an ejection takes a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::util::lock;

/// Settings of an [`OutlierDetector`]; the defaults are Envoy's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an instance (Envoy `consecutive_5xx`, default 5).
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection; the n-th lasts n times this (default 30 s).
    pub base_ejection_time: Duration,
    /// Longest ejection (Envoy `max_ejection_time`, default 300 s).
    pub max_ejection_time: Duration,
    /// Most instances ejected at once, in percent of the known instances (default 10).
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

#[derive(Debug, Default)]
struct Host {
    consecutive: AtomicU32,
    /// Nanoseconds since the detector's epoch until which the host is ejected; 0: never ejected.
    ejected_until: AtomicU64,
    /// Ejection multiplier (how many times ejected, with decay).
    multiplier: AtomicU32,
}

type Hosts = HashMap<String, Arc<Host>>;

/// Ejects instances that fail real requests in a row; see the module docs.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    epoch: Instant,
    hosts: ArcSwap<Hosts>,
    write: Mutex<()>,
}

impl Default for OutlierDetector {
    fn default() -> Self {
        Self::new(OutlierConfig::default())
    }
}

impl OutlierDetector {
    /// A detector with no known instances.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config: OutlierConfig {
                consecutive_failures: config.consecutive_failures.max(1),
                max_ejection_percent: config.max_ejection_percent.min(100),
                ..config
            },
            epoch: Instant::now(),
            hosts: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.write)
    }

    /// Sets the known instances (the base of `max_ejection_percent`). Instances that stay keep
    /// their counters and ejections; the others are forgotten.
    pub fn set_hosts<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let _guard = self.lock();
        let old = self.hosts.load();
        let new: Hosts = ids
            .into_iter()
            .map(|id| {
                let id = id.as_ref();
                let host = old.get(id).cloned().unwrap_or_default();
                (id.to_owned(), host)
            })
            .collect();
        self.hosts.store(Arc::new(new));
    }

    fn host(&self, id: &str) -> Arc<Host> {
        if let Some(h) = self.hosts.load().get(id) {
            return h.clone();
        }
        let _guard = self.lock();
        let old = self.hosts.load();
        if let Some(h) = old.get(id) {
            return h.clone();
        }
        let mut new: Hosts = (**old).clone();
        let host = Arc::new(Host::default());
        new.insert(id.to_owned(), host.clone());
        self.hosts.store(Arc::new(new));
        host
    }

    /// True while `id` is ejected. Unknown ids are not.
    #[inline]
    pub fn is_ejected(&self, id: &str) -> bool {
        match self.hosts.load().get(id) {
            Some(h) => {
                let until = h.ejected_until.load(Ordering::Acquire);
                until != 0 && until > self.now()
            }
            None => false,
        }
    }

    /// When the ejection of `id` ends, if it is ejected.
    pub fn ejected_until(&self, id: &str) -> Option<Instant> {
        let until = self
            .hosts
            .load()
            .get(id)?
            .ejected_until
            .load(Ordering::Acquire);
        (until != 0 && until > self.now()).then(|| self.epoch + Duration::from_nanos(until))
    }

    /// The ids ejected now, sorted.
    pub fn ejected(&self) -> Vec<String> {
        let now = self.now();
        let mut out: Vec<String> = self
            .hosts
            .load()
            .iter()
            .filter(|(_, h)| h.ejected_until.load(Ordering::Acquire) > now)
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// The current ejection multiplier of `id` (0: never ejected, or fully decayed at its next
    /// ejection).
    pub fn ejection_multiplier(&self, id: &str) -> u32 {
        self.hosts
            .load()
            .get(id)
            .map_or(0, |h| h.multiplier.load(Ordering::Acquire))
    }

    /// Reports a successful request to `id`: its failure run ends.
    #[inline]
    pub fn record_success(&self, id: &str) {
        if let Some(h) = self.hosts.load().get(id)
            && h.consecutive.load(Ordering::Relaxed) != 0
        {
            h.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Reports a failed request to `id` (unknown ids become known). Returns true if this failure
    /// ejected the instance.
    pub fn record_failure(&self, id: &str) -> bool {
        let host = self.host(id);
        let until = host.ejected_until.load(Ordering::Acquire);
        if until > self.now() {
            // Already out; failures of requests that were in flight do not count twice.
            return false;
        }
        let run = host
            .consecutive
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if run < self.config.consecutive_failures {
            return false;
        }
        self.try_eject(&host)
    }

    /// Reports one request outcome.
    pub fn record(&self, id: &str, success: bool) -> bool {
        if success {
            self.record_success(id);
            false
        } else {
            self.record_failure(id)
        }
    }

    fn try_eject(&self, host: &Arc<Host>) -> bool {
        let _guard = self.lock();
        let now = self.now();
        let prev_until = host.ejected_until.load(Ordering::Acquire);
        if prev_until > now {
            return false;
        }
        let hosts = self.hosts.load();
        let total = hosts.len().max(1);
        let ejected = hosts
            .values()
            .filter(|h| h.ejected_until.load(Ordering::Acquire) > now)
            .count();
        if ejected * 100 >= usize::from(self.config.max_ejection_percent) * total {
            tracing::debug!(
                ejected,
                total,
                max_percent = self.config.max_ejection_percent,
                "outlier not ejected: max_ejection_percent reached"
            );
            return false;
        }
        let base = self.config.base_ejection_time;
        let base_nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
        let decay = if prev_until == 0 {
            0
        } else {
            u32::try_from((now - prev_until) / base_nanos).unwrap_or(u32::MAX)
        };
        let multiplier = host
            .multiplier
            .load(Ordering::Acquire)
            .saturating_sub(decay)
            .saturating_add(1);
        let time = base
            .saturating_mul(multiplier)
            .min(self.config.max_ejection_time.max(base));
        let until = now
            .saturating_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        host.multiplier.store(multiplier, Ordering::Release);
        host.consecutive.store(0, Ordering::Release);
        host.ejected_until.store(until, Ordering::Release);
        tracing::info!(?time, multiplier, "outlier ejected");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(n: usize) -> OutlierDetector {
        let d = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(35),
            max_ejection_percent: 50,
        });
        d.set_hosts((0..n).map(|i| format!("h{i}")));
        d
    }

    fn fail(d: &OutlierDetector, id: &str, times: u32) -> bool {
        (0..times).fold(false, |ejected, _| d.record_failure(id) || ejected)
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_time_unejects() {
        let d = detector(4);
        assert!(!fail(&d, "h0", 2));
        d.record_success("h0");
        assert!(!fail(&d, "h0", 2), "a success ends the run");
        assert!(!d.is_ejected("h0"));
        assert!(d.record_failure("h0"), "third in a row ejects");
        assert!(d.is_ejected("h0"));
        assert_eq!(d.ejected(), vec!["h0"]);
        let until = d.ejected_until("h0").expect("ejected");
        assert_eq!(until - Instant::now(), Duration::from_secs(10));

        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(d.is_ejected("h0"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!d.is_ejected("h0"), "back after base_ejection_time");
        assert!(d.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_is_capped_and_decays() {
        let d = detector(2);
        let mut times = Vec::new();
        for _ in 0..5 {
            assert!(fail(&d, "h0", 3));
            let until = d.ejected_until("h0").expect("ejected");
            let t = until - Instant::now();
            times.push(t.as_secs());
            // Fail again right after the ejection ends: no time to decay.
            tokio::time::sleep(t).await;
        }
        assert_eq!(times, vec![10, 20, 30, 35, 35]);
        assert_eq!(d.ejection_multiplier("h0"), 5);

        // 30 s in rotation decays the multiplier by 3: the next ejection is the 3rd step.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(fail(&d, "h0", 3));
        assert_eq!(d.ejection_multiplier("h0"), 3);
        let t = d.ejected_until("h0").expect("ejected") - Instant::now();
        assert_eq!(t, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_holds() {
        // 50 % of 4: two may be out at once.
        let d = detector(4);
        assert!(fail(&d, "h0", 3));
        assert!(fail(&d, "h1", 3));
        assert!(!fail(&d, "h2", 3), "a third would exceed 50 %");
        assert_eq!(d.ejected(), vec!["h0", "h1"]);
        // Once the first two return, the third is ejected on its next failure.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(d.record_failure("h2"));
        assert_eq!(d.ejected(), vec!["h2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn small_services_can_eject_one_like_envoy() {
        let d = OutlierDetector::default();
        d.set_hosts(["a", "b", "c"]);
        assert!(
            fail(&d, "a", 5),
            "10 % of 3 still allows the first ejection"
        );
        assert!(!fail(&d, "b", 5));
        let zero = OutlierDetector::new(OutlierConfig {
            max_ejection_percent: 0,
            ..OutlierConfig::default()
        });
        zero.set_hosts(["a", "b"]);
        assert!(!fail(&zero, "a", 10), "0 % disables ejection");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_ejected_do_not_count_and_hosts_sync() {
        let d = detector(2);
        assert!(fail(&d, "h0", 3));
        assert!(!fail(&d, "h0", 10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!fail(&d, "h0", 2), "the run restarted at the ejection");
        // Unknown ids become known; dropped ids are forgotten.
        assert!(!d.record_failure("new"));
        d.set_hosts(["h1"]);
        assert!(!d.is_ejected("h0"));
        assert_eq!(d.ejection_multiplier("h0"), 0);
        assert!(!d.is_ejected("nobody"));
    }

    proptest::proptest! {
        /// However failures arrive, no more than Envoy's limit is ejected at once: the first
        /// ejection is always allowed, later ones only while under `max_ejection_percent`.
        #[test]
        fn never_more_than_max_ejection_percent(
            n in 1usize..30,
            pct in 0u8..=100,
            failures in proptest::collection::vec(0usize..30, 0..300),
        ) {
            let d = OutlierDetector::new(OutlierConfig {
                consecutive_failures: 2,
                max_ejection_percent: pct,
                ..OutlierConfig::default()
            });
            d.set_hosts((0..n).map(|i| format!("h{i}")));
            for f in failures {
                d.record_failure(&format!("h{}", f % n));
                let ejected = d.ejected().len();
                let limit = if pct == 0 { 0 } else { (usize::from(pct) * n).div_ceil(100).max(1) };
                proptest::prop_assert!(ejected <= limit, "{ejected} > {limit} of {n} at {pct} %");
            }
        }
    }
}
