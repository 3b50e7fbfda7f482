//! The last-known-good file against a real etcd on loopback: a client discovers a service (the
//! file is written), etcd is killed, a new client (a process restarted during the outage) with
//! the same directory serves the last list from the file, marked stale, and once etcd is back
//! the live answer replaces it (and the file follows).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chi_discovery::discovery::{CacheConfig, LastKnownGood};
use chi_discovery::registry::Registries;
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::{DiscoveryClient, Instance, Registry, RetryPolicy};
use chi_test_support::etcd::Etcd as Server;
use chi_test_support::eventually;

fn inst(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, "127.0.0.1", port).with_id(id)
}

fn ids(list: &[Instance]) -> BTreeSet<String> {
    list.iter().map(|i| i.id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The instance ids in a last-known-good file, if it is there and is JSON.
fn ids_on_disk(path: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let list = value.pointer("/body/instances")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|i| i.get("id")?.as_str().map(str::to_owned))
            .collect(),
    )
}

/// A client as a process would build it: the same directory and registry identity every time.
async fn client(config: &EtcdConfig, lkg: &LastKnownGood) -> DiscoveryClient {
    let registry = Etcd::connect(config.clone())
        .await
        .expect("etcd connects lazily, so even while it is down");
    DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(200),
            last_known_good: Some(lkg.clone()),
            ..CacheConfig::default()
        })
        .retry(RetryPolicy {
            max_attempts: 2,
            initial_interval: Duration::from_millis(100),
            ..RetryPolicy::default()
        })
        .request_timeout(Duration::from_secs(1))
        .build(Arc::new(registry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_during_an_etcd_outage_serves_its_last_good_list() {
    let mut server = Server::single().await;
    let svc = "lkg-orders";
    let config = EtcdConfig {
        endpoints: server.endpoints(),
        // Long enough that the registrations outlive the outage without keep-alives.
        lease_ttl: Duration::from_secs(120),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    };
    let registries = Registries {
        etcd: Some(config.clone()),
        ..Registries::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let lkg = LastKnownGood::new(dir.path(), registries.identity());

    let owner = Etcd::connect(config.clone()).await.expect("connect");
    owner
        .register(&inst(svc, "a", 8001))
        .await
        .expect("register a");
    owner
        .register(&inst(svc, "b", 8002))
        .await
        .expect("register b");

    // Before: a live answer, written to the file.
    let first = client(&config, &lkg).await;
    let snap = first.discover(svc).await.expect("discover");
    assert_eq!(ids(&snap), set(&["a", "b"]));
    assert!(!snap.is_stale());
    let path = first.last_known_good_path(svc).expect("files are on");
    assert!(path.starts_with(dir.path()));
    let written = eventually(Duration::from_secs(5), || async {
        ids_on_disk(&path) == Some(set(&["a", "b"]))
    })
    .await;
    assert!(written.is_some(), "the file was never written");
    drop(first);

    // The registry goes down, and the process restarts: a new client, the same directory.
    server.members[0].kill();
    let second = client(&config, &lkg).await;
    let snap = second
        .discover(svc)
        .await
        .expect("the last good list from the file, not an error");
    assert_eq!(ids(&snap), set(&["a", "b"]));
    assert!(snap.is_stale(), "a list from the file is served stale");
    assert!(second.cached(svc).expect("cached").is_stale());

    // The registry comes back, with one more instance: the first live answer replaces the file's
    // list, fresh, and the file follows.
    server.members[0].restart();
    let other = Etcd::connect(config.clone()).await.expect("connect");
    let registered = eventually(Duration::from_secs(15), || {
        let other = other.clone();
        async move { other.register(&inst(svc, "c", 8003)).await.is_ok() }
    })
    .await;
    assert!(
        registered.is_some(),
        "could not register c after the restart"
    );
    let replaced = eventually(Duration::from_secs(15), || async {
        second
            .cached(svc)
            .is_some_and(|s| !s.is_stale() && ids(&s) == set(&["a", "b", "c"]))
    })
    .await;
    assert!(
        replaced.is_some(),
        "the live answer never replaced the file's list: {:?}",
        second.cached(svc).map(|s| (ids(&s), s.is_stale()))
    );
    let rewritten = eventually(Duration::from_secs(5), || async {
        ids_on_disk(&path) == Some(set(&["a", "b", "c"]))
    })
    .await;
    assert!(rewritten.is_some(), "the file never got the live answer");
}
