//! What a route leads to: the [`Leaf`] of a router's plan (the instances a request may go to,
//! and why), and the [`Routed`] pick its balancer made there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::Guard;

use super::decision::Decision;
use super::plan::LeafData;
use super::stage::Stage;
use super::steps::View;
use crate::balance::Balancer;
use crate::instance::Instance;

/// The leaf of the plan a route leads to: the instances its balancer picks from, and the rules
/// that decided. (Deterministic subsetting, a different thing, is [`Subsetting`](super::Subsetting).)
pub struct Leaf<B: Stage = Balancer> {
    /// An arc-swap guard: holding the plan costs no reference-count write on the fast path.
    pub(super) view: Guard<Arc<View<B>>>,
    pub(super) index: usize,
    pub(super) decision: Decision,
    pub(super) revision: u64,
}

/// The former name of [`Leaf`].
#[deprecated(note = "renamed `Leaf`: \"subset\" now means deterministic subsetting only")]
pub type Subset<B = Balancer> = Leaf<B>;

impl<B: Stage> std::fmt::Debug for Leaf<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("decision", &self.decision)
            .field("len", &self.instances().len())
            .finish()
    }
}

impl<B: Stage> Leaf<B> {
    pub(super) fn data(&self) -> &LeafData<B> {
        &self.view.plan.leaves[self.index]
    }

    /// The instances the balancer picks from (never empty).
    pub fn instances(&self) -> &[Instance] {
        &self.data().instances
    }

    /// The rules that decided.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The version routed to (`None`: any version).
    pub fn version(&self) -> Option<&str> {
        self.data().version.as_deref()
    }

    /// The zone or region routed to (`None`: any place).
    pub fn place(&self) -> Option<&str> {
        self.data().place.as_deref()
    }

    /// The snapshot revision the leaf was routed for.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// A picked instance with the route that led to it. Holds the balancer's in-flight guard (if
/// any) until dropped.
pub struct Routed<B: Stage = Balancer> {
    pub(super) leaf: Leaf<B>,
    pub(super) index: usize,
    pub(super) guard: B::Guard,
    /// Load-aware zone routing: this request's count in its leaf's load, until dropped.
    pub(super) _load: Option<LeafLoad>,
}

/// One request counted in a leaf's in-flight load; uncounted on drop.
pub(super) struct LeafLoad(Arc<AtomicU32>);

impl LeafLoad {
    /// Counts one request in `counter` until dropped.
    pub(super) fn start(counter: &Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        LeafLoad(counter.clone())
    }
}

impl Drop for LeafLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B: Stage> std::fmt::Debug for Routed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("instance", &self.instance().id)
            .field("decision", &self.leaf.decision)
            .finish()
    }
}

impl Routed<Balancer> {
    /// Ends the request, feeding `latency` to the instance's peak-EWMA estimate (what
    /// [`Pick::observe`](crate::balance::Pick::observe) does for a bare balancer pick). Dropping
    /// a `Routed` ends the request without a sample.
    pub fn observe(self, latency: std::time::Duration) {
        if let Some(in_flight) = &self.guard {
            let ewma = self.leaf.data().balancer.config().peak_ewma;
            in_flight.load().observe(latency, &ewma);
        }
    }
}

impl<B: Stage> Routed<B> {
    /// The instance to call.
    pub fn instance(&self) -> &Instance {
        &self.leaf.instances()[self.index]
    }

    /// The leaf it was picked from, and the rules that decided.
    pub fn leaf(&self) -> &Leaf<B> {
        &self.leaf
    }

    /// The former name of [`Routed::leaf`].
    #[deprecated(note = "renamed `leaf`: \"subset\" now means deterministic subsetting only")]
    pub fn subset(&self) -> &Leaf<B> {
        &self.leaf
    }

    /// The rules that decided.
    pub fn decision(&self) -> Decision {
        self.leaf.decision
    }

    /// The strategy of the balancer that picked.
    pub fn strategy(&self) -> &'static str {
        self.leaf.data().balancer.strategy()
    }

    /// Where the picked instance's load reports go, for `orca_weighted_round_robin` (`None` for
    /// the other strategies): hand it the response's report under the instance's id
    /// (`orca::feed_to` with feature `orca`).
    pub fn load_reports(&self) -> Option<&Arc<crate::balance::LoadReports>> {
        self.leaf.data().balancer.load_reports()
    }

    /// The balancer's guard (e.g. an in-flight count), kept alive by the `Routed`.
    pub fn guard(&self) -> &B::Guard {
        &self.guard
    }

    /// Takes the guard out, e.g. into a response future.
    pub fn into_guard(self) -> B::Guard {
        self.guard
    }
}
