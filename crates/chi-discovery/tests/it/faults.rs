//! Reliability suite, faults: a registry killed (SIGKILL) under steady discovery load, and a watch
//! that follows 1,000 changes across a registry restart, for etcd, Consul and Nacos (rnacos).
//!
//! Every test asserts on what the clients saw and prints its figures on `[reliability] ` lines.
//! Each holds [`harness::heavy`] for its whole run: they load the machine and measure times.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chi_discovery::balance::{Balancer, Strategy};
use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::Nacos;
use chi_discovery::{Change, DiscoveryClient, Instance, Registry, RetryPolicy, ServiceManager};

use chi_test_support::consul::ConsulAgent;
use chi_test_support::etcd::Etcd as EtcdServer;
use chi_test_support::nacos::NacosServer;
use chi_test_support::{self as harness, eventually, scaled};

/// One real registry server of any backend, killable and restartable.
enum Server {
    Etcd(EtcdServer),
    Consul(ConsulAgent),
    Nacos(NacosServer),
}

impl Server {
    async fn start(backend: &str) -> Server {
        match backend {
            "etcd" => Server::Etcd(EtcdServer::single().await),
            "consul" => Server::Consul(ConsulAgent::start().await),
            "nacos" => Server::Nacos(tokio::task::block_in_place(NacosServer::start)),
            other => panic!("unknown backend {other}"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Etcd(_) => "etcd",
            Server::Consul(_) => "consul",
            Server::Nacos(_) => "nacos",
        }
    }

    /// A new client of this server with short timings (its own connection).
    async fn registry(&self) -> Arc<dyn Registry> {
        match self {
            Server::Etcd(s) => Arc::new(
                Etcd::connect(EtcdConfig {
                    endpoints: s.endpoints(),
                    lease_ttl: Duration::from_secs(3),
                    connect_timeout: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(1),
                    ..EtcdConfig::default()
                })
                .await
                .expect("connect to etcd"),
            ),
            Server::Consul(s) => Arc::new(
                Consul::new(ConsulConfig {
                    address: s.addr(),
                    check_ttl: Duration::from_secs(3),
                    request_timeout: Duration::from_millis(500),
                    ..ConsulConfig::default()
                })
                .expect("consul config"),
            ),
            Server::Nacos(s) => Arc::new(Nacos::connect(s.config()).await.expect("connect")),
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        match self {
            Server::Etcd(s) => s.members[0].kill(),
            Server::Consul(s) => s.kill(),
            Server::Nacos(s) => s.kill(),
        }
    }

    /// Starts it again (same ports; etcd and rnacos on the same data directory) and waits until
    /// it serves.
    async fn restart(&mut self) {
        match self {
            Server::Etcd(s) => {
                tokio::task::block_in_place(|| s.members[0].restart());
                s.wait_for_leader(Duration::from_secs(15)).await;
            }
            Server::Consul(s) => s.restart().await,
            Server::Nacos(s) => tokio::task::block_in_place(|| s.restart()),
        }
    }
}

/// Short retries, so that a dead registry is noticed and a live one used again quickly.
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

fn client(registry: Arc<dyn Registry>) -> DiscoveryClient {
    DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(100),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .retry(quick_retry())
        .request_timeout(Duration::from_millis(500))
        .build(registry)
}

/// Instances sorted by id, for whole-list comparisons.
fn sorted(list: &[Instance]) -> Vec<Instance> {
    let mut v = list.to_vec();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// A number with thousands separators: 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// 1. Registry SIGKILL for 10 s under steady discovery load.
// ---------------------------------------------------------------------------------------------

/// What the load tasks saw.
#[derive(Default)]
struct Load {
    picks: AtomicU64,
    empty: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    /// Milliseconds after the kill when a stale snapshot was first served (0: not yet).
    stale_after_ms: AtomicU64,
}

/// Registers `N` instances through a `ServiceManager`, runs discover + pick in a loop on several
/// tasks, kills the registry for 10 s (120 s in soak mode) and restarts it.
///
/// Asserts: no empty list served, no failed pick (nor discover error) from before the kill until
/// the end; the outage was real (direct calls failed) and the served snapshot was marked stale
/// during it; after the restart every registration is on the server again (Consul and rnacos lose
/// them in a restart, so the manager / nacos-sdk put them back; etcd keeps them on its data dir)
/// and the client's cache equals the server's list again, fresh.
async fn kill_under_load(backend: &str) {
    const N: u16 = 5;
    const TASKS: usize = 4;
    const PICKS_PER_MS: usize = 20;
    let _g = harness::heavy().await;
    let test_start = Instant::now();
    let mut server = Server::start(backend).await;
    let svc = format!("faults-kill-{backend}");
    let writer = server.registry().await;
    let manager = manager(writer.clone());
    for i in 0..N {
        let inst = Instance::new(&svc, "127.0.0.1", 7000 + i).with_id(format!("k{i}"));
        manager.register_instance(inst).await.expect("register");
    }
    let reader = server.registry().await;
    let client = client(reader.clone());
    let first = eventually(Duration::from_secs(10), || async {
        client
            .refresh(&svc)
            .await
            .is_ok_and(|s| s.len() == N as usize)
    })
    .await;
    assert!(first.is_some(), "never saw the {N} instances");

    // The load: discover + round-robin pick, PICKS_PER_MS per task and millisecond.
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let balancer = Arc::new(Balancer::new(Strategy::RoundRobin));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (client, load, stop, killed_at, balancer, svc) = (
                client.clone(),
                load.clone(),
                stop.clone(),
                killed_at.clone(),
                balancer.clone(),
                svc.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..PICKS_PER_MS {
                        load.picks.fetch_add(1, Ordering::Relaxed);
                        let snap = match client.discover(&svc).await {
                            Ok(s) => s,
                            Err(_) => {
                                load.failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        if snap.is_empty() {
                            load.empty.fetch_add(1, Ordering::Relaxed);
                        }
                        if balancer.pick(&snap, None).is_none() {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if snap.is_stale() {
                            load.stale.fetch_add(1, Ordering::Relaxed);
                            let at = *killed_at.lock().expect("lock");
                            if let Some(at) = at
                                && load.stale_after_ms.load(Ordering::Relaxed) == 0
                            {
                                let ms = (at.elapsed().as_millis() as u64).max(1);
                                let _ = load.stale_after_ms.compare_exchange(
                                    0,
                                    ms,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    // The background refresher runs (it is what notices the outage).
    let refreshing = eventually(Duration::from_secs(5), || async {
        client.cache_stats().refreshes >= 5
    })
    .await;
    assert!(
        refreshing.is_some(),
        "the background refresher does not run: {:?}",
        client.cache_stats()
    );
    assert_eq!(
        load.stale.load(Ordering::Relaxed),
        0,
        "stale before the kill"
    );

    let outage = scaled(Duration::from_secs(10), Duration::from_secs(120));
    *killed_at.lock().expect("lock") = Some(Instant::now());
    let kill = Instant::now();
    server.kill();
    // The outage is real: the server does not answer.
    let down = eventually(Duration::from_secs(5), || async {
        reader.instances(&svc).await.is_err()
    })
    .await;
    assert!(down.is_some(), "{backend} still answers after SIGKILL");
    tokio::time::sleep(outage.saturating_sub(kill.elapsed())).await;
    let stale_after = load.stale_after_ms.load(Ordering::Relaxed);
    assert!(
        stale_after > 0,
        "no stale snapshot served during the {outage:?} outage: cached {:?}, stats {:?}",
        client.cached(&svc),
        client.cache_stats()
    );
    let picks_in_outage = load.picks.load(Ordering::Relaxed);

    server.restart().await;
    let restarted = Instant::now();
    // Every registration back on the server.
    let want: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let back = eventually(Duration::from_secs(30), || async {
        reader.instances(&svc).await.is_ok_and(|l| {
            let mut ids: Vec<String> = l.iter().map(|i| i.id.clone()).collect();
            ids.sort();
            ids == want
        })
    })
    .await;
    assert!(
        back.is_some(),
        "registrations not back on {backend}: {:?}; manager {:?}",
        reader.instances(&svc).await,
        manager.status()
    );
    // The cache equals the registry again, and is fresh.
    let equal = eventually(Duration::from_secs(15), || async {
        let Ok(server_list) = reader.instances(&svc).await else {
            return false;
        };
        client
            .cached(&svc)
            .is_some_and(|s| !s.is_stale() && sorted(&s) == sorted(&server_list))
    })
    .await;
    assert!(
        equal.is_some(),
        "cache {:?} != registry {:?}",
        client.cached(&svc),
        reader.instances(&svc).await
    );
    let converged = restarted.elapsed();
    // Keep the load on for a moment after convergence: no empty list on the way back either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let status = manager.status();
    let reregistrations: u64 = status.iter().map(|s| s.backends[0].reregistrations).sum();
    manager.shutdown().await;

    let picks = load.picks.load(Ordering::Relaxed);
    let empty = load.empty.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "[reliability] kill {} {} s: {} picks ({} before the restart), {} empty, {} failed, \
         stale seen after {} ms, registrations back after {} ms ({} re-registrations by the \
         manager), cache == registry after {} ms (times from the restarted server being ready); test took {:.1} s",
        server.name(),
        outage.as_secs(),
        thousands(picks),
        thousands(picks_in_outage),
        empty,
        failed,
        stale_after,
        back.map(ms).unwrap_or_default(),
        reregistrations,
        ms(converged),
        test_start.elapsed().as_secs_f64()
    );
    assert_eq!(empty, 0, "empty instance lists served");
    assert_eq!(failed, 0, "failed picks or discovers");
    assert!(picks > 10_000, "the load barely ran: {picks} picks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("nacos").await;
}

// ---------------------------------------------------------------------------------------------
// 2. A watch across a registry restart: 1,000 changes, the restart in the middle.
// ---------------------------------------------------------------------------------------------

/// One item the watcher received, as a state per instance id: `Some(weight)` present, `None`
/// absent. Weights are the sequence number of the change that set them, so they say which
/// change a state comes from.
enum Seen {
    Event(Instant, String, Option<u32>),
    Reset(Instant, BTreeMap<String, u32>),
}

/// One change the writer made: its sequence number, when it was issued, the instance, and the
/// state it leaves the instance in (`Some(weight = seq)` or `None` for a deregistration).
struct Made {
    seq: u32,
    issued: Instant,
    id: String,
    state: Option<u32>,
}

/// A planned change: sequence number, instance number, instance id, state it leaves.
type Planned = (u32, u16, String, Option<u32>);

/// A tiny deterministic generator (xorshift), so every run makes the same sequence.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Retries one write until the registry takes it (the registry may be coming back).
async fn until_ok<F, Fut>(what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = chi_discovery::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what} never succeeded: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn weights(list: &[Instance]) -> BTreeMap<String, u32> {
    list.iter().map(|i| (i.id.clone(), i.weight)).collect()
}

/// 1,000 changes (register, update = new weight, deregister) over 50 instances, written through
/// a `ServiceManager`, with the registry killed (SIGKILL) and restarted after the 500th. A
/// `DiscoveryClient` watcher applies every item it gets.
///
/// "The server's view" is what a fresh `instances()` call answers once the writes are done and
/// the registrants have recovered: etcd keeps its keys across the restart (same data directory,
/// the lease survives), the Consul dev agent and rnacos lose theirs and the manager (and
/// nacos-sdk's redo) register the managed instances again. It must equal the writer's model (the
/// last state of each of the 50 instances), and the watcher's view must equal it.
///
/// No change lost: for every change there is a later item that shows the instance in that
/// change's state or in the state of a later change of the same instance (an event, or a
/// `Reset`): list-based watches (Consul, Nacos) may fold quick successive changes into one.
async fn watch_across_restart(backend: &str) {
    const CHANGES: u32 = 1000;
    const INSTANCES: u64 = 50;
    const WRITERS: usize = 8;
    let _g = harness::heavy().await;
    let test_start = Instant::now();
    let mut server = Server::start(backend).await;
    let svc = format!("faults-watch-{backend}");
    // WRITERS registrants, each with its own connection and manager, each writing the changes
    // of its share of the instances in order.
    let mut managers = Vec::new();
    for _ in 0..WRITERS {
        managers.push(manager(server.registry().await));
    }
    let reader = server.registry().await;
    let client = client(reader.clone());

    let mut watcher = client.watch(&svc).await.expect("watch");
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    // An error item not (yet) followed by a Reset.
    let unresynced = Arc::new(AtomicBool::new(false));
    let view: Arc<std::sync::Mutex<HashMap<String, Instance>>> = Arc::default();
    let follower = {
        let (seen, errors, view, unresynced) = (
            seen.clone(),
            errors.clone(),
            view.clone(),
            unresynced.clone(),
        );
        tokio::spawn(async move {
            while let Some(item) = watcher.next().await {
                let now = Instant::now();
                let change = match item {
                    Ok(c) => c,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        unresynced.store(true, Ordering::Relaxed);
                        continue;
                    }
                };
                if matches!(change, Change::Reset(_)) {
                    unresynced.store(false, Ordering::Relaxed);
                }
                let record = match &change {
                    Change::Reset(all) => Seen::Reset(now, weights(all)),
                    Change::Add(i) | Change::Update(i) => {
                        Seen::Event(now, i.id.clone(), Some(i.weight))
                    }
                    Change::Remove(i) => Seen::Event(now, i.id.clone(), None),
                };
                seen.lock().expect("lock").push(record);
                change.apply(&mut view.lock().expect("lock"));
            }
        })
    };

    // The sequence: each change picks one of the 50 instances and registers it (absent), or
    // updates its weight (70 %) or deregisters it (30 %). Weights are the change's number.
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    let mut plan: Vec<Planned> = Vec::new();
    let (mut registers, mut updates, mut deregisters) = (0, 0, 0);
    for seq in 1..=CHANGES {
        let n = (rng.next() % INSTANCES) as u16;
        let id = format!("w{n:02}");
        let present = model.contains_key(&id);
        let state = if !present || rng.next() % 10 < 7 {
            if present {
                updates += 1;
            } else {
                registers += 1;
            }
            model.insert(id.clone(), seq);
            Some(seq)
        } else {
            deregisters += 1;
            model.remove(&id);
            None
        };
        plan.push((seq, n, id, state));
    }
    // Each registrant writes its instances' changes in sequence order; the registry is killed
    // and restarted between the two halves.
    let issued: std::sync::Mutex<HashMap<u32, Instant>> = std::sync::Mutex::new(HashMap::new());
    let run_half = |half: &[Planned]| {
        let (managers, svc, issued) = (&managers, &svc, &issued);
        let shares: Vec<Vec<Planned>> = (0..WRITERS)
            .map(|w| {
                half.iter()
                    .filter(|c| usize::from(c.1) % WRITERS == w)
                    .cloned()
                    .collect()
            })
            .collect();
        futures_util::future::join_all(shares.into_iter().enumerate().map(
            move |(w, share)| async move {
                let manager = &managers[w];
                for (seq, n, id, state) in share {
                    issued.lock().expect("lock").insert(seq, Instant::now());
                    match state {
                        Some(weight) => {
                            let inst = Instance::new(svc, "127.0.0.1", 7100 + n)
                                .with_id(&id)
                                .with_weight(weight);
                            until_ok(&format!("change {seq}: register {id}"), || async {
                                manager.register_instance(inst.clone()).await.map(|_| ())
                            })
                            .await;
                        }
                        None => {
                            until_ok(&format!("change {seq}: deregister {id}"), || {
                                manager.deregister(svc, &id)
                            })
                            .await;
                        }
                    }
                }
            },
        ))
    };
    let writes = Instant::now();
    let half = (CHANGES / 2) as usize;
    run_half(&plan[..half]).await;
    let t = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;
    let restart_took = t.elapsed();
    run_half(&plan[half..]).await;
    let issued = issued.into_inner().expect("lock");
    let made: Vec<Made> = plan
        .iter()
        .map(|(seq, _, id, state)| Made {
            seq: *seq,
            issued: issued[seq],
            id: id.clone(),
            state: *state,
        })
        .collect();
    let wrote = writes.elapsed();

    // The server ends at the model, and the watcher's view at the server's.
    let last_change = Instant::now();
    let converged = eventually(Duration::from_secs(30), || async {
        let Ok(list) = reader.instances(&svc).await else {
            return false;
        };
        let server_view = weights(&list);
        let watcher_view: BTreeMap<String, u32> = view
            .lock()
            .expect("lock")
            .values()
            .map(|i| (i.id.clone(), i.weight))
            .collect();
        server_view == model && watcher_view == server_view
    })
    .await;
    let watcher_view: BTreeMap<String, u32> = view
        .lock()
        .expect("lock")
        .values()
        .map(|i| (i.id.clone(), i.weight))
        .collect();
    assert!(
        converged.is_some(),
        "{backend}: not converged\n  model   {model:?}\n  server  {:?}\n  watcher {watcher_view:?}",
        reader.instances(&svc).await.map(|l| weights(&l))
    );
    let converge_ms = ms(last_change.elapsed());
    follower.abort();

    // No change lost: per instance, the newest change any item showed.
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let mut covered_upto: HashMap<&str, u32> = HashMap::new();
    let mut by_event: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut deregs: HashMap<&str, Vec<(Instant, u32)>> = HashMap::new();
    for m in &made {
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
    let ids: Vec<String> = (0..INSTANCES).map(|n| format!("w{n:02}")).collect();
    let (mut events, mut resets) = (0u64, 0u64);
    for s in &seen {
        match s {
            Seen::Event(t, id, state) => {
                events += 1;
                let upto = match state {
                    Some(w) => *w,
                    None => absent_upto(id, *t),
                };
                by_event.insert(upto);
                if let Some(id) = ids.iter().find(|x| *x == id) {
                    let c = covered_upto.entry(id).or_default();
                    *c = (*c).max(upto);
                }
            }
            Seen::Reset(t, all) => {
                resets += 1;
                for id in &ids {
                    let upto = match all.get(id) {
                        Some(w) => *w,
                        None => absent_upto(id, *t),
                    };
                    let c = covered_upto.entry(id).or_default();
                    *c = (*c).max(upto);
                }
            }
        }
    }
    // The watcher's final view (equal to the server's, above) shows each instance's last change:
    // a list-based watch may fold a register and a deregister into nothing at all.
    let end = Instant::now();
    for id in &ids {
        let upto = match watcher_view.get(id) {
            Some(w) => *w,
            None => absent_upto(id, end),
        };
        let c = covered_upto.entry(id).or_default();
        *c = (*c).max(upto);
    }
    let lost: Vec<u32> = made
        .iter()
        .filter(|m| covered_upto.get(m.id.as_str()).copied().unwrap_or(0) < m.seq)
        .map(|m| m.seq)
        .collect();
    let exact = made.iter().filter(|m| by_event.contains(&m.seq)).count();
    for m in &managers {
        m.shutdown().await;
    }
    println!(
        "[reliability] watch across a {backend} restart: {CHANGES} changes ({registers} registers, \
         {updates} updates, {deregisters} deregisters over {INSTANCES} instances, {WRITERS} \
         registrants writing at once) written in {} ms \
         with a kill + restart after #{} (down and back in {} ms); watcher got {events} events, \
         {resets} resets, {} errors; {exact} changes seen as their own event, the rest folded \
         into a later event or a Reset, {} lost; watcher == server == model {converge_ms} ms \
         after the last change ({} instances); test took {:.1} s",
        ms(wrote),
        CHANGES / 2,
        ms(restart_took),
        errors.load(Ordering::Relaxed),
        lost.len(),
        model.len(),
        test_start.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{backend}: changes never seen by the watcher: {lost:?}"
    );
    assert!(
        !unresynced.load(Ordering::Relaxed),
        "{backend}: an error in the watch was not followed by a Reset ({resets} resets)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_loses_no_change_across_a_restart() {
    watch_across_restart("etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_watch_loses_no_change_across_a_restart() {
    watch_across_restart("consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_watch_loses_no_change_across_a_restart() {
    watch_across_restart("nacos").await;
}
