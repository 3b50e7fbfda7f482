use super::*;
use crate::registry::Memory;
use crate::util::lock;
use std::sync::Mutex;

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
