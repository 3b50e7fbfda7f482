//! The panic threshold: which instances to balance over.
//!
//! Normally only the usable ones. But when health checks or outlier detection take out most of a
//! service, sending all traffic to the few left overloads them and the outage cascades. Envoy's
//! answer (the *panic threshold*, default 50 %) and Nacos' (the *protect threshold*) is the same:
//! when fewer than that share of instances are usable, balance over **all** of them and accept
//! some failed requests rather than a total one.
//!
//! Default: [`DEFAULT_PANIC_THRESHOLD`] = 0.5, as in Envoy. A threshold of 0 disables panic mode
//! (only usable instances, possibly none). A service with no usable instance at all is always in
//! panic when the threshold is above 0. An empty service is never in panic.

use std::borrow::Cow;

use crate::instance::Instance;

/// Envoy's default panic threshold: 50 % of instances usable.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

/// The share of usable instances below which everything is balanced over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanicThreshold {
    fraction: f64,
}

impl Default for PanicThreshold {
    fn default() -> Self {
        PanicThreshold {
            fraction: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

/// What [`PanicThreshold::select`] chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Balanced<'a> {
    /// The instances to balance over (borrowed when that is all of them).
    pub instances: Cow<'a, [Instance]>,
    /// True when too few instances were usable and all of them were returned.
    pub panic: bool,
    /// How many instances were usable.
    pub usable: usize,
}

impl PanicThreshold {
    /// A threshold as a fraction in `0.0..=1.0` (clamped; NaN counts as 0, i.e. disabled).
    pub fn new(fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        PanicThreshold { fraction }
    }

    /// A threshold in percent, as Envoy configures it (`healthy_panic_threshold`).
    pub fn percent(percent: f64) -> Self {
        Self::new(percent / 100.0)
    }

    /// Panic mode off: only usable instances, even when that is none.
    pub fn disabled() -> Self {
        PanicThreshold { fraction: 0.0 }
    }

    /// The threshold as a fraction.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// True if `usable` of `total` instances is below the threshold.
    pub fn is_panic(&self, usable: usize, total: usize) -> bool {
        if total == 0 || self.fraction <= 0.0 {
            return false;
        }
        // usable / total < fraction, without float division of counts.
        (usable as f64) < self.fraction * (total as f64)
    }

    /// The instances to balance over: those for which `usable` holds, or all of them in panic.
    ///
    /// `usable` is typically `|i| i.health.is_usable() && !outliers.is_ejected(&i.id)`; see
    /// [`PanicThreshold::select_healthy`] for the health part alone.
    pub fn select<'a, F>(&self, instances: &'a [Instance], usable: F) -> Balanced<'a>
    where
        F: Fn(&Instance) -> bool,
    {
        let mask: Vec<bool> = instances.iter().map(&usable).collect();
        let count = mask.iter().filter(|u| **u).count();
        if count == instances.len() || self.is_panic(count, instances.len()) {
            return Balanced {
                instances: Cow::Borrowed(instances),
                panic: count < instances.len(),
                usable: count,
            };
        }
        let kept = instances
            .iter()
            .zip(&mask)
            .filter(|(_, u)| **u)
            .map(|(i, _)| i.clone())
            .collect();
        Balanced {
            instances: Cow::Owned(kept),
            panic: false,
            usable: count,
        }
    }

    /// [`PanicThreshold::select`] with the instances' own health
    /// ([`HealthStatus::is_usable`](crate::HealthStatus::is_usable)).
    pub fn select_healthy<'a>(&self, instances: &'a [Instance]) -> Balanced<'a> {
        self.select(instances, |i| i.health.is_usable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::HealthStatus;
    use proptest::prelude::*;

    fn list(health: &[HealthStatus]) -> Vec<Instance> {
        health
            .iter()
            .enumerate()
            .map(|(n, h)| {
                Instance::new("s", "h", 1)
                    .with_id(format!("i{n}"))
                    .with_health(*h)
            })
            .collect()
    }

    use HealthStatus::{Healthy as H, Unhealthy as U, Unknown as K};

    #[test]
    fn healthy_only_above_the_threshold() {
        let all = list(&[H, H, U, K]);
        let b = PanicThreshold::default().select_healthy(&all);
        assert!(!b.panic);
        assert_eq!(b.usable, 3);
        let ids: Vec<&str> = b.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i0", "i1", "i3"]);
    }

    #[test]
    fn all_below_the_threshold() {
        let all = list(&[H, U, U, U]);
        let b = PanicThreshold::default().select_healthy(&all);
        assert!(b.panic);
        assert_eq!(b.usable, 1);
        assert_eq!(b.instances.len(), 4);
        assert!(matches!(b.instances, Cow::Borrowed(_)));
        // Exactly at the threshold (2 of 4 = 50 %) is not panic, as in Envoy (`<`).
        let half = list(&[H, H, U, U]);
        let b = PanicThreshold::default().select_healthy(&half);
        assert!(!b.panic);
        assert_eq!(b.instances.len(), 2);
    }

    #[test]
    fn none_usable_and_disabled_and_empty() {
        let dead = list(&[U, U]);
        assert!(PanicThreshold::default().select_healthy(&dead).panic);
        let off = PanicThreshold::disabled().select_healthy(&dead);
        assert!(!off.panic);
        assert!(off.instances.is_empty());
        let empty = PanicThreshold::default().select_healthy(&[]);
        assert!(!empty.panic && empty.instances.is_empty());
        assert_eq!(PanicThreshold::percent(30.0).fraction(), 0.3);
        assert_eq!(PanicThreshold::new(f64::NAN).fraction(), 0.0);
        assert_eq!(PanicThreshold::new(7.0).fraction(), 1.0);
    }

    #[test]
    fn custom_predicate_combines_with_outliers() {
        let all = list(&[H, H, H, H]);
        let out = crate::health::OutlierDetector::default();
        out.set_hosts(all.iter().map(|i| i.id.clone()));
        for _ in 0..5 {
            out.record_failure("i2");
        }
        let b = PanicThreshold::default()
            .select(&all, |i| i.health.is_usable() && !out.is_ejected(&i.id));
        assert_eq!(b.instances.len(), 3);
        assert!(!b.instances.iter().any(|i| i.id == "i2"));
    }

    proptest! {
        /// Never empty while something exists (threshold > 0); all in panic; else exactly the usable ones.
        #[test]
        fn selection_rules(health in proptest::collection::vec(prop_oneof![Just(H), Just(U), Just(K)], 0..30), pct in 1u32..=100) {
            let all = list(&health);
            let t = PanicThreshold::percent(f64::from(pct));
            let b = t.select_healthy(&all);
            let usable = all.iter().filter(|i| i.health.is_usable()).count();
            prop_assert_eq!(b.usable, usable);
            if !all.is_empty() {
                prop_assert!(!b.instances.is_empty());
            }
            let panic = (usable as f64) < f64::from(pct) / 100.0 * all.len() as f64;
            if panic {
                prop_assert_eq!(b.instances.len(), all.len());
            } else {
                prop_assert_eq!(b.instances.len(), usable);
                prop_assert!(b.instances.iter().all(|i| i.health.is_usable()));
            }
        }
    }
}
