//! The reported load of one service's instances: a slot of atomics per instance, written by
//! reports and read when a table is built (see the module docs of `orca`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{OobHandle, OrcaConfig, OutOfBand};
use crate::instance::Instance;
use crate::util::lock;

/// What a load report says that the weight depends on (the fields of an ORCA `OrcaLoadReport`
/// that A58 reads; [`crate::orca`] converts the whole report).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReportedLoad {
    /// Queries per second the instance serves (`rps_fractional`).
    pub qps: f64,
    /// Errors per second (`eps`).
    pub eps: f64,
    /// CPU utilization, a fraction of the CPUs available (`cpu_utilization`).
    pub cpu_utilization: f64,
    /// The application's own utilization (`application_utilization`), preferred when above 0.
    pub application_utilization: f64,
}

impl ReportedLoad {
    /// The utilization the weight divides by: the application's when above 0, else the CPU's.
    pub fn utilization(&self) -> f64 {
        if self.application_utilization.is_finite() && self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }

    /// A58's weight, `qps / (utilization + eps / qps * penalty)`; 0 when the report has no
    /// positive, finite qps and utilization (such a report changes nothing).
    pub fn weight(&self, error_utilization_penalty: f64) -> f64 {
        let qps = self.qps;
        let mut utilization = self.utilization();
        if !(qps.is_finite() && qps > 0.0 && utilization.is_finite() && utilization > 0.0) {
            return 0.0;
        }
        if self.eps.is_finite() && self.eps > 0.0 {
            utilization += self.eps / qps * error_utilization_penalty;
        }
        let weight = qps / utilization;
        if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            0.0
        }
    }
}

/// Where load reports go: a service's [`LoadReports`], or anything else that wants them (a
/// metric, a log).
pub trait LoadSink: Send + Sync {
    /// Takes a report of instance `instance_id`.
    fn record(&self, instance_id: &str, load: &ReportedLoad);

    /// False when this sink takes out-of-band reports only: callers then skip reading
    /// per-request reports (A58: with out-of-band reporting on, per-call reports are ignored).
    fn per_request(&self) -> bool {
        true
    }
}

/// A handle that hands one instance's reports to a [`LoadSink`]: cheap to clone, to move into
/// a response future or an out-of-band stream's task.
#[derive(Clone)]
pub struct LoadReporter {
    sink: Arc<dyn LoadSink>,
    instance_id: Arc<str>,
}

impl std::fmt::Debug for LoadReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadReporter")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl LoadReporter {
    /// Reports of `instance_id`, into `sink`.
    pub fn new(sink: Arc<dyn LoadSink>, instance_id: impl Into<Arc<str>>) -> Self {
        LoadReporter {
            sink,
            instance_id: instance_id.into(),
        }
    }

    /// Hands one report over.
    pub fn record(&self, load: &ReportedLoad) {
        self.sink.record(&self.instance_id, load);
    }

    /// The instance.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Whether the sink wants per-request reports ([`LoadSink::per_request`]).
    pub fn per_request(&self) -> bool {
        self.sink.per_request()
    }
}

/// A reporter is a sink too: what it takes goes to its sink, under the id it was given.
impl LoadSink for LoadReporter {
    fn record(&self, instance_id: &str, load: &ReportedLoad) {
        self.sink.record(instance_id, load);
    }

    fn per_request(&self) -> bool {
        self.sink.per_request()
    }
}

/// "Not yet": a time no slot has.
const NEVER: u64 = u64::MAX;

/// One instance's reported weight and the two times A58 keeps with it, in ns since the store's
/// epoch. Written by reports (relaxed stores: the three are read together only to decide
/// whether the weight counts, and a report racing a read is as good as the one before it).
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `f64` bits.
    weight: AtomicU64,
    /// Since when the instance has reported without a gap longer than the expiration.
    non_empty_since: AtomicU64,
    last_update: AtomicU64,
}

impl Endpoint {
    fn new() -> Self {
        Endpoint {
            weight: AtomicU64::new(0f64.to_bits()),
            non_empty_since: AtomicU64::new(NEVER),
            last_update: AtomicU64::new(NEVER),
        }
    }

    /// A report of `weight` (> 0) at `now`; a report after an expired one starts the blackout.
    fn record(&self, weight: f64, now: u64, expiration: u64) {
        let last = self.last_update.swap(now, Ordering::Relaxed);
        if last == NEVER || now.saturating_sub(last) >= expiration {
            self.non_empty_since.store(now, Ordering::Relaxed);
        } else {
            let _ = self.non_empty_since.compare_exchange(
                NEVER,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.weight.store(weight.to_bits(), Ordering::Relaxed);
    }

    /// The weight that counts at `now` (0: none, blacked out or expired).
    pub(crate) fn weight_at(&self, now: u64, config: &OrcaConfig) -> f64 {
        let last = self.last_update.load(Ordering::Relaxed);
        if last == NEVER {
            return 0.0;
        }
        if now.saturating_sub(last) >= nanos(config.weight_expiration_period) {
            self.non_empty_since.store(NEVER, Ordering::Relaxed);
            return 0.0;
        }
        let since = self.non_empty_since.load(Ordering::Relaxed);
        if since == NEVER || now.saturating_sub(since) < nanos(config.blackout_period) {
            return 0.0;
        }
        f64::from_bits(self.weight.load(Ordering::Relaxed))
    }

    /// True when the slot's last report is older than the expiration (or there was none).
    fn expired(&self, now: u64, config: &OrcaConfig) -> bool {
        let last = self.last_update.load(Ordering::Relaxed);
        last == NEVER || now.saturating_sub(last) >= nanos(config.weight_expiration_period)
    }
}

pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

type Slots = FxHashMap<Box<str>, Arc<Endpoint>>;

/// Out-of-band streams by instance id, with the authority each goes to.
type OpenStreams = FxHashMap<Box<str>, (String, OobHandle)>;

/// The reported load of one service's instances, by instance id: the [`LoadSink`] of
/// `orca_weighted_round_robin`, shared by every balancer of the service (a [`Balancer`] makes
/// its own unless its [`BalancerConfig::load_reports`] names one; [`Routers`] makes one per
/// service).
///
/// [`Balancer`]: crate::balance::Balancer
/// [`BalancerConfig::load_reports`]: crate::balance::BalancerConfig::load_reports
/// [`Routers`]: crate::routing::Routers
pub struct LoadReports {
    config: OrcaConfig,
    /// Times are ns since this instant (tokio's clock, so tests can pause it).
    epoch: tokio::time::Instant,
    slots: ArcSwap<Slots>,
    /// Taken to add slots (a report of a new instance, a table over new instances).
    insert: Mutex<()>,
    /// Out-of-band streams: the opener, and the open streams by instance id (with the
    /// authority they go to).
    oob: Option<(Arc<dyn OutOfBand>, Mutex<OpenStreams>)>,
}

/// A sink that does not keep the store alive: the store's own out-of-band streams report
/// through it (the store owns the streams; a strong reference back would keep both forever).
struct WeakSink(std::sync::Weak<LoadReports>);

impl LoadSink for WeakSink {
    fn record(&self, instance_id: &str, load: &ReportedLoad) {
        if let Some(reports) = self.0.upgrade() {
            reports.record(instance_id, load);
        }
    }
}

impl std::fmt::Debug for LoadReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadReports")
            .field("config", &self.config)
            .field("instances", &self.slots.load().len())
            .finish()
    }
}

impl LoadReports {
    /// An empty store with `config`'s rules.
    pub fn new(config: OrcaConfig) -> Self {
        LoadReports {
            config,
            epoch: tokio::time::Instant::now(),
            slots: ArcSwap::default(),
            insert: Mutex::new(()),
            oob: None,
        }
    }

    /// Follows the instances the balancers pick from out of band: `opener` opens a stream for
    /// each when a table takes it in, and the stream is closed once no table holds it. Meant
    /// for `out_of_band: true`, which also makes per-request reports ignored.
    pub fn out_of_band(mut self, opener: Arc<dyn OutOfBand>) -> Self {
        self.oob = Some((opener, Mutex::new(FxHashMap::default())));
        self
    }

    /// The rules.
    pub fn config(&self) -> &OrcaConfig {
        &self.config
    }

    /// The weight of `instance_id` that counts now, by A58's rules (`None`: no report, still
    /// in its blackout, or expired). Balancers give such an instance the mean weight.
    pub fn weight(&self, instance_id: &str) -> Option<f64> {
        let now = self.now();
        let w = self
            .slots
            .load()
            .get(instance_id)?
            .weight_at(now, &self.config);
        (w > 0.0).then_some(w)
    }

    /// A handle for `instance_id`'s reports.
    pub fn reporter(self: &Arc<Self>, instance_id: &str) -> LoadReporter {
        LoadReporter::new(self.clone(), instance_id)
    }

    /// Now, in ns since the epoch.
    pub(crate) fn now(&self) -> u64 {
        nanos(tokio::time::Instant::now().saturating_duration_since(self.epoch))
    }

    /// The slots of `instances`, in order, made for those that have none. Slots nobody else
    /// holds whose reports expired are dropped on the way (instances that left); with
    /// out-of-band streams, streams are opened for `instances` and closed for the instances no
    /// table holds.
    pub(crate) fn slots(self: &Arc<Self>, instances: &[&Instance]) -> Vec<Arc<Endpoint>> {
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        let slots = self.slots_of(&ids);
        if let Some((opener, streams)) = &self.oob {
            self.follow(&**opener, &mut lock(streams), instances);
        }
        slots
    }

    /// Opens the streams of `instances` (again for one whose address moved) and closes those
    /// of instances whose slot no table holds.
    fn follow(
        self: &Arc<Self>,
        opener: &dyn OutOfBand,
        streams: &mut OpenStreams,
        instances: &[&Instance],
    ) {
        let held = self.slots.load();
        streams.retain(|id, _| {
            instances.iter().any(|i| i.id == **id)
                || held.get(id).is_some_and(|s| Arc::strong_count(s) > 1)
        });
        for instance in instances {
            let authority = instance.authority();
            if streams
                .get(instance.id.as_str())
                .is_some_and(|(to, _)| *to == authority)
            {
                continue;
            }
            let sink: Arc<dyn LoadSink> = Arc::new(WeakSink(Arc::downgrade(self)));
            let reporter = LoadReporter::new(sink, instance.id.as_str());
            match opener.open(instance, reporter) {
                Some(handle) => {
                    streams.insert(Box::from(instance.id.as_str()), (authority, handle));
                }
                None => {
                    streams.remove(instance.id.as_str());
                }
            }
        }
    }

    /// Out-of-band streams open now.
    pub fn streams(&self) -> usize {
        self.oob.as_ref().map_or(0, |(_, s)| lock(s).len())
    }

    fn slots_of(&self, ids: &[&str]) -> Vec<Arc<Endpoint>> {
        let _lock = lock(&self.insert);
        let current = self.slots.load_full();
        let now = self.now();
        let missing = ids.iter().any(|id| !current.contains_key(*id));
        let unused = |e: &Arc<Endpoint>| Arc::strong_count(e) == 1 && e.expired(now, &self.config);
        let map = if missing || current.values().any(unused) {
            let wanted: FxHashSet<&str> = ids.iter().copied().collect();
            let mut next: Slots = current
                .iter()
                .filter(|(id, e)| wanted.contains(&***id) || !unused(e))
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect();
            for id in ids {
                next.entry(Box::from(*id))
                    .or_insert_with(|| Arc::new(Endpoint::new()));
            }
            let next = Arc::new(next);
            self.slots.store(next.clone());
            next
        } else {
            current
        };
        ids.iter()
            .map(|id| match map.get(*id) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint::new()),
            })
            .collect()
    }

    /// Instances with a slot now.
    pub fn len(&self) -> usize {
        self.slots.load().len()
    }

    /// True when no instance has a slot.
    pub fn is_empty(&self) -> bool {
        self.slots.load().is_empty()
    }
}

impl LoadSink for LoadReports {
    fn record(&self, instance_id: &str, load: &ReportedLoad) {
        let weight = load.weight(self.config.error_utilization_penalty);
        if weight <= 0.0 {
            return;
        }
        let now = self.now();
        let expiration = nanos(self.config.weight_expiration_period);
        if let Some(slot) = self.slots.load().get(instance_id) {
            slot.record(weight, now, expiration);
            return;
        }
        // A report before any table holds the instance (an out-of-band stream starts first).
        let _lock = lock(&self.insert);
        let current = self.slots.load_full();
        let slot = match current.get(instance_id) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(Endpoint::new());
                let mut next = Slots::clone(&current);
                next.insert(Box::from(instance_id), slot.clone());
                self.slots.store(Arc::new(next));
                slot
            }
        };
        slot.record(weight, now, expiration);
    }

    fn per_request(&self) -> bool {
        !self.config.out_of_band
    }
}
