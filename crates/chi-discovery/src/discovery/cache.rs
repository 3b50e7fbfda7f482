//! The discovery cache: one immutable snapshot per service, swapped atomically.
//!
//! Reading is the hot path of every request, so a hit only reads: the service map is an
//! [`ArcSwap`] of an immutable `HashMap` (copied only when a service enters or leaves the cache),
//! each entry holds its current [`Snapshot`] in another `ArcSwap`, and a hit returns a clone of
//! that `Arc`. No lock, no allocation; the recency stamp for LRU eviction is written only when it
//! changed, so steady-state hits do not even dirty a shared cache line.
//!
//! All work happens when membership changes: a refresh or a watch event builds a new snapshot and
//! swaps it in. A failed refresh never replaces a list: the old one is kept and marked stale.
//!
//! The TTL bounds two things. A list not refreshed successfully within it is served marked stale.
//! And a service nobody uses within it leaves the cache and is no longer refreshed
//! (`Cache::sweep`, counted as an expiry): in use means read (a `discover`, `cached` or
//! explicit `refresh` of it) or watched. The recency stamp of reads is the refresher's round
//! counter, so a read still costs no clock: a round that finds a service read since the round
//! before counts it used as of that round, which is never earlier than the read. A service in use
//! is never expired, so through a registry outage it keeps serving its last good list.
//!
//! With [`CacheConfig::last_known_good`] set, every changed list the registry answered is also
//! queued for the service's last-known-good file ([`super::last_good`]); the queue is a channel
//! send, the writing happens on a thread of its own.
//!
//! With a restart grace in the client's outage policy, every answer and watch event goes through
//! a [`Grace`] per service: after a failed refresh, a watch error or a failed probe, instances
//! the registry lacks stay in the list until the grace is over (checked at each refresh and at
//! the end of a watch's grace); that side of the cache is in `outage.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::last_good::{LastKnownGood, Store};
use crate::instance::{HealthStatus, Instance};
use crate::registry::Change;
use crate::registry::outage::Grace;
use crate::snapshot::{Snapshot, SnapshotData};
use crate::util::lock;

/// Cache settings: the Go sketch's `CacheConfig`, and where to keep last good lists on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a list counts as fresh without a successful refresh (past it the list is still
    /// served, the last good list, but marked stale), and how long a service nobody reads or
    /// watches stays cached (then it leaves at the next refresh round and is no longer
    /// refreshed; a later read fetches it anew).
    pub ttl: Duration,
    /// How often every cached service in use is refreshed from the registry in the background.
    pub refresh_interval: Duration,
    /// How many services the cache holds; the least recently read one is evicted beyond that.
    pub max_size: usize,
    /// Count hits, misses, stale serves and refreshes ([`CacheStats`]).
    pub enable_metrics: bool,
    /// Keep each service's last good list in a file too, for a process that restarts while the
    /// registry is down (`None`, the default: in memory only). See
    /// [`last_good`](super::last_good) for when the files are written and read.
    pub last_known_good: Option<LastKnownGood>,
}

impl Default for CacheConfig {
    /// The Go sketch's values: TTL 30 s, refresh every 10 s, 1,000 services, metrics on.
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            max_size: 1000,
            enable_metrics: true,
            last_known_good: None,
        }
    }
}

/// Counters of the cache (all zero when `enable_metrics` is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that had to ask the registry.
    pub misses: u64,
    /// Reads answered with a stale list.
    pub stale_serves: u64,
    /// Successful refreshes.
    pub refreshes: u64,
    /// Failed refreshes (the old list was kept).
    pub refresh_errors: u64,
    /// Services evicted to stay within `max_size`.
    pub evictions: u64,
    /// Services that left because nobody read or watched them within `ttl`.
    pub expiries: u64,
    /// Services cached now.
    pub size: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale_serves: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) refresh_errors: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expiries: AtomicU64,
}

/// The map is keyed by service names the process itself asks for, so a fast non-DoS-resistant
/// hash (FxHash) is the right trade on the hot path.
type Map = HashMap<Arc<str>, Arc<Entry>, rustc_hash::FxBuildHasher>;

/// One cached service.
pub(crate) struct Entry {
    pub(crate) snapshot: ArcSwap<SnapshotData>,
    /// Refresher round of the last read, for LRU eviction and for the TTL of unused services.
    last_read: AtomicU64,
    /// Successful refreshes never happened since this instant: for TTL / stale marking.
    last_ok: std::sync::Mutex<Instant>,
    /// No read nor watch of the service since this instant, as far as the refresher's rounds
    /// tell (never earlier than the truth): for the TTL of unused services.
    used: std::sync::Mutex<Instant>,
}

impl Entry {
    pub(crate) fn load(&self) -> Snapshot {
        Snapshot(self.snapshot.load_full())
    }
}

/// The cache itself.
pub(crate) struct Cache {
    map: ArcSwap<Map>,
    /// Serialises writers of `map` (readers never take it).
    write: std::sync::Mutex<()>,
    /// Coarse clock: the refresher's rounds ([`Cache::sweep`]); reads stamp entries with it.
    clock: AtomicU64,
    revision: AtomicU64,
    pub(crate) config: CacheConfig,
    pub(crate) counters: Counters,
    /// Health set by chi's own checks, laid over what the registry says (service -> id -> health).
    overlay: std::sync::Mutex<HashMap<String, HashMap<String, HealthStatus>>>,
    /// The last-known-good files, when configured.
    pub(crate) last_good: Option<Arc<Store>>,
    /// The restart grace of the outage policy (zero: off).
    grace: Duration,
    /// With a grace: what the registry said of each service, and what the grace holds.
    graces: std::sync::Mutex<HashMap<String, Grace>>,
    /// Open watches per service: a watched service is in use.
    watched: std::sync::Mutex<HashMap<String, usize>>,
}

impl Cache {
    pub(crate) fn new(config: CacheConfig, grace: Duration) -> Self {
        Cache {
            grace,
            graces: std::sync::Mutex::new(HashMap::new()),
            map: ArcSwap::from_pointee(Map::default()),
            write: std::sync::Mutex::new(()),
            clock: AtomicU64::new(0),
            revision: AtomicU64::new(0),
            counters: Counters::default(),
            overlay: std::sync::Mutex::new(HashMap::new()),
            watched: std::sync::Mutex::new(HashMap::new()),
            last_good: config
                .last_known_good
                .clone()
                .map(|c| Arc::new(Store::new(c))),
            config,
        }
    }

    fn count(&self, c: &AtomicU64) {
        if self.config.enable_metrics {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The hot path: the current snapshot of `service`, if cached.
    #[inline]
    pub(crate) fn get(&self, service: &str) -> Option<Snapshot> {
        let map = self.map.load();
        let entry = map.get(service)?;
        self.stamp(entry);
        let snap = entry.load();
        self.count(&self.counters.hits);
        if snap.is_stale() {
            self.count(&self.counters.stale_serves);
        }
        Some(snap)
    }

    /// Marks `entry` read in the current round (written only when it changed, so steady-state
    /// hits do not dirty a shared cache line).
    #[inline]
    fn stamp(&self, entry: &Entry) {
        let now = self.clock.load(Ordering::Relaxed);
        if entry.last_read.load(Ordering::Relaxed) != now {
            entry.last_read.store(now, Ordering::Relaxed);
        }
    }

    /// The snapshot of `service` without counting a read (a scrape is no use of the service).
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn peek(&self, service: &str) -> Option<Snapshot> {
        self.map.load().get(service).map(|e| e.load())
    }

    /// Counts a read of `service` that did not go through [`Cache::get`] (an explicit refresh).
    pub(crate) fn touch(&self, service: &str) {
        if let Some(entry) = self.map.load().get(service) {
            self.stamp(entry);
        }
    }

    /// Counts a watch of `service` as a use of it until the returned guard drops.
    pub(crate) fn watching(&self, service: &str) -> Watching<'_> {
        *lock(&self.watched).entry(service.to_owned()).or_default() += 1;
        Watching {
            cache: self,
            service: service.to_owned(),
        }
    }

    /// The entry of `service`, for holders that read it repeatedly.
    pub(crate) fn entry(&self, service: &str) -> Option<Arc<Entry>> {
        self.map.load().get(service).cloned()
    }

    pub(crate) fn record_miss(&self) {
        self.count(&self.counters.misses);
    }

    pub(crate) fn next_revision(&self) -> u64 {
        self.revision.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One round of the refresher, at `now`: services read since the last round or watched count
    /// as used now; those unused for the TTL leave the cache (expiries). Returns the services to
    /// refresh.
    pub(crate) fn sweep(&self, now: Instant) -> Vec<Arc<str>> {
        // Reads since the last round stamped `round`; from here on they stamp `round + 1`.
        let round = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut keep = Vec::new();
        let mut unused = Vec::new();
        {
            let watched = lock(&self.watched);
            for (name, entry) in self.map.load().iter() {
                let mut used = lock(&entry.used);
                if entry.last_read.load(Ordering::Relaxed) >= round || watched.contains_key(&**name)
                {
                    *used = now;
                }
                if now.saturating_duration_since(*used) >= self.config.ttl {
                    unused.push(name.clone());
                } else {
                    keep.push(name.clone());
                }
            }
        }
        if !unused.is_empty() {
            self.expire(&unused, round);
        }
        keep
    }

    /// Drops the services of `names` that nobody read since round `round` began.
    fn expire(&self, names: &[Arc<str>], round: u64) {
        let _guard = lock(&self.write);
        let mut map: Map = (**self.map.load()).clone();
        let mut gone = 0;
        for name in names {
            // A read that came after the round began keeps the service.
            if map
                .get(name)
                .is_some_and(|e| e.last_read.load(Ordering::Relaxed) <= round)
            {
                map.remove(name);
                lock(&self.graces).remove(&**name);
                gone += 1;
                self.count(&self.counters.expiries);
                tracing::debug!(service = %name, ttl = ?self.config.ttl, "unused for the TTL: left the discovery cache");
            }
        }
        if gone > 0 {
            self.map.store(Arc::new(map));
        }
    }

    /// Stores a fresh list from a healthy registry answer (an empty list included: services do
    /// scale to zero). Returns the snapshot now served. When the list changed (or the service
    /// is new to the cache) and last-known-good files are on, the answer is queued for the file.
    pub(crate) fn store(&self, service: &str, instances: Vec<Instance>) -> Snapshot {
        if self.grace.is_zero() {
            return self.save(service, instances);
        }
        let served = self.through_grace(service, Change::Reset(instances));
        self.save(service, served)
    }

    /// Stores `instances` as what the registry answered for `service` (see [`Cache::store`]).
    fn save(&self, service: &str, instances: Vec<Instance>) -> Snapshot {
        let Some(last_good) = &self.last_good else {
            return self.replace(service, instances);
        };
        let _order = lock(&last_good.order);
        let before = self.entry(service).map(|e| e.load().revision());
        // What the registry said, before chi's own health verdicts are laid over it.
        let answer = instances.clone();
        let snap = self.replace(service, instances);
        if before != Some(snap.revision()) {
            last_good.save(service, answer);
        }
        snap
    }

    /// A list read back from the last-known-good file, because the registry could not answer
    /// the first discover of `service`: cached marked stale, so the next live answer replaces it.
    /// If a live answer got into the cache first, that one stays and is returned.
    pub(crate) fn restore(&self, service: &str, mut instances: Vec<Instance>) -> Snapshot {
        self.apply_overlay(service, &mut instances);
        let snap = Snapshot::new(instances, self.next_revision()).with_stale(true);
        self.insert(service, snap, false)
    }

    /// Stores `instances` as the list of `service`, the revision moving only if the list changed.
    fn replace(&self, service: &str, mut instances: Vec<Instance>) -> Snapshot {
        self.apply_overlay(service, &mut instances);
        if let Some(entry) = self.entry(service) {
            *lock(&entry.last_ok) = Instant::now();
            let current = entry.load();
            if same_list(current.instances(), &instances) {
                if current.is_stale() {
                    let fresh = current.with_stale(false);
                    entry.snapshot.store(fresh.0.clone());
                    return fresh;
                }
                return current;
            }
            let snap = Snapshot::new(instances, self.next_revision());
            entry.snapshot.store(snap.0.clone());
            return snap;
        }
        let snap = Snapshot::new(instances, self.next_revision());
        self.insert(service, snap, true)
    }

    fn apply_overlay(&self, service: &str, instances: &mut [Instance]) {
        let overlay = lock(&self.overlay);
        if let Some(health) = overlay.get(service) {
            for i in instances.iter_mut() {
                if let Some(h) = health.get(&i.id) {
                    i.health = *h;
                }
            }
        }
    }

    /// Lays `health` over the registry's view of one instance (`None` removes the overlay; the
    /// registry's value returns with the next refresh). The new health is served at once.
    pub(crate) fn set_health(&self, service: &str, id: &str, health: Option<HealthStatus>) {
        {
            let mut overlay = lock(&self.overlay);
            match health {
                Some(h) => {
                    overlay
                        .entry(service.to_owned())
                        .or_default()
                        .insert(id.to_owned(), h);
                }
                None => {
                    if let Some(m) = overlay.get_mut(service) {
                        m.remove(id);
                    }
                }
            }
        }
        if let Some(entry) = self.entry(service) {
            let current = entry.load();
            let stale = current.is_stale();
            let list = current.instances().to_vec();
            // Not an answer of the registry: nothing for the last-known-good file.
            let snap = self.replace(service, list);
            if stale {
                self.mark_stale(service);
            }
            drop(snap);
        }
    }

    /// Marks the list of `service` stale (a refresh or watch failed, or its TTL passed). The list
    /// itself stays.
    pub(crate) fn mark_stale(&self, service: &str) {
        if let Some(entry) = self.entry(service) {
            let current = entry.load();
            if !current.is_stale() {
                entry.snapshot.store(current.with_stale(true).0.clone());
            }
        }
    }

    /// Marks stale every entry whose last successful refresh is older than the TTL.
    pub(crate) fn mark_stale_past_ttl(&self, now: Instant) {
        for (name, entry) in self.map.load().iter() {
            let last_ok = *lock(&entry.last_ok);
            if now.saturating_duration_since(last_ok) > self.config.ttl {
                self.mark_stale(name);
            }
        }
    }

    /// Applies a watch event to the list of `service` and stores the result.
    pub(crate) fn update(&self, service: &str, change: Change) {
        if !self.grace.is_zero() {
            let served = self.through_grace(service, change);
            self.save(service, served);
            return;
        }
        let mut view: HashMap<String, Instance> = self
            .entry(service)
            .map(|e| {
                e.load()
                    .instances()
                    .iter()
                    .map(|i| (i.id.clone(), i.clone()))
                    .collect()
            })
            .unwrap_or_default();
        change.apply(&mut view);
        let mut list: Vec<Instance> = view.into_values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        self.save(service, list);
    }

    /// Puts `snap` in the cache as the list of `service` and returns what is served; an entry
    /// already there is replaced only with `replace_existing`.
    fn insert(&self, service: &str, snap: Snapshot, replace_existing: bool) -> Snapshot {
        let _guard = lock(&self.write);
        if !replace_existing && let Some(entry) = self.map.load().get(service) {
            return entry.load();
        }
        let mut map: Map = (**self.map.load()).clone();
        let served = snap.clone();
        map.insert(
            Arc::from(service),
            Arc::new(Entry {
                snapshot: ArcSwap::new(snap.0),
                last_read: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
                last_ok: std::sync::Mutex::new(Instant::now()),
                used: std::sync::Mutex::new(Instant::now()),
            }),
        );
        while map.len() > self.config.max_size.max(1) {
            let victim = map
                .iter()
                .filter(|(name, _)| &***name != service)
                .min_by_key(|(_, e)| e.last_read.load(Ordering::Relaxed))
                .map(|(name, _)| name.clone());
            match victim {
                Some(v) => {
                    map.remove(&v);
                    lock(&self.graces).remove(&*v);
                    self.count(&self.counters.evictions);
                    tracing::debug!(service = %v, "evicted from the discovery cache");
                }
                None => break,
            }
        }
        self.map.store(Arc::new(map));
        served
    }

    /// Drops `service` from the cache.
    pub(crate) fn remove(&self, service: &str) {
        let _guard = lock(&self.write);
        lock(&self.graces).remove(service);
        let mut map: Map = (**self.map.load()).clone();
        if map.remove(service).is_some() {
            self.map.store(Arc::new(map));
        }
    }

    /// Names of the cached services.
    pub(crate) fn names(&self) -> Vec<String> {
        self.map.load().keys().map(|k| k.to_string()).collect()
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale_serves: c.stale_serves.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            refresh_errors: c.refresh_errors.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            expiries: c.expiries.load(Ordering::Relaxed),
            size: self.map.load().len() as u64,
        }
    }
}

/// A watch of one service, counted as a use of it while this lives.
pub(crate) struct Watching<'c> {
    cache: &'c Cache,
    service: String,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut watched = lock(&self.cache.watched);
        if let Some(n) = watched.get_mut(&self.service) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.service);
            }
        }
    }
}

/// Same instances, in any order.
fn same_list(a: &[Instance], b: &[Instance]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a: Vec<&Instance> = a.iter().collect();
    let mut b: Vec<&Instance> = b.iter().collect();
    a.sort_by(|x, y| x.id.cmp(&y.id));
    b.sort_by(|x, y| x.id.cmp(&y.id));
    a == b
}

mod outage;
#[cfg(test)]
mod tests;
