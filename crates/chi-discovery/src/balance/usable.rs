//! The candidates of a selector, precomputed for the predicates nearly every pick uses.
//!
//! A request's predicate ([`Request::usable`]) is a `dyn Fn`, so in general a selector has to call
//! it on the instance it drew and draw again when it refuses: an indirect call and a read of the
//! instance (a cache miss on large lists) per candidate, on every pick. But the two predicates the
//! library itself hands out, "not known unhealthy" and "any instance", depend only on the
//! instance list, and a selector is built per list (docs/DESIGN.md §2): health lives in the list,
//! so a health transition is a new list, a new revision and a rebuild. [`Pools`] is built with the
//! selector: the candidates (non-zero weight) and, when some are known unhealthy, the healthy
//! ones, each with its division-free modulus. A pick with either predicate draws from its pool
//! and reads nothing else; any other predicate gets `None` and the selector's general path.
//!
//! The predicates are recognised by identity: [`Request::new`], [`Request::with_key`],
//! [`Request::any`] and [`Balancer::pick`](super::Balancer::pick) copy their `&dyn Fn` out of one
//! `static` each, so a request made by them carries exactly that fat pointer (address and
//! vtable). Comparing both halves cannot mistake another predicate for these: a different closure
//! has a different vtable or, capturing anything, a real address (the `static`s point at
//! zero-sized functions). A request that builds its own `&usable_by_health` may carry another
//! copy of the vtable and then takes the general path: slower, never wrong.

use std::ptr;

use super::{ANY, BY_HEALTH, FastMod, Request, eligible};
use crate::instance::Instance;

/// Which instances a request accepts, as far as a selector can tell without calling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Predicate {
    /// Those not known to be unhealthy.
    Healthy,
    /// All of them.
    All,
    /// Whatever the predicate says, instance by instance.
    Custom,
}

impl Request<'_> {
    /// What this request's predicate is, when it is one of the library's own.
    #[inline]
    pub(crate) fn predicate(&self) -> Predicate {
        if ptr::eq(self.usable, BY_HEALTH) {
            Predicate::Healthy
        } else if ptr::eq(self.usable, ANY) {
            Predicate::All
        } else {
            Predicate::Custom
        }
    }
}

/// Instance indices (into the list the pool was built from) with their count's modulus.
#[derive(Debug)]
pub(crate) struct Pool {
    slots: Box<[u32]>,
    modulo: FastMod,
}

impl Pool {
    fn new(slots: Vec<u32>) -> Self {
        Pool {
            modulo: FastMod::new(slots.len()),
            slots: slots.into(),
        }
    }

    /// The indices.
    #[inline]
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Number of indices.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slot `x mod len` (for a counter; `len > 0`).
    #[inline]
    pub(crate) fn turn(&self, x: usize) -> usize {
        self.modulo.reduce(x)
    }
}

/// The candidates of a selector, and the healthy ones among them.
#[derive(Debug)]
pub(crate) struct Pools {
    all: Pool,
    /// `None` when every candidate is healthy (then `all` serves both).
    healthy: Option<Pool>,
}

impl Pools {
    /// The pools of `instances`: candidates are the instances of non-zero weight.
    pub(crate) fn new(instances: &[Instance]) -> Self {
        let all = eligible(instances);
        let healthy: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&i| instances[i as usize].health.is_usable())
            .collect();
        let healthy = (healthy.len() != all.len()).then(|| Pool::new(healthy));
        Pools {
            all: Pool::new(all),
            healthy,
        }
    }

    /// Every candidate.
    #[inline]
    pub(crate) fn all(&self) -> &Pool {
        &self.all
    }

    /// The candidates not known to be unhealthy.
    #[inline]
    pub(crate) fn healthy(&self) -> &Pool {
        self.healthy.as_ref().unwrap_or(&self.all)
    }

    /// The pool that is exactly what `request` accepts, or `None` for a custom predicate.
    #[inline]
    pub(crate) fn for_request(&self, request: &Request<'_>) -> Option<&Pool> {
        match request.predicate() {
            Predicate::Healthy => Some(self.healthy()),
            Predicate::All => Some(&self.all),
            Predicate::Custom => None,
        }
    }
}
