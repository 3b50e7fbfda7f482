use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tower::discover::Change as TowerChange;
use tower::{Service, ServiceExt};

use super::*;
use crate::DiscoveryClient;
use crate::instance::{HealthStatus, Instance};
use crate::registry::{Memory, Registry};

fn inst(port: u16) -> Instance {
    Instance::new("echo", "127.0.0.1", port).with_health(HealthStatus::Healthy)
}

fn key<S>(c: &TowerChange<String, S>) -> String {
    match c {
        TowerChange::Insert(k, _) => format!("+{k}"),
        TowerChange::Remove(k) => format!("-{k}"),
    }
}

async fn next_keys<St>(d: &mut St, n: usize) -> Vec<String>
where
    St: futures_util::Stream<Item = Result<TowerChange<String, u16>, Infallible>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        let c = tokio::time::timeout(Duration::from_secs(5), d.next())
            .await
            .expect("a change in time")
            .expect("stream open")
            .expect("infallible");
        out.push(key(&c));
    }
    out
}

#[tokio::test]
async fn watch_events_become_inserts_and_removes() {
    let memory = Arc::new(Memory::new());
    memory.register(&inst(1)).await.expect("register");
    memory.register(&inst(2)).await.expect("register");
    let client = DiscoveryClient::new(memory.clone());
    let watcher = client.watch("echo").await.expect("watch");
    let mut d = Discover::new(watcher, |i: &Instance| Ok::<_, Infallible>(i.port));
    assert_eq!(
        next_keys(&mut d, 2).await,
        ["+echo-127.0.0.1-1", "+echo-127.0.0.1-2"]
    );
    // Unhealthy: removed; healthy again: inserted again.
    memory
        .register(&inst(2).with_health(HealthStatus::Unhealthy))
        .await
        .expect("update");
    assert_eq!(next_keys(&mut d, 1).await, ["-echo-127.0.0.1-2"]);
    memory.register(&inst(2)).await.expect("update");
    assert_eq!(next_keys(&mut d, 1).await, ["+echo-127.0.0.1-2"]);
    // A weight change is no change for tower; a removal is.
    memory
        .register(&inst(1).with_weight(5))
        .await
        .expect("update");
    memory
        .deregister("echo", "echo-127.0.0.1-1")
        .await
        .expect("deregister");
    assert_eq!(next_keys(&mut d, 1).await, ["-echo-127.0.0.1-1"]);
    // Moved to another address under the same id: replaced.
    memory
        .register(&inst(3).with_id("echo-127.0.0.1-2"))
        .await
        .expect("move");
    assert_eq!(
        next_keys(&mut d, 2).await,
        ["-echo-127.0.0.1-2", "+echo-127.0.0.1-2"]
    );
    assert_eq!(d.ids().collect::<Vec<_>>(), ["echo-127.0.0.1-2"]);
}

#[tokio::test]
async fn feeds_tower_p2c_balance() {
    let memory = Arc::new(Memory::new());
    for port in [1, 2, 3] {
        memory.register(&inst(port)).await.expect("register");
    }
    let client = DiscoveryClient::new(memory.clone());
    let watcher = client.watch("echo").await.expect("watch");
    // Each "service" answers with its instance's port.
    let discover = Discover::new(watcher, |i: &Instance| {
        let port = i.port;
        let svc = tower::service_fn(move |_: ()| async move { Ok::<u16, Infallible>(port) });
        Ok::<_, Infallible>(tower::load::Constant::new(svc, 0u32))
    });
    let mut balance = tower::balance::p2c::Balance::new(discover);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let port = balance
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("call");
        seen.insert(port);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    // An instance leaves: the balancer stops calling it once the watch says so.
    memory
        .deregister("echo", "echo-127.0.0.1-2")
        .await
        .expect("deregister");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let port = balance
                .ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("call");
            seen.insert(port);
        }
        if !seen.contains(&2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance 2 still called"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
