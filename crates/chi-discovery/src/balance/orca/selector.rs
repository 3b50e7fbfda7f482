//! [`OrcaWeightedRoundRobin`]: smooth weighted round robin over a table rebuilt from the reported
//! weights every update period (see the module docs of `orca`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::reports::{Endpoint, nanos};
use super::{LoadReports, OrcaConfig};
use crate::balance::weighted::{WALK, schedule};
use crate::balance::{
    FastMod, RandomSource, Request, Select, accepts, eligible, pass_turn, scan_from,
};
use crate::instance::Instance;

/// The largest weight of a table: weights are quantized to 1/RESOLUTION of the largest one.
const RESOLUTION: f64 = 1_000.0;
/// Picks between two reads of the clock (a power of two).
const CHECK_EVERY: usize = 16;

/// One table: the schedule and the quantized weights it was built from.
#[derive(Debug)]
struct Table {
    schedule: Box<[u32]>,
    modulo: FastMod,
    weights: Box<[u64]>,
}

impl Table {
    fn new(candidates: &[u32], weights: Box<[u64]>) -> Table {
        let (schedule, _) = schedule(candidates, &weights);
        Table {
            modulo: FastMod::new(schedule.len()),
            schedule: schedule.into(),
            weights,
        }
    }
}

/// `orca_weighted_round_robin`: weighted round robin by the weights servers report; see the
/// module docs.
pub struct OrcaWeightedRoundRobin {
    reports: Arc<LoadReports>,
    config: OrcaConfig,
    /// Instances of non-zero configured weight, as indices into the list.
    candidates: Box<[u32]>,
    /// Their report slots, index-aligned with `candidates`.
    slots: Box<[Arc<Endpoint>]>,
    table: ArcSwap<Table>,
    /// The rotation, across tables.
    next: AtomicUsize,
    /// When the next table is due, in ns of the store's clock.
    due: AtomicU64,
}

impl std::fmt::Debug for OrcaWeightedRoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrcaWeightedRoundRobin")
            .field("instances", &self.candidates.len())
            .field("weights", &self.table.load().weights)
            .finish_non_exhaustive()
    }
}

impl OrcaWeightedRoundRobin {
    /// The selector for `instances`, weighing them by the reports in `reports` (its first table
    /// from the weights that count now); the rotation starts at a place drawn from `rng`.
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
        let weights = quantize(&weights_at(&slots, now, &config));
        OrcaWeightedRoundRobin {
            table: ArcSwap::from_pointee(Table::new(&candidates, weights)),
            candidates: candidates.into(),
            slots,
            next: AtomicUsize::new(rng.next_u64() as usize),
            due: AtomicU64::new(now.saturating_add(nanos(config.update_period()))),
            reports,
            config,
        }
    }

    /// The weights of the current table, index-aligned with the candidates (the instances of
    /// non-zero configured weight, in list order), quantized to at most 1,000.
    pub fn weights(&self) -> Vec<u64> {
        self.table.load().weights.to_vec()
    }

    /// Builds the next table when the update period is over; one caller wins the period.
    #[cold]
    #[inline(never)]
    fn refresh(&self) {
        let now = self.reports.now();
        let due = self.due.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now.saturating_add(nanos(self.config.update_period()));
        if self
            .due
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let weights = quantize(&weights_at(&self.slots, now, &self.config));
        if weights != self.table.load().weights {
            self.table
                .store(Arc::new(Table::new(&self.candidates, weights)));
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
        let raw = self.next.fetch_add(1, Ordering::Relaxed);
        if raw.is_multiple_of(CHECK_EVERY) {
            self.refresh();
        }
        let table = self.table.load();
        if table.schedule.is_empty() {
            return None;
        }
        let turn = table.modulo.reduce(raw);
        let idx = table.schedule[turn] as usize;
        if accepts(instances, request, idx) {
            return Some(idx);
        }
        pass_turn(&self.next, &table.schedule, instances, request, turn, WALK)
            .or_else(|| scan_from(&self.candidates, instances, request, turn))
    }
}
