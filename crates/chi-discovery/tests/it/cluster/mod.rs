//! Registry clusters on loopback, the member chi talks to killed with SIGKILL (no warning) while
//! a load runs: etcd (three members, the leader killed), Consul (three servers and the client
//! agent chi talks to, the leader killed), Nacos (three rnacos nodes, the node chi's connection
//! is on killed).
//!
//! Every test drives the same [`Load`] through one chi registry client, as one service process
//! uses it:
//!
//! - **keepers**: [`KEEPERS`] instances registered through a [`ServiceManager`] before the kill
//!   and kept alive by it throughout; they must never leave (no `Remove`, no re-registration
//!   needed where the registry keeps them), so the service is never legitimately empty;
//! - **a writer**: one change after another to [`WRITTEN`] more instances of the same service
//!   (register, new weight, deregister; the weight is the change's sequence number, so every
//!   state says which change made it), each retried until the registry takes it, through a
//!   second manager: the ground truth;
//! - **discoverers**: [`DISCOVERERS`] tasks calling `discover` + a round-robin pick without pause,
//!   counting empty lists and failures;
//! - **a watcher**: a `DiscoveryClient` watch of the service, recording every item.
//!
//! [`Load::finish`] stops the writer, waits until the registry (asked by a fresh query) holds
//! exactly the writer's model plus the keepers and the watcher's view equals it, and measures:
//! changes lost (a change no later item showed, as its own event, folded into a later event of
//! the same instance, or in a `Reset`), empty lists served (by `discover` or as the watcher's
//! view), keepers that left, and the recovery times from the kill: the first write issued after
//! it that succeeded, and the first change issued after it that the watcher saw.

mod consul;
mod etcd;
mod nacos;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chi_discovery::balance::{Balancer, Strategy};
use chi_discovery::discovery::CacheConfig;
use chi_discovery::{Change, DiscoveryClient, Instance, Registry, RetryPolicy, ServiceManager};

use chi_test_support::eventually;

/// Instances registered before the kill and kept alive throughout.
const KEEPERS: u16 = 5;
/// Instances the writer changes.
const WRITTEN: u64 = 10;
/// Tasks doing `discover` + pick.
const DISCOVERERS: usize = 2;
/// The writer's pause between two changes.
const PACE: Duration = Duration::from_millis(50);

/// Short retries, so that a dead member is noticed and a live one used quickly.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_millis(500),
        multiplier: 2.0,
    }
}

fn manager(registry: Arc<dyn Registry>) -> ServiceManager {
    ServiceManager::new(registry)
        .with_interval(Duration::from_millis(200))
        .with_retry(quick_retry())
}

fn keeper(service: &str, i: u16) -> Instance {
    Instance::new(service, "127.0.0.1", 7300 + i).with_id(format!("k{i}"))
}

/// A tiny deterministic generator (xorshift), so every run writes the same sequence.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One item the watcher received, as a state per instance id: `Some(weight)` present, `None`
/// absent.
enum Seen {
    Event(Instant, String, Option<u32>),
    Reset(Instant, BTreeMap<String, u32>),
}

/// One change the writer made: its sequence number, when its first attempt was issued, when
/// the attempt that succeeded started and when it ended, the instance, and the state it leaves
/// (`Some(weight = seq)`, or `None` for a deregistration).
struct Made {
    seq: u32,
    issued: Instant,
    last_attempt: Instant,
    done: Instant,
    id: String,
    state: Option<u32>,
}

/// What the discoverers and the watcher counted.
#[derive(Default)]
struct Counts {
    picks: AtomicU64,
    empty: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    watch_empty: AtomicU64,
    watch_errors: AtomicU64,
    keepers_left: AtomicU64,
    keeper_gap_ms: AtomicU64,
}

/// The load of one test (see the module docs).
pub(super) struct Load {
    service: String,
    keepers: ServiceManager,
    writes: Arc<ServiceManager>,
    client: DiscoveryClient,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    seen: Arc<Mutex<Vec<Seen>>>,
    view: Arc<Mutex<HashMap<String, Instance>>>,
    killed: Option<Instant>,
    writer: tokio::task::JoinHandle<(Vec<Made>, BTreeMap<String, u32>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a test measured.
pub(super) struct Figures {
    pub(super) changes: usize,
    pub(super) lost: Vec<u32>,
    /// Changes seen as their own event (the rest folded into a later item).
    pub(super) exact: usize,
    /// The changes not seen as their own event: what they were, when (from the kill).
    pub(super) folded: Vec<String>,
    pub(super) events: u64,
    pub(super) resets: u64,
    pub(super) watch_errors: u64,
    pub(super) picks: u64,
    pub(super) empty: u64,
    pub(super) watch_empty: u64,
    pub(super) failed: u64,
    pub(super) stale: u64,
    /// Times a keeper left the watcher's view.
    pub(super) keepers_left: u64,
    /// The longest a keeper was missing from the watcher's view.
    pub(super) keeper_gap: Duration,
    /// Kill → the first write issued after it succeeded.
    pub(super) write_recovery: Option<Duration>,
    /// The longest a write took, from its first attempt to its success.
    pub(super) longest_write: Duration,
    /// Kill → the watcher saw the first change issued after the kill.
    pub(super) watch_recovery: Option<Duration>,
    /// End of the writes → registry == model and watcher == registry.
    pub(super) converged: Duration,
    /// Re-registrations the keepers' manager made (the registry had lost them).
    pub(super) reregistrations: u64,
}

impl Load {
    /// Registers the keepers, waits until discovery sees them, then starts the watcher, the
    /// discoverers and the writer.
    pub(super) async fn start(registry: Arc<dyn Registry>, service: &str) -> Load {
        let keepers = manager(registry.clone());
        for i in 0..KEEPERS {
            keepers
                .register_instance(keeper(service, i))
                .await
                .expect("register a keeper");
        }
        let client = DiscoveryClient::builder()
            .cache(CacheConfig {
                refresh_interval: Duration::from_millis(100),
                ttl: Duration::from_secs(1),
                ..CacheConfig::default()
            })
            .retry(quick_retry())
            .request_timeout(Duration::from_secs(1))
            .build(registry.clone());
        let seen_all = eventually(Duration::from_secs(15), || async {
            client
                .refresh(service)
                .await
                .is_ok_and(|s| s.len() == usize::from(KEEPERS))
        })
        .await;
        assert!(
            seen_all.is_some(),
            "discovery never saw the {KEEPERS} keepers"
        );

        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let view: Arc<Mutex<HashMap<String, Instance>>> = Arc::default();
        let mut tasks = Vec::new();

        let mut watcher = client.watch(service).await.expect("watch");
        tasks.push({
            let (seen, view, counts) = (seen.clone(), view.clone(), counts.clone());
            let keeper_ids: Vec<String> = (0..KEEPERS).map(|i| format!("k{i}")).collect();
            let mut absent_since: HashMap<String, Instant> = HashMap::new();
            tokio::spawn(async move {
                while let Some(item) = watcher.next().await {
                    let now = Instant::now();
                    let change = match item {
                        Ok(c) => c,
                        Err(_) => {
                            counts.watch_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let record = match &change {
                        Change::Reset(all) => Seen::Reset(now, weights(all)),
                        Change::Add(i) | Change::Update(i) => {
                            Seen::Event(now, i.id.clone(), Some(i.weight))
                        }
                        Change::Remove(i) => Seen::Event(now, i.id.clone(), None),
                    };
                    seen.lock().expect("lock").push(record);
                    let mut v = view.lock().expect("lock");
                    change.apply(&mut v);
                    if v.is_empty() {
                        counts.watch_empty.fetch_add(1, Ordering::Relaxed);
                    }
                    // Keepers that left the view, and for how long.
                    for k in &keeper_ids {
                        match (v.contains_key(k), absent_since.get(k)) {
                            (false, None) => {
                                counts.keepers_left.fetch_add(1, Ordering::Relaxed);
                                absent_since.insert(k.clone(), now);
                            }
                            (true, Some(since)) => {
                                let gap = now.duration_since(*since).as_millis() as u64;
                                counts.keeper_gap_ms.fetch_max(gap, Ordering::Relaxed);
                                absent_since.remove(k);
                            }
                            _ => {}
                        }
                    }
                }
            })
        });

        let balancer = Arc::new(Balancer::new(Strategy::RoundRobin));
        for _ in 0..DISCOVERERS {
            let (client, counts, stop, balancer, service) = (
                client.clone(),
                counts.clone(),
                stop.clone(),
                balancer.clone(),
                service.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..20 {
                        counts.picks.fetch_add(1, Ordering::Relaxed);
                        let snap = match client.discover(&service).await {
                            Ok(s) => s,
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        if snap.is_empty() {
                            counts.empty.fetch_add(1, Ordering::Relaxed);
                        }
                        if balancer.pick(&snap, None).is_none() {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if snap.is_stale() {
                            counts.stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }

        // The writer starts once the watcher holds its first list: a change before that would
        // only show in it.
        let watching = eventually(Duration::from_secs(10), || async {
            !seen.lock().expect("lock").is_empty()
        })
        .await;
        assert!(watching.is_some(), "the watch never sent its first list");
        let writes = Arc::new(manager(registry));
        let writer = tokio::spawn(write(writes.clone(), service.to_owned(), stop.clone()));
        Load {
            service: service.to_owned(),
            keepers,
            writes,
            client,
            stop,
            counts,
            seen,
            view,
            killed: None,
            writer,
            tasks,
        }
    }

    /// Notes the moment of the kill (the recovery times count from here).
    pub(super) fn killed(&mut self) -> Instant {
        let now = Instant::now();
        self.killed = Some(now);
        now
    }

    /// The keepers' manager (for its status).
    pub(super) fn keepers(&self) -> &ServiceManager {
        &self.keepers
    }

    /// The discovery client of the load.
    pub(super) fn client(&self) -> &DiscoveryClient {
        &self.client
    }

    /// Stops the writer, waits for convergence (asking `reader`), stops the rest, and measures.
    pub(super) async fn finish(self, reader: &dyn Registry) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        let (made, model) = self.writer.await.expect("writer task");
        let mut want = model.clone();
        for i in 0..KEEPERS {
            want.insert(format!("k{i}"), 1);
        }
        let end = Instant::now();
        let view = self.view.clone();
        let watcher_view = || -> BTreeMap<String, u32> {
            view.lock()
                .expect("lock")
                .values()
                .map(|i| (i.id.clone(), i.weight))
                .collect()
        };
        let converged = eventually(Duration::from_secs(30), || async {
            let Ok(list) = reader.instances(&self.service).await else {
                return false;
            };
            weights(&list) == want && watcher_view() == want
        })
        .await;
        assert!(
            converged.is_some(),
            "not converged\n  model    {want:?}\n  registry {:?}\n  watcher  {:?}",
            reader.instances(&self.service).await.map(|l| weights(&l)),
            watcher_view()
        );
        let converged = end.elapsed();
        // A moment more of load: nothing empty on the way out either.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for t in &self.tasks {
            t.abort();
        }
        let reregistrations = self
            .keepers
            .status()
            .iter()
            .map(|s| s.backends.iter().map(|b| b.reregistrations).sum::<u64>())
            .sum();
        let end_view = watcher_view();
        let seen = std::mem::take(&mut *self.seen.lock().expect("lock"));
        let figures = measure(&made, &seen, &end_view, self.killed);
        self.writes.shutdown().await;
        self.keepers.shutdown().await;
        let c = &self.counts;
        Figures {
            converged,
            reregistrations,
            picks: c.picks.load(Ordering::Relaxed),
            empty: c.empty.load(Ordering::Relaxed),
            watch_empty: c.watch_empty.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            watch_errors: c.watch_errors.load(Ordering::Relaxed),
            keepers_left: c.keepers_left.load(Ordering::Relaxed),
            keeper_gap: Duration::from_millis(c.keeper_gap_ms.load(Ordering::Relaxed)),
            ..figures
        }
    }
}

fn weights(list: &[Instance]) -> BTreeMap<String, u32> {
    list.iter().map(|i| (i.id.clone(), i.weight)).collect()
}

/// The writer: one change at a time until told to stop; answers what it made and the model
/// (the last state of each instance it wrote).
async fn write(
    manager: Arc<ServiceManager>,
    service: String,
    stop: Arc<AtomicBool>,
) -> (Vec<Made>, BTreeMap<String, u32>) {
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    let mut made = Vec::new();
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let n = (rng.next() % WRITTEN) as u16;
        let id = format!("w{n:02}");
        let present = model.contains_key(&id);
        let state = (!present || rng.next() % 10 < 7).then_some(seq);
        let issued = Instant::now();
        let deadline = issued + Duration::from_secs(30);
        let mut last_attempt;
        loop {
            last_attempt = Instant::now();
            let result = match state {
                Some(weight) => {
                    let inst = Instance::new(&service, "127.0.0.1", 7400 + n)
                        .with_id(&id)
                        .with_weight(weight);
                    manager.register_instance(inst).await.map(|_| ())
                }
                None => manager.deregister(&service, &id).await,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "change {seq} ({id}) never succeeded: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        match state {
            Some(w) => model.insert(id.clone(), w),
            None => model.remove(&id),
        };
        made.push(Made {
            seq,
            issued,
            last_attempt,
            done: Instant::now(),
            id,
            state,
        });
        tokio::time::sleep(PACE).await;
    }
    (made, model)
}

/// Changes lost, changes seen exactly, and the recovery times (see the module docs).
fn measure(
    made: &[Made],
    seen: &[Seen],
    end_view: &BTreeMap<String, u32>,
    killed: Option<Instant>,
) -> Figures {
    let mut deregs: HashMap<&str, Vec<(Instant, u32)>> = HashMap::new();
    let mut issued_at: HashMap<u32, Instant> = HashMap::new();
    for m in made {
        issued_at.insert(m.seq, m.issued);
        if m.state.is_none() {
            deregs.entry(&m.id).or_default().push((m.issued, m.seq));
        }
    }
    // An absence seen at `t` shows the newest deregistration of the instance issued before `t`.
    let absent_upto = |id: &str, t: Instant| -> u32 {
        deregs
            .get(id)
            .and_then(|d| d.iter().filter(|(at, _)| *at <= t).map(|(_, s)| *s).max())
            .unwrap_or(0)
    };
    let ids: Vec<String> = (0..WRITTEN).map(|n| format!("w{n:02}")).collect();
    let mut covered: HashMap<String, u32> = HashMap::new();
    let mut by_event: HashSet<u32> = HashSet::new();
    let mut first_after_kill: Option<Instant> = None;
    let mut note_seen = |upto: u32, t: Instant| {
        if let (Some(k), Some(at)) = (killed, issued_at.get(&upto))
            && *at >= k
            && first_after_kill.is_none_or(|f| t < f)
        {
            first_after_kill = Some(t);
        }
    };
    let (mut events, mut resets) = (0u64, 0u64);
    for s in seen {
        match s {
            Seen::Event(t, id, state) => {
                events += 1;
                if !ids.contains(id) {
                    continue;
                }
                let upto = match state {
                    Some(w) => *w,
                    None => absent_upto(id, *t),
                };
                by_event.insert(upto);
                note_seen(upto, *t);
                let c = covered.entry(id.clone()).or_default();
                *c = (*c).max(upto);
            }
            Seen::Reset(t, all) => {
                resets += 1;
                for id in &ids {
                    let upto = match all.get(id) {
                        Some(w) => *w,
                        None => absent_upto(id, *t),
                    };
                    note_seen(upto, *t);
                    let c = covered.entry(id.clone()).or_default();
                    *c = (*c).max(upto);
                }
            }
        }
    }
    // The watcher's final view (equal to the registry's) shows each instance's last change.
    let end = Instant::now();
    for id in &ids {
        let upto = match end_view.get(id) {
            Some(w) => *w,
            None => absent_upto(id, end),
        };
        let c = covered.entry(id.clone()).or_default();
        *c = (*c).max(upto);
    }
    let lost = made
        .iter()
        .filter(|m| covered.get(&m.id).copied().unwrap_or(0) < m.seq)
        .map(|m| m.seq)
        .collect();
    let write_recovery = killed.and_then(|k| {
        made.iter()
            .find(|m| m.last_attempt >= k)
            .map(|m| m.done.duration_since(k))
    });
    Figures {
        changes: made.len(),
        lost,
        exact: made.iter().filter(|m| by_event.contains(&m.seq)).count(),
        folded: made
            .iter()
            .filter(|m| !by_event.contains(&m.seq))
            .map(|m| {
                let at = |t: Instant| match killed {
                    Some(k) if t >= k => format!("+{} ms", t.duration_since(k).as_millis()),
                    Some(k) => format!("-{} ms", k.duration_since(t).as_millis()),
                    None => "?".into(),
                };
                format!(
                    "#{} {} {:?} issued {} done {}",
                    m.seq,
                    m.id,
                    m.state,
                    at(m.issued),
                    at(m.done)
                )
            })
            .collect(),
        events,
        resets,
        write_recovery,
        longest_write: made
            .iter()
            .map(|m| m.done.duration_since(m.issued))
            .max()
            .unwrap_or_default(),
        watch_recovery: killed
            .zip(first_after_kill)
            .map(|(k, f)| f.duration_since(k)),
        watch_errors: 0,
        picks: 0,
        empty: 0,
        watch_empty: 0,
        failed: 0,
        stale: 0,
        keepers_left: 0,
        keeper_gap: Duration::ZERO,
        converged: Duration::ZERO,
        reregistrations: 0,
    }
}

impl Figures {
    /// The `[reliability]` line of `what`.
    pub(super) fn print(&self, what: &str, extra: &str) {
        let ms =
            |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()));
        println!(
            "[reliability] {what}: writes working again {} after the kill (longest write {} ms), \
             watch saw the first later change {} after; {} changes, {} lost, {} seen as their \
             own event; watcher {} events, {} resets, {} errors; {} picks, {} empty lists \
             ({} from discover, {} as the watch's view), {} failed, {} stale; keepers left the \
             view {} times (longest {} ms), {} re-registrations; converged {} ms after the last \
             write{extra}",
            ms(self.write_recovery),
            self.longest_write.as_millis(),
            ms(self.watch_recovery),
            self.changes,
            self.lost.len(),
            self.exact,
            self.events,
            self.resets,
            self.watch_errors,
            self.picks,
            self.empty + self.watch_empty,
            self.empty,
            self.watch_empty,
            self.failed,
            self.stale,
            self.keepers_left,
            self.keeper_gap.as_millis(),
            self.reregistrations,
            self.converged.as_millis(),
        );
    }

    /// What every backend must show: no change lost, no empty list, no failed pick, writes and
    /// the watch working again after the kill. (Whether keepers may leave is the backend's.)
    pub(super) fn assert_clean(&self, what: &str) {
        assert!(
            self.lost.is_empty(),
            "{what}: changes lost: {:?}",
            self.lost
        );
        assert_eq!(self.empty, 0, "{what}: empty lists served by discover");
        assert_eq!(self.watch_empty, 0, "{what}: the watcher's view went empty");
        assert_eq!(self.failed, 0, "{what}: failed discovers or picks");
        assert!(
            self.write_recovery.is_some(),
            "{what}: no write after the kill"
        );
        assert!(
            self.watch_recovery.is_some(),
            "{what}: the watch saw no change made after the kill"
        );
        assert!(
            self.picks > 1_000,
            "{what}: the load barely ran ({} picks)",
            self.picks
        );
    }
}
