//! [`OrcaWeightedRoundRobin`]: smooth weighted round robin over a table built from the reported
//! weights, replaced by its successor every update period (see the module docs of `orca`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::reports::{Endpoint, nanos};
use super::{LoadReports, OrcaConfig};
use crate::balance::balancer::Publisher;
use crate::balance::weighted::{WALK, schedule};
use crate::balance::{
    FastMod, RandomSource, Request, Select, accepts, eligible, pass_turn, scan_from,
};
use crate::instance::Instance;

/// The largest weight of a table: weights are quantized to 1/RESOLUTION of the largest one (1 %:
/// finer than reports are steady, and it keeps the periodic rebuild small).
const RESOLUTION: f64 = 100.0;
/// Largest `period * n` built as nginx's exact sequence (O(n) a slot); beyond it, the EDF window.
const EXACT_BUDGET: u64 = 1 << 16;
/// From this many instances, a successor table is built on tokio's blocking pool (when there is
/// a runtime) rather than by the pick that found it due: a few milliseconds and up.
const OFFLOAD: usize = 1_000;
/// Picks between two reads of the clock (a power of two).
const CHECK_EVERY: usize = 16;

/// What the successive tables of one list share: the instances, their report slots, the
/// rotation and when the next table is due.
struct Lineage {
    reports: Arc<LoadReports>,
    config: OrcaConfig,
    /// Instances of non-zero configured weight, as indices into the list.
    candidates: Box<[u32]>,
    /// Their report slots, index-aligned with `candidates`.
    slots: Box<[Arc<Endpoint>]>,
    /// The rotation, across tables.
    next: AtomicUsize,
    /// When the next table is due, in ns of the store's clock.
    due: AtomicU64,
    /// A successor is being built (on the blocking pool it may outlast a period): the next
    /// check leaves it be, so an older table never lands after a newer one.
    building: AtomicBool,
}

/// `orca_weighted_round_robin`: weighted round robin by the weights servers report; see the
/// module docs. One selector is one table; held by a [`Balancer`](crate::balance::Balancer),
/// it hands the balancer its successor when the weights change.
pub struct OrcaWeightedRoundRobin {
    lineage: Arc<Lineage>,
    schedule: Box<[u32]>,
    modulo: FastMod,
    /// The quantized weights of the table, index-aligned with the candidates.
    weights: Box<[u64]>,
    publisher: Option<Publisher>,
}

impl std::fmt::Debug for OrcaWeightedRoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrcaWeightedRoundRobin")
            .field("instances", &self.lineage.candidates.len())
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl OrcaWeightedRoundRobin {
    /// The selector for `instances`, weighing them by the reports in `reports` as they count
    /// now; the rotation starts at a place drawn from `rng`.
    pub fn build(
        instances: &[Instance],
        reports: Arc<LoadReports>,
        rng: &dyn RandomSource,
    ) -> Self {
        let candidates = eligible(instances);
        let listed: Vec<&Instance> = candidates.iter().map(|&i| &instances[i as usize]).collect();
        let slots: Box<[Arc<Endpoint>]> = reports.slots(&listed).into();
        let config = *reports.config();
        let now = reports.now();
        let lineage = Arc::new(Lineage {
            candidates: candidates.into(),
            slots,
            next: AtomicUsize::new(rng.next_u64() as usize),
            due: AtomicU64::new(now.saturating_add(nanos(config.update_period()))),
            building: AtomicBool::new(false),
            reports,
            config,
        });
        let weights = quantize(&weights_at(&lineage.slots, now, &config));
        Self::table(lineage, weights, None)
    }

    fn table(lineage: Arc<Lineage>, weights: Box<[u64]>, publisher: Option<Publisher>) -> Self {
        let (schedule, _) = schedule(&lineage.candidates, &weights, EXACT_BUDGET);
        OrcaWeightedRoundRobin {
            modulo: FastMod::new(schedule.len()),
            schedule: schedule.into(),
            weights,
            lineage,
            publisher,
        }
    }

    /// This selector replacing itself through `publisher` when the weights change.
    pub(crate) fn publishing(mut self, publisher: Option<Publisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// The weights of this table, index-aligned with the candidates (the instances of non-zero
    /// configured weight, in list order), quantized to at most 100.
    pub fn weights(&self) -> &[u64] {
        &self.weights
    }

    /// When the update period is over, reads the weights and, when they changed, hands the
    /// balancer the table of the new ones. One picker wins each period.
    #[cold]
    #[inline(never)]
    fn refresh(&self) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let lineage = &self.lineage;
        let now = lineage.reports.now();
        let due = lineage.due.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now.saturating_add(nanos(lineage.config.update_period()));
        if lineage
            .due
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let weights = quantize(&weights_at(&lineage.slots, now, &lineage.config));
        if weights == self.weights || lineage.building.swap(true, Ordering::Acquire) {
            return;
        }
        let (lineage, publisher) = (lineage.clone(), publisher.clone());
        let build = move || {
            let successor = Self::table(lineage.clone(), weights, Some(publisher.clone()));
            if !publisher.publish(Box::new(successor)) {
                // The balancer was busy replacing its table: the next check tries again.
                lineage.due.store(now, Ordering::Relaxed);
            }
            lineage.building.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.lineage.candidates.len() >= OFFLOAD => {
                runtime.spawn_blocking(build);
            }
            _ => build(),
        }
    }
}

/// The weights that count at `now` (0 for none).
fn weights_at(slots: &[Arc<Endpoint>], now: u64, config: &OrcaConfig) -> Vec<f64> {
    slots.iter().map(|s| s.weight_at(now, config)).collect()
}

/// A58's table weights from the reported ones: an instance without one gets the mean of the
/// others, all weigh the same when fewer than two have one; then scaled so the largest is
/// [`RESOLUTION`], each at least 1.
pub(crate) fn quantize(reported: &[f64]) -> Box<[u64]> {
    let known: Vec<f64> = reported.iter().copied().filter(|w| *w > 0.0).collect();
    if known.len() < 2 {
        return vec![1; reported.len()].into();
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    let max = known.iter().copied().fold(0.0, f64::max);
    reported
        .iter()
        .map(|&w| {
            let w = if w > 0.0 { w } else { mean };
            ((w / max * RESOLUTION).round() as u64).clamp(1, RESOLUTION as u64)
        })
        .collect()
}

impl Select for OrcaWeightedRoundRobin {
    #[inline]
    fn select(&self, instances: &[Instance], request: &Request<'_>) -> Option<usize> {
        let raw = self.lineage.next.fetch_add(1, Ordering::Relaxed);
        if raw.is_multiple_of(CHECK_EVERY) {
            self.refresh();
        }
        if self.schedule.is_empty() {
            return None;
        }
        let turn = self.modulo.reduce(raw);
        let idx = self.schedule[turn] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        pass_turn(
            &self.lineage.next,
            &self.schedule,
            instances,
            request,
            turn,
            WALK,
        )
        .or_else(|| scan_from(&self.lineage.candidates, instances, request, turn))
    }
}
