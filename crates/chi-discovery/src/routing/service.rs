//! One service's routing state, for callers that pick per request and learn from the outcome:
//! [`HttpRouter`](crate::integration::HttpRouter) and `chi proxy`.
//!
//! Such a caller keeps, per service, a [`Smart`] router, an [`OutlierDetector`] fed by the
//! outcomes of real calls, and the snapshot revision the detector last saw: the detector's set of
//! instances (the base of its `max_ejection_percent`) must follow the service, and setting it on
//! every request would take its lock on every request. [`ServiceState`] is that trio, so the
//! rule "tell the detector the instances when the revision moves" is written once; the check is
//! one atomic load while nothing moved.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::breaker::{Breaker, Slot};
use super::leaf::Routed;
use super::on_pick::OnPick;
use super::route::Route;
use super::smart::Smart;
use super::stage::Stage;
use crate::balance::Balancer;
use crate::error::Error;
use crate::health::{OutlierConfig, OutlierDetector};
use crate::instance::Instance;
use crate::snapshot::Snapshot;

/// Settings of every [`ServiceState`] a caller makes.
///
/// The configuration file has no outlier section yet, so the defaults are those `chi proxy` has
/// always used: 3 failures in a row eject an instance for 10 s (growing with each ejection, at
/// most 300 s), and at most half of a service's instances are ejected at once. They are tighter
/// than Envoy's ([`OutlierConfig::default`]: 5 failures, 30 s, 10 %) because a client-side
/// balancer often fronts a handful of instances, where 10 % lets only one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStateConfig {
    /// Passive health of the service's instances.
    pub outliers: OutlierConfig,
    /// Circuit breaking: at most this many requests in flight per instance (`None`: no bound).
    pub max_requests_per_instance: Option<u32>,
}

impl Default for ServiceStateConfig {
    fn default() -> Self {
        ServiceStateConfig {
            outliers: OutlierConfig {
                consecutive_failures: 3,
                base_ejection_time: Duration::from_secs(10),
                max_ejection_percent: 50,
                ..OutlierConfig::default()
            },
            max_requests_per_instance: None,
        }
    }
}

/// A pick admitted under the circuit breaker: the routed pick and its slot (freed on drop).
#[derive(Debug)]
pub struct Admitted<B: Stage = Balancer> {
    /// The pick.
    pub routed: Routed<B>,
    /// The instance's slot, with a circuit breaker.
    pub slot: Option<Slot>,
}

/// The routing state of one service: its router, the passive health of its instances and the
/// snapshot revision the latter last saw. See the module docs.
pub struct ServiceState<B: Stage = Balancer> {
    router: Smart<B>,
    outliers: Arc<OutlierDetector>,
    breaker: Option<Breaker>,
    /// Told every admitted pick.
    on_pick: OnPick<B>,
    /// The snapshot revision [`Self::observe`] last told the detector; `u64::MAX` before any.
    revision: AtomicU64,
}

impl<B: Stage> std::fmt::Debug for ServiceState<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("router", &self.router)
            .field("outliers", &self.outliers)
            .field("revision", &self.revision.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: Stage> ServiceState<B> {
    /// The state of a service routed by `router`, with a detector of `config.outliers`.
    pub fn new(router: Smart<B>, config: &ServiceStateConfig) -> Self {
        ServiceState {
            router,
            outliers: Arc::new(OutlierDetector::new(config.outliers.clone())),
            breaker: config.max_requests_per_instance.map(Breaker::new),
            on_pick: OnPick::new(),
            revision: AtomicU64::new(u64::MAX),
        }
    }

    /// Tells `on_pick` every pick [`Self::admit`] admits (a [`Chi`](crate::Chi) stack's
    /// metrics, once registered).
    pub fn on_pick(mut self, on_pick: OnPick<B>) -> Self {
        self.on_pick = on_pick;
        self
    }

    /// The router.
    pub fn router(&self) -> &Smart<B> {
        &self.router
    }

    /// The outlier detector (shared: a pick may carry it to report the outcome later).
    pub fn outliers(&self) -> &Arc<OutlierDetector> {
        &self.outliers
    }

    /// Tells the outlier detector the instances of `snapshot` when its revision is not the one it
    /// last saw, and returns true then (the caller may remake what it keeps per instance).
    /// While nothing moved it is one atomic load: no write, so callers on many threads do not
    /// bounce the cache line between them.
    #[inline]
    pub fn observe(&self, snapshot: &Snapshot) -> bool {
        let rev = snapshot.revision();
        if self.revision.load(Ordering::Acquire) == rev
            || self.revision.swap(rev, Ordering::AcqRel) == rev
        {
            return false;
        }
        self.outliers
            .set_hosts(snapshot.instances().iter().map(|i| i.id.as_str()));
        if let Some(b) = &self.breaker {
            b.observe(snapshot.instances());
        }
        true
    }

    /// The circuit breaker, when the config sets `max_requests_per_instance`.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// Observes `snapshot` ([`Self::observe`]), picks for `route` skipping the instances the
    /// detector ejected (unless it ejected the whole routed leaf: see [`Smart::pick_usable`])
    /// and, with a circuit breaker, takes a slot of the picked instance: instances at their
    /// bound are skipped, and when every instance of the routed leaf is, the pick fails fast
    /// with [`Error::Overloaded`]. The slot is freed when the [`Admitted`] is dropped. The pick
    /// is told to the [`OnPick`] of [`Self::on_pick`].
    pub fn admit(
        &self,
        snapshot: &Snapshot,
        route: &Route<'_>,
        service: &str,
    ) -> Result<Admitted<B>, Error> {
        self.observe(snapshot);
        let outliers = &self.outliers;
        let routed = match &self.breaker {
            None => self
                .router
                .pick_usable(snapshot, route, &|i: &Instance| !outliers.is_ejected(&i.id)),
            Some(b) => self.router.pick_usable(snapshot, route, &|i: &Instance| {
                !outliers.is_ejected(&i.id) && b.has_room(&i.id)
            }),
        };
        let routed = routed.ok_or_else(|| Error::NoInstance {
            service: service.to_owned(),
        })?;
        let slot = match &self.breaker {
            None => None,
            Some(b) => {
                Some(
                    b.try_acquire(&routed.instance().id)
                        .ok_or_else(|| Error::Overloaded {
                            service: service.to_owned(),
                            max_requests: b.max_requests(),
                        })?,
                )
            }
        };
        self.on_pick.tell(service, &routed);
        Ok(Admitted { routed, slot })
    }

    /// Observes `snapshot` ([`Self::observe`]) and picks for `route`, skipping the instances the
    /// detector ejected (unless it ejected the whole routed leaf: see [`Smart::pick_usable`]).
    #[deprecated(
        note = "use `admit`, which also takes the circuit breaker's slot and tells the `OnPick`: one way to pick"
    )]
    pub fn pick(&self, snapshot: &Snapshot, route: &Route<'_>) -> Option<Routed<B>> {
        self.observe(snapshot);
        let outliers = &self.outliers;
        self.router
            .pick_usable(snapshot, route, &|i: &Instance| !outliers.is_ejected(&i.id))
    }

    /// Reports the outcome of a call to instance `id`; true when this failure ejected it.
    pub fn record(&self, id: &str, success: bool) -> bool {
        self.outliers.record(id, success)
    }
}

#[cfg(test)]
mod tests {
    use super::{ServiceState, ServiceStateConfig};
    use crate::balance::{Balancer, Strategy};
    use crate::instance::Instance;
    use crate::routing::RoutingConfig;
    use crate::routing::{Route, Smart};
    use crate::snapshot::Snapshot;

    fn state() -> ServiceState {
        let router = Smart::from_config(&RoutingConfig::default(), || {
            Balancer::new(Strategy::RoundRobin)
        });
        ServiceState::new(router, &ServiceStateConfig::default())
    }

    fn snapshot(ports: &[u16], revision: u64) -> Snapshot {
        let list = ports
            .iter()
            .map(|p| Instance::new("svc", "10.0.0.1", *p))
            .collect();
        Snapshot::new(list, revision)
    }

    #[test]
    fn the_detector_learns_the_instances_once_per_revision() {
        let s = state();
        // Revision 0 is a revision like any other.
        let first = snapshot(&[1, 2], 0);
        assert!(s.observe(&first));
        assert!(!s.observe(&first));
        let second = snapshot(&[1, 2, 3, 4], 1);
        assert!(s.observe(&second));
        assert!(!s.observe(&second));
    }

    #[test]
    fn picks_skip_ejected_instances() {
        let s = state();
        let snap = snapshot(&[1, 2, 3, 4], 1);
        s.observe(&snap);
        let bad = "svc-10.0.0.1-2";
        // The defaults: three failures in a row eject.
        assert!(!s.record(bad, false));
        assert!(!s.record(bad, false));
        assert!(s.record(bad, false));
        for _ in 0..20 {
            let admitted = s.admit(&snap, &Route::new(), "svc").expect("a pick");
            assert_ne!(admitted.routed.instance().id, bad);
        }
    }
}
