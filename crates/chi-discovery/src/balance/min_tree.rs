//! A tournament tree over the in-flight counts of least connections, so that finding the least
//! loaded instance reads one root-to-leaf path instead of every instance.
//!
//! The tree is the classic tournament (winner) tree: a complete binary tree in an array (node `i`
//! has children `2i` and `2i + 1`, the leaves are the last `m = 2^⌈log2 n⌉` slots), each inner node
//! holding the minimum of its children (Knuth, *The Art of Computer Programming* vol. 3, §5.4.1;
//! the same array layout as a segment tree). A leaf holds the cost of one instance, its requests
//! in flight divided by its weight, in fixed point: `min(in_flight, 2^20 - 1) · 2^20 / weight`,
//! exact for weights up to 1,024 and otherwise exact to within 2^-20 requests per unit of weight
//! (flooring is monotone, so a heavier instance never looks lighter: near-equal costs may only tie).
//!
//! Finding the lightest instance walks down from the root, to the lighter child at each level and,
//! when the two are equal, toward a position drawn uniformly before the walk: O(log n) loads. Ties
//! (an idle set, a set evenly loaded) so spread over the instances rather than all going to the
//! first, and evenly: when every position ties, the walk ends on the drawn one. (A coin per level
//! gave a position beside the padding of a tree whose size is not a power of two twice the share
//! of the others: with 3 positions, 1/2, 1/4, 1/4.)
//!
//! Updates come from the requests themselves: taking or dropping an [`InFlight`](super::InFlight)
//! guard changes the instance's count and then refreshes its leaf and, while the value changes,
//! its ancestors: O(log n) in the worst case, O(1) on an idle or evenly loaded set, where a leaf's
//! sibling already holds the minimum of their parent. Concurrent updates are lock-free: every node
//! packs its cost with a 24-bit version, and a refresh recomputes the node from what it reads and
//! installs it with a compare-exchange that bumps the version, retrying when another refresh came
//! first. A refresh that read a child before a concurrent change of it therefore cannot overwrite
//! the fresher value written after that change (its compare-exchange fails on the version), and
//! the thread that changed a node's value is the one that carries it up. This is Jayanti's
//! "refresh" of f-arrays (*f-arrays: implementation and applications*, PODC 2002) with a version
//! tag standing in for load-linked/store-conditional. When no update is in progress the tree is
//! exact; while some are, a pick may read a path that does not yet show them, so the instance it
//! finds has at most one more request per unit of weight than the true minimum for each update in
//! progress (plus the fixed-point rounding). A version wraps after 2^24 updates of one node; a
//! refresh descheduled across exactly that many others could install one stale value, which the
//! next update under that node repairs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Load, bounded};

/// Bits of a node's version.
const VERSION_BITS: u32 = 24;
const VERSION_MASK: u64 = (1 << VERSION_BITS) - 1;
/// Fixed-point scale of a cost, and the largest in-flight count it represents.
const SCALE_BITS: u32 = 20;
const MAX_IN_FLIGHT: u64 = (1 << SCALE_BITS) - 1;
/// The cost of a leaf that is no instance: above every real cost.
pub(crate) const ABSENT: u64 = (1 << (64 - VERSION_BITS)) - 1;

/// The fixed-point cost of `in_flight` requests on an instance of `weight`.
#[inline]
pub(crate) fn cost(in_flight: u64, weight: u32) -> u64 {
    (in_flight.min(MAX_IN_FLIGHT) << SCALE_BITS) / u64::from(weight.max(1))
}

#[inline]
fn cost_of(node: u64) -> u64 {
    node >> VERSION_BITS
}

#[inline]
fn bumped(old: u64, cost: u64) -> u64 {
    (cost << VERSION_BITS) | (old.wrapping_add(1) & VERSION_MASK)
}

/// Minimum costs over the positions `0..n` of a least-connections pool.
#[derive(Debug)]
pub(crate) struct LoadTree {
    /// `nodes[1]` is the root, `nodes[leaves + p]` the leaf of position `p`; `nodes[0]` is unused.
    nodes: Box<[AtomicU64]>,
    weights: Box<[u32]>,
    leaves: usize,
    /// The positions (`n`); the others are padding.
    len: usize,
}

impl LoadTree {
    /// A tree over `costs` (one per position, [`ABSENT`] for a position never to be found), with
    /// the weights of the positions.
    pub(crate) fn new(costs: &[u64], weights: Vec<u32>) -> Self {
        let leaves = costs.len().max(1).next_power_of_two();
        let mut values = vec![ABSENT; 2 * leaves];
        for (p, &c) in costs.iter().enumerate() {
            values[leaves + p] = c.min(ABSENT);
        }
        for i in (1..leaves).rev() {
            values[i] = values[2 * i].min(values[2 * i + 1]);
        }
        LoadTree {
            nodes: values
                .into_iter()
                .map(|c| AtomicU64::new(c << VERSION_BITS))
                .collect(),
            weights: weights.into(),
            leaves,
            len: costs.len(),
        }
    }

    /// The position of a least-cost leaf, ties broken toward the position `random` draws;
    /// `None` when every leaf is absent.
    #[inline]
    pub(crate) fn lightest(&self, random: u64) -> Option<usize> {
        // The leaf path to `target` is its bits, from the top one of `leaves - 1` down.
        let target = bounded(random, self.len.max(1));
        let mut level = self.leaves.trailing_zeros();
        let mut i = 1;
        while i < self.leaves {
            level -= 1;
            let left = cost_of(self.nodes[2 * i].load(Ordering::Relaxed));
            let right = cost_of(self.nodes[2 * i + 1].load(Ordering::Relaxed));
            let toward_right = (target >> level) & 1 == 1;
            i = 2 * i + usize::from(right < left || (right == left && toward_right));
        }
        let node = self.nodes.get(i)?.load(Ordering::Relaxed);
        (cost_of(node) < ABSENT).then(|| i - self.leaves)
    }

    /// Recomputes the leaf of `pos` from `load`'s count, then its ancestors while they change.
    pub(crate) fn refresh(&self, pos: usize, load: &Load) {
        let Some(&weight) = self.weights.get(pos) else {
            return;
        };
        let mut i = self.leaves + pos;
        let Some(mut change) = self.install(i, || cost(load.in_flight(), weight)) else {
            return;
        };
        while i > 1 {
            // The parent is the minimum of its children: when the sibling is no heavier than this
            // node was and is, the parent did not change.
            let sibling = cost_of(self.nodes[i ^ 1].load(Ordering::Acquire));
            if sibling <= change.0.min(change.1) {
                return;
            }
            i /= 2;
            let (left, right) = (&self.nodes[2 * i], &self.nodes[2 * i + 1]);
            match self.install(i, || {
                cost_of(left.load(Ordering::Acquire)).min(cost_of(right.load(Ordering::Acquire)))
            }) {
                Some(c) => change = c,
                None => return,
            }
        }
    }

    /// Sets node `i` to `compute()`, read after the node, bumping its version; retries when
    /// another refresh came first. The node's `(old, new)` cost when it changed.
    #[inline]
    fn install(&self, i: usize, compute: impl Fn() -> u64) -> Option<(u64, u64)> {
        let node = &self.nodes[i];
        let mut old = node.load(Ordering::Acquire);
        loop {
            let cost = compute();
            match node.compare_exchange_weak(
                old,
                bumped(old, cost),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (cost_of(old) != cost).then_some((cost_of(old), cost)),
                Err(now) => old = now,
            }
        }
    }

    /// The cost the tree holds for `pos` (tests).
    #[cfg(test)]
    pub(crate) fn leaf(&self, pos: usize) -> u64 {
        cost_of(self.nodes[self.leaves + pos].load(Ordering::Relaxed))
    }

    /// True when every inner node is the minimum of its children (tests, when quiescent).
    #[cfg(test)]
    pub(crate) fn is_consistent(&self) -> bool {
        (1..self.leaves).all(|i| {
            let c = |j: usize| cost_of(self.nodes[j].load(Ordering::Relaxed));
            c(i) == c(2 * i).min(c(2 * i + 1))
        })
    }
}
