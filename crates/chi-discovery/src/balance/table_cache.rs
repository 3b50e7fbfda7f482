//! A per-thread cache of the tables [`Balancer`](super::Balancer)s pick from.
//!
//! A balancer keeps its table in an `ArcSwapOption` (docs/DESIGN.md §2). Reading one costs two
//! read-modify-writes: arc-swap protects the pointer by swapping it into a per-thread debt slot
//! and pays the debt back with a compare-exchange, each as dear as the `fetch_add` picks are
//! measured against, and together more than the rest of a round-robin pick. arc-swap's answer for
//! hot readers is `arc_swap::Cache`: keep the last `Arc` and check with one plain load whether the
//! storage still holds it. That cache needs `&mut` and one copy per reader; a balancer is shared
//! by every thread, so each thread keeps its own here: a small direct-mapped table (slots chosen by
//! Fibonacci hashing of a process-unique balancer id) holding, per balancer, the last table it
//! used and the balancer's *generation* at the time, a counter the balancer bumps after every swap.
//! A pick loads the generation (a plain load on x86) and, when it matches, uses the cached table
//! without touching any reference count; otherwise it reads the balancer once (`load_full`) and
//! caches that.
//!
//! What it costs: each thread re-reads a balancer once after its table changes; balancers that
//! share a slot evict each other (then each pick reads the balancer, as it did without the cache);
//! and a thread keeps at most [`SLOTS`] tables alive after their balancers replaced or dropped
//! them, until its next pick from that balancer or from another one in the same slot, or until it
//! exits. The cached entry is taken out of its slot while the pick runs and put back after, so a
//! predicate that itself picks from a balancer (re-entrance) finds the slot empty and is only a
//! miss.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Select;

/// log2 of the slots per thread.
const BITS: u32 = 6;
/// Slots per thread: tables of this many balancers stay cached at once (24 bytes each).
pub(super) const SLOTS: usize = 1 << BITS;

/// A balancer's table: a selector and the revision of the list it was built from.
pub(super) struct Table {
    pub(super) revision: u64,
    pub(super) selector: Box<dyn Select>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique balancer id (never reused, unlike an address).
pub(super) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

struct Entry {
    id: u64,
    generation: u64,
    state: Arc<Table>,
}

thread_local! {
    static TABLES: [Cell<Option<Entry>>; SLOTS] = const { [const { Cell::new(None) }; SLOTS] };
}

#[inline]
fn slot(id: u64) -> usize {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BITS)) as usize
}

/// Takes this thread's copy of balancer `id`'s table out of its slot, when it is of `generation`.
/// The caller uses it and [`put`]s it back, so a pick that re-enters (a predicate picking from a
/// balancer) finds the slot empty rather than borrowed. `None` on a miss, and when this thread's
/// cache is gone (the thread is exiting).
// Always inlined: these are a few instructions, and values returned through memory cost a pick
// more than the work (profiled: store-forwarding stalls).
#[inline(always)]
pub(super) fn take(id: u64, generation: u64) -> Option<Arc<Table>> {
    TABLES
        .try_with(|slots| {
            let cell = &slots[slot(id)];
            match cell.take() {
                Some(e) if e.id == id && e.generation == generation => Some(e.state),
                other => {
                    cell.set(other);
                    None
                }
            }
        })
        .ok()
        .flatten()
}

/// Stores `state` as this thread's copy of balancer `id`'s table of `generation`, evicting what
/// the slot held.
#[inline(always)]
pub(super) fn put(id: u64, generation: u64, state: Arc<Table>) {
    let evicted = TABLES.try_with(|slots| {
        slots[slot(id)].replace(Some(Entry {
            id,
            generation,
            state,
        }))
    });
    if let Ok(Some(evicted)) = evicted {
        evict(evicted.state);
    }
}

/// Drops an evicted table (maybe the last reference to it), out of the pick's way: passing the
/// `Arc` by value keeps the pick's own values out of memory.
#[cold]
#[inline(never)]
fn evict(state: Arc<Table>) {
    drop(state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_the_slots() {
        let first = next_id();
        let used: std::collections::HashSet<usize> =
            (first..first + SLOTS as u64 / 2).map(slot).collect();
        assert_eq!(used.len(), SLOTS / 2);
    }
}
