//! Weighted round robin by the load the servers report: `orca_weighted_round_robin`.
//!
//! gRPC's `weighted_round_robin` policy (gRFC A58, *client-side weighted round robin*; Envoy's
//! `client_side_weighted_round_robin`) weighs every instance by what it says about itself in
//! ORCA load reports (gRFC A51: a per-request report in each response, or a stream of
//! out-of-band reports): an instance serving `qps` queries per second at `utilization` can take
//! `qps / utilization` of them per unit of its capacity, so that is its weight. The rules, as
//! A58 states them:
//!
//! - **Weight.** `qps / (utilization + eps / qps * error_utilization_penalty)`, where
//!   `utilization` is the report's `application_utilization` when it is set and above 0, else its
//!   `cpu_utilization` (Envoy's and A58's later text), and `eps` the errors per second. A report
//!   without a positive qps and utilization changes nothing.
//! - **Blackout.** A weight counts only once the instance has reported continuously for
//!   `blackout_period` (default 10 s), so that one early report does not swing the traffic.
//! - **Expiry.** A weight last reported `weight_expiration_period` ago (default 3 min) no longer
//!   counts, and the blackout starts again with the next report.
//! - **The others.** An instance without a weight that counts gets the mean of those that have
//!   one; with fewer than two such instances every instance weighs the same (round robin).
//! - **Update.** Weights are read every `weight_update_period` (default 1 s, at least 100 ms) into
//!   a new table.
//!
//! How chi keeps picks lock-free. Reports land in [`LoadReports`], one per service, shared by the
//! balancers of the service's routed subsets: a report writes three atomics of its instance's
//! slot, nothing else. A table is a selector: smooth weighted round robin over the schedule of
//! [`WeightedRoundRobin`](super::WeightedRoundRobin), built from the reported weights quantized
//! to 1/100 of the largest, read as the [`Balancer`](super::Balancer) reads every table (its
//! per-thread cache: no lock, no allocation, no arc-swap load). Every 16th pick reads the clock;
//! the pick that finds the update period over reads every slot (O(n)) and, when the quantized
//! weights changed, builds the successor table and hands it to the balancer, which swaps it in
//! as it does a table for a new list (from 1,000 instances, where a table takes milliseconds,
//! the build runs on tokio's blocking pool, one at a time, and the pick goes on with the current
//! table). The rotation counter carries on across tables and starts at a random place, so
//! tables do not restart at their first slot and clients do not move in step (A58 starts its EDF
//! deadlines at random for the same reason). A service picked fewer than 16 times in a period
//! sees its table follow its traffic rather than the clock; a selector used without a balancer
//! keeps the weights it was built with.
//!
//! With `out_of_band` on, the store opens one out-of-band stream per instance its balancers pick
//! from ([`LoadReports::out_of_band`]; [`Routers`](crate::routing::Routers) does it with
//! features `orca` and `grpc`), closes it when no balancer holds the instance any more, and
//! per-request reports are ignored (A58).
//!
//! Configured weights are not used (0 still takes an instance out): the servers' reports are the
//! weights. Callers hand reports in through a [`LoadSink`] (the store itself, or a
//! [`LoadReporter`] for one instance): `chi proxy`, [`Chi::http`](crate::Chi::http) and the
//! tower/tonic layers of [`crate::orca`] (feature `orca`) read them from responses.

mod reports;
mod selector;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use reports::{LoadReporter, LoadReports, LoadSink, ReportedLoad};
pub use selector::OrcaWeightedRoundRobin;

use crate::instance::Instance;

/// A running out-of-band stream: the stream stops when this is dropped.
pub type OobHandle = Box<dyn std::any::Any + Send + Sync>;

/// Opens out-of-band report streams (`OpenRcaService.StreamCoreMetrics`), one per instance:
/// what [`LoadReports::out_of_band`] uses to follow the instances its balancers pick from.
/// `crate::orca::oob::Streams` (features `orca` and `grpc`) opens them over gRPC.
pub trait OutOfBand: Send + Sync {
    /// Starts `instance`'s stream, handing its reports to `reporter`; `None` when it cannot
    /// (no runtime, an address that is no URI).
    fn open(&self, instance: &Instance, reporter: LoadReporter) -> Option<OobHandle>;
}

/// The shortest `weight_update_period` (A58 raises shorter ones to it).
pub const MIN_UPDATE_PERIOD: Duration = Duration::from_millis(100);

/// Settings of `orca_weighted_round_robin` (`service_discovery.load_balancer.orca`); the
/// defaults are A58's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaConfig {
    /// How long an instance must report before its weight counts (0: at once).
    pub blackout_period: Duration,
    /// A weight not reported for this long no longer counts.
    pub weight_expiration_period: Duration,
    /// How often the weights are read into a new table (at least [`MIN_UPDATE_PERIOD`]).
    pub weight_update_period: Duration,
    /// The multiplier of the error rate (`eps / qps`) added to the utilization.
    pub error_utilization_penalty: f64,
    /// Take reports from out-of-band streams (`OpenRcaService.StreamCoreMetrics`) instead of
    /// from responses; per-request reports are then ignored.
    pub out_of_band: bool,
    /// The report interval asked of out-of-band streams.
    pub oob_reporting_period: Duration,
}

impl Default for OrcaConfig {
    fn default() -> Self {
        OrcaConfig {
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
            out_of_band: false,
            oob_reporting_period: Duration::from_secs(10),
        }
    }
}

impl OrcaConfig {
    /// Checks the settings; a message starts with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        let p = self.error_utilization_penalty;
        if !p.is_finite() || p < 0.0 {
            return Err(format!(
                "error_utilization_penalty: must be a number >= 0 (1.0: an error costs as much as a full CPU), got {p}"
            ));
        }
        if self.weight_expiration_period.is_zero() {
            return Err("weight_expiration_period: must be greater than zero".into());
        }
        if self.weight_update_period.is_zero() {
            return Err("weight_update_period: must be greater than zero".into());
        }
        if self.oob_reporting_period.is_zero() {
            return Err("oob_reporting_period: must be greater than zero".into());
        }
        Ok(())
    }

    /// The update period in force: the configured one, at least [`MIN_UPDATE_PERIOD`].
    pub fn update_period(&self) -> Duration {
        self.weight_update_period.max(MIN_UPDATE_PERIOD)
    }
}
