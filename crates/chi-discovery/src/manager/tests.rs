use super::*;
use crate::registry::testing::ReadOnly;
use crate::registry::{Liveness, Memory};
use crate::util::lock;
use std::sync::Mutex;

use tokio::sync::broadcast;

fn cfg(port: u16) -> ServiceConfig {
    ServiceConfig::new("svc", "127.0.0.1", port)
}

#[tokio::test(start_paused = true)]
async fn keeps_registrations_alive_past_the_ttl() {
    let reg = Memory::with_ttl(Duration::from_secs(3));
    let m = ServiceManager::new(Arc::new(reg.clone()));
    m.register(cfg(1)).await.expect("register");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(reg.instances("svc").await.expect("list").len(), 1);
    m.shutdown().await;
    assert!(reg.instances("svc").await.expect("list").is_empty());
}

#[tokio::test(start_paused = true)]
async fn re_registers_what_the_registry_lost() {
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_secs(1));
    let report = m.register(cfg(1)).await.expect("register");
    assert!(report.is_complete());
    // The registry forgets us (as after a restart with an empty data dir).
    reg.deregister("svc", &report.id).await.expect("wipe");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reg.instances("svc").await.expect("list").len(), 1);
    assert_eq!(m.status()[0].backends[0].reregistrations, 1);
}

#[tokio::test(start_paused = true)]
async fn health_is_reported_with_keep_alives() {
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_secs(1));
    let report = m.register(cfg(1)).await.expect("register");
    m.set_health(&report.id, HealthStatus::Unhealthy);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        reg.instances("svc").await.expect("list")[0].health,
        HealthStatus::Unhealthy
    );
}

#[tokio::test]
async fn invalid_config_is_rejected_before_any_backend() {
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(reg.clone()));
    let err = m
        .register(ServiceConfig::new("a/b", "h", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(m.status().is_empty());
}

/// A registry whose keep-alives take a second, so a test can deregister while one runs.
struct SlowKeepAlive(Memory);

#[async_trait::async_trait]
impl Registry for SlowKeepAlive {
    fn backend(&self) -> &str {
        "slow"
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.0.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.0.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.0.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.0.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.0.services().await
    }
    async fn watch(&self, service: &str) -> Result<crate::registry::WatchStream> {
        self.0.watch(service).await
    }
}

/// Found in the churn test: a keep-alive that was running when the instance was deregistered
/// found it gone, answered `Lost`, and the manager wrote it back: a registration nobody
/// managed any more, never removed.
#[tokio::test(start_paused = true)]
async fn a_keep_alive_in_flight_does_not_bring_back_a_deregistered_instance() {
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(SlowKeepAlive(reg.clone())))
        .with_interval(Duration::from_secs(3600));
    let id = m.register(cfg(1)).await.expect("register").id;
    let deregister = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m.deregister("svc", &id).await.expect("deregister");
    };
    futures_util::future::join(m.tick(), deregister).await;
    assert!(m.status().is_empty());
    assert!(
        reg.instances("svc").await.expect("list").is_empty(),
        "the deregistered instance is back in the registry"
    );
}

/// A registry that runs checks itself (as Consul's agent does) and records what it was given.
struct RunsChecks(Memory, Mutex<Vec<Vec<HealthCheck>>>);

#[async_trait::async_trait]
impl Registry for RunsChecks {
    fn backend(&self) -> &str {
        "runs-checks"
    }
    fn runs_check(&self, _check: &HealthCheck) -> bool {
        true
    }
    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        lock(&self.1).push(checks.to_vec());
        self.0.register(instance).await
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.register_with_checks(instance, &[]).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.0.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        self.0.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.0.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.0.services().await
    }
    async fn watch(&self, service: &str) -> Result<crate::registry::WatchStream> {
        self.0.watch(service).await
    }
}

fn tcp_check(port: u16) -> ServiceConfig {
    ServiceConfig {
        health_check: Some(
            HealthCheck::tcp()
                .every(Duration::from_millis(50))
                .timeout(Duration::from_millis(40))
                .thresholds(2, 2),
        ),
        ..cfg(port)
    }
}

async fn health_in(reg: &Memory) -> Option<HealthStatus> {
    reg.instances("svc")
        .await
        .expect("list")
        .first()
        .map(|i| i.health)
}

async fn wait_for(reg: &Memory, want: HealthStatus, within: Duration) -> Duration {
    let start = std::time::Instant::now();
    while health_in(reg).await != Some(want) {
        assert!(
            start.elapsed() < within,
            "not {want:?} within {within:?}: {:?}",
            health_in(reg).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// The embedded registry runs no checks: chi probes, and the keep-alives carry the verdict. A
/// dead endpoint leaves healthy within interval x fall (plus a timeout and a keep-alive), and
/// comes back within interval x rise.
#[tokio::test]
async fn a_check_no_registry_runs_is_probed_here_and_reported_with_keep_alives() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(reg.clone())).with_interval(Duration::from_secs(3600));
    m.register(tcp_check(port)).await.expect("register");
    wait_for(&reg, HealthStatus::Healthy, Duration::from_secs(2)).await;
    assert!(m.status()[0].probed_here);
    assert!(m.status()[0].probe.is_some(), "chi's probe decided");

    drop(listener);
    // 2 failed probes 50 ms apart, each at most 40 ms, then the keep-alive it wakes.
    let down = wait_for(&reg, HealthStatus::Unhealthy, Duration::from_secs(2)).await;
    assert!(down < Duration::from_millis(400), "took {down:?}");

    let _back = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind");
    let up = wait_for(&reg, HealthStatus::Healthy, Duration::from_secs(2)).await;
    assert!(up < Duration::from_millis(400), "took {up:?}");

    m.deregister("svc", &cfg(port).instance_id())
        .await
        .expect("deregister");
    assert!(m.status().is_empty());
    assert!(health_in(&reg).await.is_none());
}

#[tokio::test]
async fn a_registry_that_runs_checks_gets_the_check_and_nothing_probes_here() {
    let reg = Arc::new(RunsChecks(Memory::new(), Mutex::new(Vec::new())));
    let m = ServiceManager::new(reg.clone());
    let config = tcp_check(1);
    m.register(config.clone()).await.expect("register");
    let given = lock(&reg.1).clone();
    assert_eq!(
        given,
        vec![vec![config.health_check.clone().expect("check")]]
    );
    assert!(!m.status()[0].probed_here, "no probe: the registry runs it");
}

/// `checked_by: chi` where the registry could run it: chi probes, and the registry holds a TTL
/// check (with the same deregister-after) that chi's keep-alives feed.
#[tokio::test]
async fn checked_by_chi_probes_here_and_gives_the_registry_a_ttl_check() {
    let reg = Arc::new(RunsChecks(Memory::new(), Mutex::new(Vec::new())));
    let m = ServiceManager::new(reg.clone());
    let mut config = tcp_check(1);
    let check = config.health_check.take().expect("check");
    config.health_check = Some(
        check
            .checked_by(crate::CheckedBy::Chi)
            .deregister_after(Duration::from_secs(60)),
    );
    m.register(config).await.expect("register");
    let given = lock(&reg.1).clone();
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].len(), 1);
    assert_eq!(given[0][0].target, crate::CheckTarget::Ttl);
    assert_eq!(
        given[0][0].deregister_critical_service_after,
        Some(Duration::from_secs(60))
    );
    assert!(m.status()[0].probed_here);
}

#[tokio::test]
async fn checked_by_registry_on_a_registry_without_checks_is_refused() {
    let reg = Memory::new();
    let m = ServiceManager::new(Arc::new(reg.clone()));
    let mut config = tcp_check(1);
    config.health_check = config
        .health_check
        .map(|c| c.checked_by(crate::CheckedBy::Registry));
    let err = m.register(config).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("registry `memory` cannot run health checks"),
        "{text}"
    );
    assert!(m.status().is_empty());
    assert!(health_in(&reg).await.is_none(), "nothing registered");
}

/// A backend that can be switched down (every call fails, as an unreachable server's would) or
/// slow (keep-alives take ten seconds), named `name`.
#[derive(Clone)]
struct Switch {
    name: &'static str,
    inner: Memory,
    down: Arc<std::sync::atomic::AtomicBool>,
    slow: Arc<std::sync::atomic::AtomicBool>,
}

impl Switch {
    fn new(name: &'static str, inner: Memory) -> Self {
        Switch {
            name,
            inner,
            down: Arc::default(),
            slow: Arc::default(),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: self.name.into(),
                message: "switched off".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for Switch {
    fn backend(&self) -> &str {
        self.name
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.check()?;
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.check()?;
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        self.check()?;
        self.inner.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.check()?;
        self.inner.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> Result<crate::registry::WatchStream> {
        self.check()?;
        self.inner.watch(service).await
    }
}

fn pair(a: &Switch, b: &Switch) -> Arc<dyn Registry> {
    Arc::new(crate::registry::MultiRegistry::new(vec![
        Arc::new(a.clone()),
        Arc::new(b.clone()),
    ]))
}

fn drain(events: &mut broadcast::Receiver<BackendEvent>) -> Vec<(String, BackendChange)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push((e.backend, e.change));
    }
    out
}

/// A partial registration is a success that names who holds it and who failed;
/// `require_complete` makes it an error naming both, and the manager still retries the
/// missing backend until it holds the instance.
#[tokio::test(start_paused = true)]
async fn a_partial_registration_says_so_and_require_complete_makes_it_an_error() {
    let (a, b) = (
        Switch::new("a", Memory::new()),
        Switch::new("b", Memory::new()),
    );
    b.set_down(true);
    let m = ServiceManager::new(pair(&a, &b)).with_interval(Duration::from_millis(500));
    let report = m.register(cfg(1)).await.expect("a holds it");
    assert!(!report.is_complete());
    assert_eq!(report.registered().collect::<Vec<_>>(), ["a"]);
    assert_eq!(report.failures().map(|(b, _)| b).collect::<Vec<_>>(), ["b"]);
    let err = report.require_complete().unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::PartialRegistration { id, registered, failures }
            if id == "svc-127.0.0.1-1" && registered == &["a"] && failures.len() == 1 && failures[0].0 == "b"),
        "{err:?}"
    );
    assert!(
        text.contains("registered in a but not in [b]") && text.contains("switched off"),
        "{text}"
    );
    assert!(err.is_transient());

    b.set_down(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(b.inner.instances("svc").await.expect("list").len(), 1);
    assert!(m.status()[0].backends.iter().all(BackendStatus::is_up));

    let complete = m.register(cfg(2)).await.expect("both");
    assert_eq!(
        complete.require_complete().expect("complete").id,
        "svc-127.0.0.1-2"
    );
}

/// Each change of a backend's standing is one event: registered, the first failure of a run
/// (not every failure), registered again once calls work, re-registered after a loss; the
/// other backend, untouched, says nothing after its first registration.
#[tokio::test(start_paused = true)]
async fn every_change_of_standing_is_one_event() {
    let (a, b) = (
        Switch::new("a", Memory::new()),
        Switch::new("b", Memory::new()),
    );
    let m = ServiceManager::new(pair(&a, &b)).with_interval(Duration::from_millis(500));
    let mut events = m.subscribe();
    let id = m.register(cfg(1)).await.expect("register").id;
    assert_eq!(
        drain(&mut events),
        [
            ("a".to_owned(), BackendChange::Registered),
            ("b".to_owned(), BackendChange::Registered)
        ]
    );

    b.set_down(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = drain(&mut events);
    assert!(
        matches!(&got[..], [(backend, BackendChange::Failing { error })] if backend == "b" && error.contains("switched off")),
        "{got:?}"
    );
    let st = &m.status()[0].backends[1];
    assert!(
        st.registered && !st.is_up() && st.failures >= 5 && st.errors == u64::from(st.failures),
        "{st:?}"
    );

    // Back, still holding it: calls work again.
    b.set_down(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        drain(&mut events),
        [("b".to_owned(), BackendChange::Registered)]
    );

    // Back empty: registered again.
    b.inner.deregister("svc", &id).await.expect("wipe");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        drain(&mut events),
        [("b".to_owned(), BackendChange::Reregistered)]
    );
    let st = &m.status()[0].backends;
    assert_eq!((st[0].reregistrations, st[0].errors), (0, 0), "{st:?}");
    assert_eq!(st[1].reregistrations, 1, "{st:?}");
}

/// A backend whose keep-alives hang does not hold back the others': each backend has its own
/// loop. (One round over both waited ten seconds per round, and the embedded registry's 3 s
/// TTL ran out.)
#[tokio::test(start_paused = true)]
async fn a_slow_backend_does_not_delay_the_keep_alives_of_the_others() {
    let a = Switch::new("a", Memory::with_ttl(Duration::from_secs(3)));
    let b = Switch::new("b", Memory::new());
    b.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let m = ServiceManager::new(pair(&a, &b)).with_interval(Duration::from_secs(1));
    let mut events = m.subscribe();
    m.register(cfg(1)).await.expect("register");
    drain(&mut events);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.inner.instances("svc").await.expect("list").len(), 1);
    }
    assert_eq!(drain(&mut events), [], "no churn on either backend");
    assert_eq!(m.status()[0].backends[0].reregistrations, 0);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_member_is_never_a_failed_backend() {
    let writable = Memory::new();
    let multi = crate::registry::MultiRegistry::new(vec![
        Arc::new(ReadOnly(Memory::new())),
        Arc::new(writable.clone()),
    ]);
    let m = ServiceManager::new(Arc::new(multi)).with_interval(Duration::from_secs(1));
    let report = m.register(cfg(1)).await.expect("register");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        report.results.len(),
        1,
        "only the writable member: {report:?}"
    );
    assert_eq!(report.results[0].0, "memory");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = m.status();
    let backends: Vec<(&str, bool, u32)> = status[0]
        .backends
        .iter()
        .map(|b| (b.backend.as_str(), b.registered, b.failures))
        .collect();
    assert_eq!(backends, vec![("memory", true, 0)]);
    assert_eq!(writable.instances("svc").await.expect("list").len(), 1);
    m.shutdown().await;
    assert!(writable.instances("svc").await.expect("list").is_empty());
}

#[tokio::test]
async fn only_read_only_registries_refuse_the_registration() {
    let m = ServiceManager::new(Arc::new(ReadOnly(Memory::new())));
    let err = m.register(cfg(1)).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("`dns`") && text.contains("read-only"),
        "{text}"
    );
    assert!(m.status().is_empty(), "nothing is left to retry");
}
