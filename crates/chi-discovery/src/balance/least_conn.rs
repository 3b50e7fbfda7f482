//! Least connections: the instance with the fewest requests in flight, relative to its weight
//! (nginx `least_conn`: compare `in_flight / weight`).
//!
//! Counts are held by [`InFlight`](super::InFlight) guards taken with the pick; the
//! Go sketch (docs/DESIGN.md §12) changed its map under a read lock and leaked counts on errors.
//!
//! Finding the minimum without reading every count: the selector keeps a tournament tree over
//! the counts of the instances the default predicate accepts (see `min_tree.rs`), refreshed by
//! the guards themselves as they are taken and dropped. A pick first draws one candidate at random
//! and takes it when it is idle (an idle instance is a minimum, so on a lightly loaded set a pick
//! costs what a random pick does); otherwise it walks the tree down to a least-loaded leaf,
//! O(log n), choosing at random between equal children so that ties spread. Under concurrent
//! picks the tree may lag the counts by the updates in progress, bounded as that module says.
//!
//! The tree covers the pool the balancer's own picks draw from: the healthy instances, or every
//! candidate when health checking is off ([`LeastConnections::over_all`]). A request with its
//! own predicate, or with the other library predicate when the two pools differ, gets the exact
//! scan: O(n) loads, ties broken uniformly by reservoir sampling (Vitter's algorithm R with a
//! reservoir of one: the k-th equal candidate replaces the kept one with probability 1/k). So
//! does a selector built by a [`Balancer`](super::Balancer) only to answer one pick for an
//! outdated list (it does not take the cells over from the current one).

use std::collections::HashSet;
use std::sync::Arc;

use super::load::TreeSlot;
use super::min_tree::{ABSENT, LoadTree, cost};
use super::usable::{Pool, Pools};
use super::{Loads, PeakEwmaConfig, RandomSource, Request, Select, ThreadRandom, accepts, bounded};
use crate::instance::Instance;

/// Fewest in-flight requests per unit of weight.
#[derive(Debug)]
pub struct LeastConnections {
    pools: Pools,
    /// Effective weight of each instance, index-aligned with the list.
    weights: Box<[u32]>,
    loads: Loads,
    rng: Arc<dyn RandomSource>,
    /// Over the positions of the healthy pool (or of every candidate, `over_all`); `None` for a
    /// detached selector.
    tree: Option<Arc<LoadTree>>,
    over_all: bool,
}

impl LeastConnections {
    /// Builds the selector for `instances`, with fresh counters.
    pub fn new(instances: &[Instance]) -> Self {
        Self::build(
            instances,
            None,
            Arc::new(ThreadRandom),
            PeakEwmaConfig::default(),
        )
    }

    /// Builds the selector for `instances`, keeping the counters (by instance id) of `previous`
    /// so requests in flight across a membership change stay counted. The counters then refresh
    /// this selector's tree, no longer the previous one's.
    pub fn build(
        instances: &[Instance],
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
    ) -> Self {
        Self::build_over(instances, previous, rng, config, false)
    }

    /// [`build`](Self::build), with the tree over every candidate when `all` (health checking
    /// off: picks accept unhealthy instances too), else over the healthy ones.
    pub fn over_all(
        instances: &[Instance],
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
    ) -> Self {
        Self::build_over(instances, previous, rng, config, true)
    }

    fn build_over(
        instances: &[Instance],
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
        all: bool,
    ) -> Self {
        let mut selector = Self::build_detached(instances, previous, rng, config);
        selector.over_all = all;
        selector.tree = Some(selector.attach_tree());
        selector
    }

    /// The pool the tree counts.
    fn tree_pool(&self) -> &Pool {
        if self.over_all {
            self.pools.all()
        } else {
            self.pools.healthy()
        }
    }

    /// A selector that scans and leaves the counters' tree where it is: for one pick from an
    /// outdated list while another selector is the current one.
    pub(crate) fn build_detached(
        instances: &[Instance],
        previous: Option<&Loads>,
        rng: Arc<dyn RandomSource>,
        config: PeakEwmaConfig,
    ) -> Self {
        LeastConnections {
            pools: Pools::new(instances),
            weights: instances.iter().map(Instance::effective_weight).collect(),
            loads: Loads::carry_over(instances, previous, config),
            rng,
            tree: None,
            over_all: false,
        }
    }

    /// Builds the tree over its pool and makes it the one the cells refresh. A cell listed
    /// twice (two instances with one id share it) counts at its first position only.
    fn attach_tree(&self) -> Arc<LoadTree> {
        let slots = self.tree_pool().slots();
        let mut counted = HashSet::with_capacity(slots.len());
        let mut first = Vec::with_capacity(slots.len());
        let mut costs = Vec::with_capacity(slots.len());
        let mut weights = Vec::with_capacity(slots.len());
        for &idx in slots {
            let idx = idx as usize;
            let weight = self.weights.get(idx).copied().unwrap_or(1);
            let cell = self.loads.get(idx);
            let fresh = cell.is_some_and(|c| counted.insert(Arc::as_ptr(c)));
            first.push(fresh);
            weights.push(weight);
            costs.push(match cell {
                Some(c) if fresh => cost(c.in_flight(), weight),
                _ => ABSENT,
            });
        }
        let tree = Arc::new(LoadTree::new(&costs, weights));
        for (pos, &idx) in slots.iter().enumerate() {
            if let (true, Some(cell)) = (first[pos], self.loads.get(idx as usize)) {
                cell.attach(Some(Arc::new(TreeSlot {
                    tree: tree.clone(),
                    pos,
                })));
            }
        }
        // Cells this tree does not count (unhealthy instances, when over the healthy ones) leave
        // any older tree.
        for idx in 0..self.loads.len() {
            if let Some(cell) = self.loads.get(idx)
                && !counted.contains(&Arc::as_ptr(cell))
            {
                cell.attach(None);
            }
        }
        // Counts that changed between the first read and the attach (their guards refreshed the
        // older tree): read again, now that every later change refreshes this one.
        for (pos, &idx) in slots.iter().enumerate() {
            if let (true, Some(cell)) = (first[pos], self.loads.get(idx as usize)) {
                tree.refresh(pos, cell);
            }
        }
        tree
    }

    /// The tree (tests).
    #[cfg(test)]
    pub(crate) fn tree_for_tests(&self) -> Option<&LoadTree> {
        self.tree.as_deref()
    }

    /// The tree when it answers for `pool` exactly: the pool it counts (the healthy pool and
    /// every candidate are one when all are healthy).
    #[inline]
    fn tree_for(&self, pool: &Pool) -> Option<&LoadTree> {
        let tree = self.tree.as_deref()?;
        std::ptr::eq(pool, self.tree_pool()).then_some(tree)
    }

    /// A least-loaded instance of `pool` from the tree.
    #[inline]
    fn lightest_in(&self, tree: &LoadTree, pool: &Pool) -> Option<usize> {
        let slots = pool.slots();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let draw = slots[bounded(self.rng.next_u64(), n)] as usize;
        if self.loads.get(draw).is_some_and(|l| l.in_flight() == 0) {
            return Some(draw);
        }
        match tree.lightest(self.rng.next_u64()) {
            Some(pos) => slots.get(pos).map(|&i| i as usize),
            None => self.scan(slots, &[], &Request::any(), false),
        }
    }
}

/// True when `a / wa < b / wb`, without division.
#[inline]
pub(crate) fn lighter(a: u64, wa: u32, b: u64, wb: u32) -> bool {
    u128::from(a) * u128::from(wb) < u128::from(b) * u128::from(wa)
}

impl LeastConnections {
    /// The lightest of `candidates` that `request` accepts (all of them when `check` is false),
    /// each of equal ones as likely as the others.
    fn scan(
        &self,
        candidates: &[u32],
        instances: &[Instance],
        request: &Request<'_>,
        check: bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, u64, u32)> = None;
        // Accepted candidates at the best cost so far.
        let mut ties = 0usize;
        for &idx in candidates {
            let idx = idx as usize;
            let load = self.loads.get(idx).map_or(0, |l| l.in_flight());
            let w = self.weights.get(idx).copied().unwrap_or(1);
            let tie = match best {
                Some((_, bl, bw)) if lighter(bl, bw, load, w) => continue,
                Some((_, bl, bw)) => !lighter(load, w, bl, bw),
                None => false,
            };
            // The predicate only for an instance that may win: most of a scan is loads.
            if check && !accepts(instances, request, idx) {
                continue;
            }
            if tie {
                ties += 1;
                if bounded(self.rng.next_u64(), ties) != 0 {
                    continue;
                }
            } else {
                ties = 1;
            }
            best = Some((idx, load, w));
        }
        best.map(|(idx, _, _)| idx)
    }
}

impl Select for LeastConnections {
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        match self.pools.for_request(request) {
            Some(pool) => match self.tree_for(pool) {
                Some(tree) => self.lightest_in(tree, pool),
                None => self.scan(pool.slots(), instances, request, false),
            },
            None => self.scan(self.pools.all().slots(), instances, request, true),
        }
        .filter(|&idx| idx < instances.len())
    }

    fn loads(&self) -> Option<&Loads> {
        Some(&self.loads)
    }
}
