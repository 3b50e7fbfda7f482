use super::*;
use crate::registry::Memory;

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
