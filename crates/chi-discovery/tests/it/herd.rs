//! The herd after a registry restart: fifty discovery watches on one real etcd, which is killed
//! and started again. Each watch reopens on its client's retry curve (`chi_discovery::retry`:
//! jittered); the instants at which they ask the registry again are recorded, and must be spread
//! over the backoff window, not land together (the thundering herd jitter exists to prevent:
//! without it, every first retry came within a millisecond or two of the others).
//!
//! The etcd adapter resumes a broken stream by itself (on the same curve). To put the discovery
//! client's own reopening loop under test against the real server, each watch goes through
//! [`Recorder`], which ends an adapter's stream at its first error, as an adapter without a
//! resume of its own does, and notes when each watch broke and when it was opened again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::{Change, Liveness, WatchStream};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance, Registry, Result, RetryPolicy};
use futures_util::StreamExt;

use chi_test_support::etcd::Etcd as Server;
use chi_test_support::{self as harness};

const WATCHERS: usize = 50;
/// The retry curve of every watcher: the first reopening comes 200 to 400 ms after the break.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 1,
    initial_interval: Duration::from_millis(200),
    max_interval: Duration::from_secs(2),
    multiplier: 2.0,
};
/// How long etcd stays down: several reopening attempts of every watcher fail meanwhile.
const DOWN: Duration = Duration::from_secs(3);

/// A real registry whose watches end at their first error, with the instants of every watch
/// opened and of every break.
struct Recorder {
    inner: Arc<dyn Registry>,
    opened: Arc<Mutex<Vec<Instant>>>,
    broke: Arc<Mutex<Vec<Instant>>>,
}

impl Recorder {
    fn new(inner: Arc<dyn Registry>) -> Recorder {
        Recorder {
            inner,
            opened: Arc::default(),
            broke: Arc::default(),
        }
    }

    fn opened(&self) -> Vec<Instant> {
        self.opened.lock().expect("lock").clone()
    }

    fn broke(&self) -> Vec<Instant> {
        self.broke.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Registry for Recorder {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.inner.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.inner.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.opened.lock().expect("lock").push(Instant::now());
        let stream = self.inner.watch(service).await?;
        let broke = self.broke.clone();
        // The adapter's stream is dropped with its first error, and the watch ends right after.
        Ok(futures_util::stream::unfold(Some(stream), move |open| {
            let broke = broke.clone();
            async move {
                let mut stream = open?;
                let item = stream.next().await?;
                if item.is_err() {
                    broke.lock().expect("lock").push(Instant::now());
                    return Some((item, None));
                }
                Some((item, Some(stream)))
            }
        })
        .boxed())
    }
}

/// The most instants within any window of `width`.
fn busiest(instants: &[Instant], width: Duration) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= width {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    most
}

/// Milliseconds from `origin`.
fn ms_since(origin: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(origin).as_secs_f64() * 1e3
}

fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_reopen_spread_over_the_backoff_window_after_a_restart() {
    let _heavy = harness::heavy().await;
    let mut server = Server::single().await;
    let svc = "herd-orders";
    let etcd: Arc<dyn Registry> = Arc::new(
        Etcd::connect(EtcdConfig {
            endpoints: server.endpoints(),
            lease_ttl: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ..EtcdConfig::default()
        })
        .await
        .expect("connect to etcd"),
    );
    etcd.register(&Instance::new(svc, "127.0.0.1", 9300).with_id("a"))
        .await
        .expect("register");

    let mut recorders = Vec::new();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let recorder = Arc::new(Recorder::new(etcd.clone()));
        let client = DiscoveryClient::builder()
            .retry(RETRY)
            .request_timeout(Duration::from_secs(1))
            .build(recorder.clone());
        let mut watcher = client.watch(svc).await.expect("watch");
        match tokio::time::timeout(Duration::from_secs(10), watcher.next()).await {
            Ok(Some(Ok(Change::Reset(all)))) => assert_eq!(all.len(), 1),
            other => panic!("expected the first Reset, got {other:?}"),
        }
        recorders.push(recorder);
        watchers.push((client, watcher));
    }

    let killed = Instant::now();
    server.members[0].kill();
    tokio::time::sleep(DOWN).await;
    server.members[0].restart();
    let restarted = Instant::now();
    // Every watch is whole again: a Reset with the instance, after the errors of the outage.
    for (i, (_, watcher)) in watchers.iter_mut().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, watcher.next()).await {
                Ok(Some(Ok(Change::Reset(all)))) if all.len() == 1 => break,
                Ok(Some(_)) => {}
                other => panic!("watcher {i} did not resync after the restart: {other:?}"),
            }
        }
    }

    // Each watcher's first reopening, and every reopening while etcd was down.
    let mut first = Vec::new();
    let mut delays = Vec::new();
    let mut outage = Vec::new();
    for (i, r) in recorders.iter().enumerate() {
        let broke = r
            .broke()
            .into_iter()
            .find(|t| *t >= killed)
            .unwrap_or_else(|| panic!("watcher {i} never saw the break"));
        let reopened = r
            .opened()
            .into_iter()
            .find(|t| *t > broke)
            .unwrap_or_else(|| panic!("watcher {i} never reopened"));
        first.push(reopened);
        delays.push(reopened - broke);
        outage.extend(
            r.opened()
                .into_iter()
                .filter(|t| *t > killed && *t < restarted),
        );
    }
    let offsets: Vec<f64> = first.iter().map(|t| ms_since(killed, *t)).collect();
    let spread = std_dev(&offsets);
    let busiest_first = busiest(&first, Duration::from_millis(50));
    let busiest_outage = busiest(&outage, Duration::from_millis(50));
    let shortest = delays.iter().min().copied().unwrap_or_default();
    let longest = delays.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[reliability] herd: {WATCHERS} watches, etcd down {DOWN:?}: first reopenings {:.0} to \
         {:.0} ms after their break, std dev {spread:.0} ms, at most {busiest_first} of \
         {WATCHERS} within 50 ms; {} reopenings during the outage, at most {busiest_outage} \
         within 50 ms",
        shortest.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3,
        outage.len()
    );

    // The curve's window for the first reopening is [200 ms, 400 ms] after the break (a little
    // more for a loaded scheduler).
    assert!(
        shortest >= RETRY.initial_interval,
        "a watch reopened {shortest:?} after its break, before the curve's floor"
    );
    assert!(
        longest <= Duration::from_millis(400 + 100),
        "a watch reopened {longest:?} after its break, past the curve's first ceiling"
    );
    // Uniform over 200 ms, 50 watchers put about 12 in a 50 ms window (lockstep puts all 50).
    assert!(
        busiest_first <= WATCHERS * 3 / 5,
        "{busiest_first} of {WATCHERS} watches reopened within 50 ms of each other"
    );
    // A uniform draw over 200 ms has a standard deviation of 58 ms.
    assert!(
        spread >= 30.0,
        "first reopenings spread by {spread:.0} ms only"
    );
    // Every attempt while etcd was down: never a herd either.
    assert!(
        outage.len() >= WATCHERS * 2,
        "only {} reopenings during a {DOWN:?} outage",
        outage.len()
    );
    assert!(
        busiest_outage <= WATCHERS * 3 / 5,
        "{busiest_outage} reopenings within 50 ms during the outage"
    );
}
