//! The last stage of a [`Smart`](super::Smart) router: a balancer, or any closure, picking one
//! instance of a routed subset, and the per-pick predicate that may refuse some of them.

use std::sync::Arc;

use crate::balance::{Balancer, InFlight, LoadReports, Request};
use crate::instance::Instance;

/// A per-pick predicate: which instances of a leaf may be picked now.
pub type Usable<'a> = dyn Fn(&Instance) -> bool + Sync + 'a;

/// Accepts every instance: the predicate of a pick with nothing ejected. It is the balancer's
/// own "any instance" predicate ([`Request::any`]), which selectors recognise and serve from a
/// precomputed pool instead of asking it per candidate.
pub(super) fn any_instance() -> &'static Usable<'static> {
    Request::any().usable
}

/// The last stage of [`Smart`](super::Smart): picks one instance from a leaf's list.
///
/// Implemented for closures `Fn(&[Instance], Option<&[u8]>) -> Option<usize>` (strategy name
/// `custom`; a pick that `usable` rejects is asked again, at most once per instance).
pub trait Stage: Send + Sync + 'static {
    /// What a pick holds while the request runs (an in-flight guard), `()` for none.
    type Guard: Send + 'static;

    /// The strategy name, for metrics.
    fn strategy(&self) -> &'static str;

    /// Picks an index into `instances` among those `usable` accepts (e.g. not ejected by an
    /// [`OutlierDetector`](crate::health::OutlierDetector)). `revision` changes exactly when
    /// `instances` does.
    fn pick(
        &self,
        instances: &[Instance],
        revision: u64,
        key: Option<&[u8]>,
        usable: &Usable<'_>,
    ) -> Option<(usize, Self::Guard)>;

    /// Where this stage takes the servers' load reports (`orca_weighted_round_robin`), if it
    /// does.
    fn load_reports(&self) -> Option<&Arc<LoadReports>> {
        None
    }
}

impl<F> Stage for F
where
    F: Fn(&[Instance], Option<&[u8]>) -> Option<usize> + Send + Sync + 'static,
{
    type Guard = ();

    fn strategy(&self) -> &'static str {
        "custom"
    }

    fn pick(
        &self,
        instances: &[Instance],
        _revision: u64,
        key: Option<&[u8]>,
        usable: &Usable<'_>,
    ) -> Option<(usize, ())> {
        // Ask again (at most once per instance) while the pick is not usable.
        (0..instances.len().max(1))
            .map_while(|_| self(instances, key))
            .find(|i| instances.get(*i).is_some_and(usable))
            .map(|i| (i, ()))
    }
}

/// The real balancers: the leaf's list is picked with the strategy's table for that leaf (built
/// once per revision, as [`Balancer`] does for a whole service); the guard is the in-flight count
/// of load-aware strategies.
impl Stage for Balancer {
    type Guard = Option<InFlight>;

    fn strategy(&self) -> &'static str {
        Balancer::strategy(self).as_str()
    }

    #[inline]
    fn pick(
        &self,
        instances: &[Instance],
        revision: u64,
        key: Option<&[u8]>,
        usable: &Usable<'_>,
    ) -> Option<(usize, Option<InFlight>)> {
        let request = Request { key, usable };
        let mut pick = self.pick_in(instances, revision, &request)?;
        Some((pick.index(), pick.take_in_flight()))
    }

    fn load_reports(&self) -> Option<&Arc<LoadReports>> {
        Balancer::load_reports(self)
    }
}
