//! nacos side of the propagation bench.
//!
//! The floor is nacos-sdk on its own: one client registers an instance, another one, subscribed
//! to the service, waits for the push that lists it. chi's path adds its watch on top (a nudge
//! from the SDK listener, a read of the SDK's copy, a diff).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::Registry;
use chi_discovery::registry::nacos::{Nacos, NacosConfig, NacosServerConfig};
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use tokio::sync::mpsc;

fn split(addr: &str) -> (String, u16) {
    let (host, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("--nacos wants HOST:PORT, got {addr}"));
    (
        host.to_owned(),
        port.parse()
            .unwrap_or_else(|_| panic!("bad port in {addr}")),
    )
}

async fn raw_client(addr: &str) -> NamingService {
    NamingServiceBuilder::new(
        ClientProps::new()
            .server_addr(addr)
            .env_first(false)
            .app_name("chi-bench-floor")
            .cache_dir(std::env::temp_dir().join("chi-nacos-bench")),
    )
    .build()
    .await
    .unwrap_or_else(|e| panic!("nacos-sdk client for {addr}: {e}"))
}

/// Forwards every push to the bench loop.
struct Pushes(mpsc::UnboundedSender<Arc<NamingChangeEvent>>);

impl NamingEventListener for Pushes {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let _ = self.0.send(event);
    }
}

/// Floor: the raw nacos-sdk register -> subscribe push, `n` times.
pub(crate) async fn floor(addr: &str, n: usize) -> Vec<Duration> {
    let service = format!("bench-nacos-floor-{}", std::process::id());
    let writer = raw_client(addr).await;
    let reader = raw_client(addr).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    reader
        .subscribe(service.clone(), None, Vec::new(), Arc::new(Pushes(tx)))
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let mut samples = Vec::with_capacity(n);
    let mut registered = HashMap::new();
    for k in 0..n {
        let port = 10_000 + (k % 50_000) as i32;
        let inst = ServiceInstance {
            ip: "127.0.0.1".into(),
            port,
            ..ServiceInstance::default()
        };
        let start = Instant::now();
        writer
            .register_instance(service.clone(), None, inst.clone())
            .await
            .unwrap_or_else(|e| panic!("register: {e}"));
        loop {
            let Some(event) = rx.recv().await else {
                panic!("the subscription ended during the benchmark");
            };
            let listed = event
                .instances
                .as_ref()
                .is_some_and(|l| l.iter().any(|i| i.port == port));
            if listed {
                break;
            }
        }
        samples.push(start.elapsed());
        registered.insert(port, inst);
    }
    for inst in registered.into_values() {
        let _ = writer
            .deregister_instance(service.clone(), None, inst)
            .await;
    }
    samples
}

/// Two independent chi registries on `addr`: one registers, the other watches.
pub(crate) async fn registries(addr: &str) -> (Arc<dyn Registry>, Arc<dyn Registry>) {
    let (host, port) = split(addr);
    let config = NacosConfig {
        server_configs: vec![NacosServerConfig::new(host, port)],
        ..NacosConfig::default()
    };
    let writer = Nacos::connect(config.clone())
        .await
        .unwrap_or_else(|e| panic!("nacos writer: {e}"));
    let reader = Nacos::connect(config)
        .await
        .unwrap_or_else(|e| panic!("nacos reader: {e}"));
    (Arc::new(writer), Arc::new(reader))
}
