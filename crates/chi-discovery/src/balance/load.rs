//! Per-instance load: requests in flight and a peak-EWMA latency estimate.
//!
//! In-flight counting is RAII (as tower's `PendingRequests`): a pick of a load-aware
//! strategy takes an [`InFlight`] guard that incremented the count and decrements it when dropped,
//! so an error, a panic or a cancelled future can't leak a count.
//!
//! A cell counted by a least-connections selector also refreshes that selector's tournament tree
//! (see `min_tree.rs`) after each change of its count. The selector that counts it changes with
//! membership (cells are carried over by instance id), so the cell holds its current tree and
//! position in an `ArcSwapOption`, swapped by the new selector when it is built. The new selector
//! swaps first and reads the counts after (both sequentially consistent), and a guard changes the
//! count first and reads the hook after: so either the guard sees the new tree and refreshes it,
//! or the new selector's read sees the guard's change. Cells of the other strategies have no
//! tree, and a flag read (a plain load) is all they pay for it.
//!
//! The latency estimate is Finagle's / linkerd's *peak EWMA*: a sample above the estimate replaces
//! it at once (react to slowness fast), a sample below moves it by an exponentially weighted
//! average with time constant `decay` (forgive slowly), and the estimate decays toward zero while
//! no sample arrives, so an instance that was slow once gets traffic again. The cost of an instance
//! is `estimate * (in_flight + 1)`. Reads compute the decay without writing; concurrent samples
//! are merged last-writer-wins, a lossy but lock-free update (one sample in a race is lost, which
//! an average tolerates).
//!
//! An instance with no sample yet is *cold*: its estimate is `default_rtt`, a prior rather than a
//! measurement, so it does not decay, and its first sample replaces it. (Decaying it from the
//! instant the cell was made, as tower does, ranks cold instances by their creation instants: on
//! an idle fleet the first-made one won every comparison, and an instance that joined later
//! never won one while the others stayed cold.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::min_tree::LoadTree;

use crate::instance::Instance;

/// Settings of the peak-EWMA cost (tower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwmaConfig {
    /// The estimate of an instance that has no sample yet.
    pub default_rtt: Duration,
    /// Time constant of the decay: after `decay` without samples an estimate is down to 1/e.
    pub decay: Duration,
}

impl Default for PeakEwmaConfig {
    /// 30 ms default RTT, 10 s decay (tower's `PeakEwmaDiscover` defaults).
    fn default() -> Self {
        PeakEwmaConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// The stamp of a cold cell (no sample yet): its estimate is the default, undecayed.
pub(crate) const COLD: u64 = u64::MAX;

pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The load of one instance. Aligned to a cache line so that counters of neighbouring instances
/// don't share one (false sharing between threads picking different instances).
#[derive(Debug)]
#[repr(align(64))]
pub struct Load {
    in_flight: AtomicU64,
    /// Peak-EWMA estimate in nanoseconds, as `f64` bits.
    ewma: AtomicU64,
    /// When `ewma` was last written (ns since the process epoch), [`COLD`] before the first
    /// sample.
    stamp: AtomicU64,
    /// The decay of the settings the cell was made with, for [`Pick`](super::Pick)s, which do not
    /// carry the settings (a smaller pick is a cheaper one to return).
    decay: Duration,
    /// Set (for good) once a least-connections tree counted this cell: only then is `tree` read.
    tracked: AtomicBool,
    /// The tree and position that count this cell now.
    tree: ArcSwapOption<TreeSlot>,
}

/// Where a cell sits in a least-connections tree.
#[derive(Debug)]
pub(crate) struct TreeSlot {
    pub(crate) tree: Arc<LoadTree>,
    pub(crate) pos: usize,
}

impl Load {
    fn new(config: &PeakEwmaConfig) -> Self {
        Load {
            in_flight: AtomicU64::new(0),
            ewma: AtomicU64::new((config.default_rtt.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(COLD),
            decay: config.decay,
            tracked: AtomicBool::new(false),
            tree: ArcSwapOption::const_empty(),
        }
    }

    /// Makes `slot` the tree that counts this cell (`None`: no tree). The caller reads the count
    /// after this returns (see the module docs).
    pub(crate) fn attach(&self, slot: Option<Arc<TreeSlot>>) {
        if slot.is_some() {
            self.tracked.store(true, Ordering::SeqCst);
        }
        self.tree.store(slot);
    }

    /// After a change of the count: refreshes the tree that counts this cell, if any.
    #[inline]
    fn changed(&self) {
        if self.tracked.load(Ordering::SeqCst) {
            self.refresh_tree();
        }
    }

    // Out of line and cold: only least-connections cells take it, and keeping it out of the guard's
    // drop keeps a pick's value in registers for every strategy.
    #[cold]
    #[inline(never)]
    fn refresh_tree(&self) {
        if let Some(slot) = &*self.tree.load() {
            slot.tree.refresh(slot.pos, self);
        }
    }

    /// Requests in flight now.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The latency estimate as of `now` (ns since the process epoch), decayed without writing.
    #[inline]
    fn estimate_at(&self, now: u64, decay_ns: f64) -> f64 {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        match self.stamp.load(Ordering::Relaxed) {
            COLD => ewma,
            stamp => ewma * (-(now.saturating_sub(stamp) as f64) / decay_ns).exp(),
        }
    }

    /// The estimate as last written and when: `(ns, stamp)`, the stamp [`COLD`] while the cell
    /// has no sample. Two estimates decay by the same clock, so comparing them needs no clock read
    /// (see `P2c`).
    #[inline]
    pub(crate) fn raw_estimate(&self) -> (f64, u64) {
        (
            f64::from_bits(self.ewma.load(Ordering::Relaxed)),
            self.stamp.load(Ordering::Relaxed),
        )
    }

    /// The latency estimate now.
    pub fn latency_estimate(&self, config: &PeakEwmaConfig) -> Duration {
        let decay = config.decay.as_nanos().max(1) as f64;
        Duration::from_nanos(self.estimate_at(now_ns(), decay) as u64)
    }

    /// Feeds one latency sample into the estimate.
    pub fn observe(&self, rtt: Duration, config: &PeakEwmaConfig) {
        self.observe_with_decay(rtt, config.decay);
    }

    /// [`observe`](Self::observe) with the decay the cell was made with.
    pub(crate) fn observe_own(&self, rtt: Duration) {
        self.observe_with_decay(rtt, self.decay);
    }

    fn observe_with_decay(&self, rtt: Duration, decay: Duration) {
        let now = now_ns();
        let decay = decay.as_nanos().max(1) as f64;
        let sample = rtt.as_nanos() as f64;
        let old = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let stamp = self.stamp.load(Ordering::Relaxed);
        // The first sample replaces the default (a prior, not a measurement); a peak at once.
        let next = if stamp == COLD || sample > old {
            sample
        } else {
            let w = (-(now.saturating_sub(stamp) as f64) / decay).exp();
            old * w + sample * (1.0 - w)
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now, Ordering::Relaxed);
    }

    /// Counts one more request in flight until the returned guard drops.
    #[inline]
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.changed();
        InFlight { load: self.clone() }
    }
}

/// One request in flight on one instance: the count goes down when this drops.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    load: Arc<Load>,
}

impl InFlight {
    /// The instance's load.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.load.changed();
    }
}

/// The load cells of one instance list, index-aligned with it. Cells are keyed by instance id
/// across rebuilds ([`Loads::carry_over`]), so requests in flight stay counted when membership
/// changes.
#[derive(Debug, Clone)]
pub struct Loads {
    cells: Box<[Arc<Load>]>,
    ids: Box<[Box<str>]>,
    config: PeakEwmaConfig,
}

impl Loads {
    /// Fresh cells for `instances`.
    pub fn new(instances: &[Instance], config: PeakEwmaConfig) -> Self {
        Self::carry_over(instances, None, config)
    }

    /// Cells for `instances`, reusing the cell of every instance (by id) that `previous` already
    /// tracked.
    pub fn carry_over(
        instances: &[Instance],
        previous: Option<&Loads>,
        config: PeakEwmaConfig,
    ) -> Self {
        let old: HashMap<&str, &Arc<Load>> = match previous {
            Some(loads) => loads
                .ids
                .iter()
                .zip(loads.cells.iter())
                .map(|(i, c)| (&**i, c))
                .collect(),
            None => HashMap::new(),
        };
        let cells = instances
            .iter()
            .map(|i| match old.get(i.id.as_str()) {
                Some(c) => Arc::clone(c),
                None => Arc::new(Load::new(&config)),
            })
            .collect();
        let ids = instances.iter().map(|i| Box::from(i.id.as_str())).collect();
        Loads { cells, ids, config }
    }

    /// The cell of instance `index`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&Arc<Load>> {
        self.cells.get(index)
    }

    /// The peak-EWMA settings.
    pub fn config(&self) -> &PeakEwmaConfig {
        &self.config
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True when there is no cell.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}
