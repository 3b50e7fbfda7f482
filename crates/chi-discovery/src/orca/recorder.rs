//! What a chi service reports about its load: [`ServerMetrics`] for the process, and
//! [`CallMetrics`] for one request.
//!
//! The shape is gRPC's (`ServerMetricRecorder` and the per-call recorder of gRFC A51): the
//! process-wide values are set by the service (application utilization, named metrics) or
//! measured by chi (CPU from `/proc`, queries and errors per second counted by the
//! [`ReportLayer`](super::ReportLayer)); a handler may add its own request's values, which win
//! over the process's in that request's report. Setting a value is a store of an atomic or a
//! swap of a small map; building a report reads them.
//!
//! Queries and errors per second are counted over the last 10 whole seconds (a ring of
//! one-second buckets; fewer at start), so a report says the recent rate, not the rate since
//! start. Counting is lock-free and approximate: a bucket starting its second may lose the
//! increments of a race with its reset, which a rate over thousands of requests does not feel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::OrcaLoadReport;
use super::cpu::Cpu;
use crate::util::lock;

/// Seconds of the rate window.
const WINDOW: u64 = 10;
/// Buckets: the window and the second being counted.
const BUCKETS: usize = WINDOW as usize + 1;

/// Events per second over the last [`WINDOW`] whole seconds.
struct Rate {
    counts: [AtomicU64; BUCKETS],
    seconds: [AtomicU64; BUCKETS],
}

impl Rate {
    fn new() -> Self {
        Rate {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        }
    }

    fn add(&self, second: u64) {
        let i = (second % BUCKETS as u64) as usize;
        let seen = self.seconds[i].load(Ordering::Acquire);
        if seen != second
            && self.seconds[i]
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.counts[i].store(0, Ordering::Release);
        }
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The rate over the whole seconds before `second` (at most [`WINDOW`] of them).
    fn per_second(&self, second: u64) -> f64 {
        let span = second.clamp(1, WINDOW);
        let from = second.saturating_sub(span);
        let sum: u64 = (0..BUCKETS)
            .filter(|&i| {
                let s = self.seconds[i].load(Ordering::Acquire);
                s >= from && s < second
            })
            .map(|i| self.counts[i].load(Ordering::Relaxed))
            .sum();
        sum as f64 / span as f64
    }
}

/// An `f64` that may be unset (NaN bits).
struct Slot(AtomicU64);

impl Slot {
    fn unset() -> Self {
        Slot(AtomicU64::new(f64::NAN.to_bits()))
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }
}

type Named = ArcSwap<HashMap<String, f64>>;

fn put(map: &Named, name: &str, value: Option<f64>) {
    map.rcu(|m| {
        let mut m = HashMap::clone(m);
        match value {
            Some(v) => m.insert(name.to_owned(), v),
            None => m.remove(name),
        };
        m
    });
}

/// The load this process reports; see the module docs. Share it (`Arc`) between the layers,
/// the out-of-band service and the code that sets values.
pub struct ServerMetrics {
    cpu: Cpu,
    cpu_utilization: Slot,
    application_utilization: Slot,
    mem_utilization: Slot,
    qps: Slot,
    eps: Slot,
    named: Named,
    utilization: Named,
    requests: Rate,
    errors: Rate,
    epoch: tokio::time::Instant,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("report", &self.report())
            .finish()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// Nothing set; CPU measured from `/proc`, rates counted by the layers.
    pub fn new() -> Self {
        ServerMetrics {
            cpu: Cpu::new(),
            cpu_utilization: Slot::unset(),
            application_utilization: Slot::unset(),
            mem_utilization: Slot::unset(),
            qps: Slot::unset(),
            eps: Slot::unset(),
            named: Named::default(),
            utilization: Named::default(),
            requests: Rate::new(),
            errors: Rate::new(),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The application's own utilization (e.g. the larger of CPU and memory for a service bound
    /// by both): weighted round robin prefers it to the CPU's.
    pub fn set_application_utilization(&self, value: f64) {
        self.application_utilization.set(value);
    }

    /// The CPU utilization to report instead of the one read from `/proc`.
    pub fn set_cpu_utilization(&self, value: f64) {
        self.cpu_utilization.set(value);
    }

    /// Memory utilization, a fraction in `[0, 1]`.
    pub fn set_memory_utilization(&self, value: f64) {
        self.mem_utilization.set(value);
    }

    /// Queries per second to report instead of the layers' count.
    pub fn set_qps(&self, value: f64) {
        self.qps.set(value);
    }

    /// Errors per second to report instead of the layers' count.
    pub fn set_eps(&self, value: f64) {
        self.eps.set(value);
    }

    /// An application metric (`named_metrics`).
    pub fn set_named_metric(&self, name: &str, value: f64) {
        put(&self.named, name, Some(value));
    }

    /// Removes an application metric.
    pub fn remove_named_metric(&self, name: &str) {
        put(&self.named, name, None);
    }

    /// A resource's utilization (`utilization`), a fraction in `[0, 1]`.
    pub fn set_utilization(&self, name: &str, value: f64) {
        put(&self.utilization, name, Some(value));
    }

    fn second(&self) -> u64 {
        tokio::time::Instant::now()
            .saturating_duration_since(self.epoch)
            .as_secs()
    }

    /// Counts one finished request (what the layers call); `error` counts it in `eps` too.
    pub fn request_finished(&self, error: bool) {
        let second = self.second();
        self.requests.add(second);
        if error {
            self.errors.add(second);
        }
    }

    /// The report now: set values, else measured ones. Values that are not finite numbers
    /// of at least 0 (where the proto wants that) are left out, so a report always passes
    /// [`super::check`].
    pub fn report(&self) -> OrcaLoadReport {
        let second = self.second();
        let cpu = self
            .cpu_utilization
            .get()
            .unwrap_or_else(|| self.cpu.utilization());
        let mut report = OrcaLoadReport {
            cpu_utilization: cpu,
            application_utilization: self.application_utilization.get().unwrap_or(0.0),
            mem_utilization: self.mem_utilization.get().unwrap_or(0.0),
            rps_fractional: self
                .qps
                .get()
                .unwrap_or_else(|| self.requests.per_second(second)),
            eps: self
                .eps
                .get()
                .unwrap_or_else(|| self.errors.per_second(second)),
            named_metrics: HashMap::clone(&self.named.load()),
            utilization: HashMap::clone(&self.utilization.load()),
            ..OrcaLoadReport::default()
        };
        sanitize(&mut report);
        report
    }
}

/// Zeroes (or drops) values [`super::check`] would refuse.
fn sanitize(r: &mut OrcaLoadReport) {
    for v in [
        &mut r.cpu_utilization,
        &mut r.application_utilization,
        &mut r.mem_utilization,
        &mut r.rps_fractional,
        &mut r.eps,
    ] {
        if !v.is_finite() || *v < 0.0 {
            *v = 0.0;
        }
    }
    r.utilization.retain(|_, v| v.is_finite() && *v >= 0.0);
    r.named_metrics.retain(|_, v| v.is_finite());
    r.request_cost.retain(|_, v| v.is_finite());
}

#[derive(Debug, Default)]
struct CallValues {
    application_utilization: Option<f64>,
    named: HashMap<String, f64>,
    utilization: HashMap<String, f64>,
    cost: HashMap<String, f64>,
}

/// One request's own metrics, added to its report: the [`ReportLayer`](super::ReportLayer) puts
/// one in every request's extensions (an axum handler takes `Extension<CallMetrics>`, a tonic
/// one `request.extensions().get::<CallMetrics>()`).
#[derive(Debug, Clone, Default)]
pub struct CallMetrics(Arc<Mutex<CallValues>>);

impl CallMetrics {
    /// A named metric of this request (wins over the process's of the same name).
    pub fn named_metric(&self, name: &str, value: f64) {
        lock(&self.0).named.insert(name.to_owned(), value);
    }

    /// A cost of this request (`request_cost`, e.g. bytes read).
    pub fn request_cost(&self, name: &str, value: f64) {
        lock(&self.0).cost.insert(name.to_owned(), value);
    }

    /// A resource utilization as of this request.
    pub fn utilization(&self, name: &str, value: f64) {
        lock(&self.0).utilization.insert(name.to_owned(), value);
    }

    /// The application utilization as of this request.
    pub fn application_utilization(&self, value: f64) {
        lock(&self.0).application_utilization = Some(value);
    }

    /// `server`'s report with this request's values laid over it.
    pub fn report(&self, server: &ServerMetrics) -> OrcaLoadReport {
        let mut report = server.report();
        let call = lock(&self.0);
        if let Some(v) = call.application_utilization {
            report.application_utilization = v;
        }
        report
            .named_metrics
            .extend(call.named.iter().map(|(k, v)| (k.clone(), *v)));
        report
            .utilization
            .extend(call.utilization.iter().map(|(k, v)| (k.clone(), *v)));
        report
            .request_cost
            .extend(call.cost.iter().map(|(k, v)| (k.clone(), *v)));
        drop(call);
        sanitize(&mut report);
        report
    }
}
