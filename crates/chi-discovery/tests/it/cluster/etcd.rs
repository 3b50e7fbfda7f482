//! etcd, three members on loopback: the leader, which chi talks to (first of its endpoints), is
//! killed with SIGKILL under the load of [`Load`](super::Load).
//!
//! Asserted: the session lease survives through the other members (the same lease id holds the
//! keepers' keys two TTLs after the kill, and nothing was registered again); a new registration
//! made after the kill is visible to another client within 10 s; the watch loses no change
//! across the election (etcd's watch is revision-exact, so every change arrives as its own
//! event); no empty list, no failed pick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::{Instance, Registry};

use chi_test_support::etcd::Etcd as Cluster;
use chi_test_support::{self as harness, eventually};

use super::Load;

const TTL: Duration = Duration::from_secs(3);

async fn connect(endpoints: Vec<String>) -> Etcd {
    Etcd::connect(EtcdConfig {
        endpoints,
        lease_ttl: TTL,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
    .await
    .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_keeps_the_lease_and_every_change() {
    let _heavy = harness::heavy().await;
    let test_start = Instant::now();
    let mut cluster = Cluster::cluster().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    // chi talks to the leader first: killing it makes every part of the client move.
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, leader);
    let survivors: Vec<String> = endpoints[1..].to_vec();
    let etcd = connect(endpoints).await;
    let registry: Arc<dyn Registry> = Arc::new(etcd.clone());
    let svc = "cluster-etcd";
    let mut load = Load::start(registry.clone(), svc).await;
    let lease = etcd.lease_id().await.expect("the keepers' session lease");
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.members[leader].kill();
    let kill = load.killed();

    // A new registration, made after the kill, lands: another client (on the survivors) sees it.
    let fresh = Instance::new("cluster-etcd-new", "127.0.0.1", 7500).with_id("fresh");
    let observer = connect(survivors.clone()).await;
    let registered = eventually(Duration::from_secs(10), || async {
        registry.register(&fresh).await.is_ok()
    })
    .await;
    assert!(
        registered.is_some(),
        "no registration within 10 s of the kill"
    );
    let landed = eventually(Duration::from_secs(10), || async {
        observer
            .instances("cluster-etcd-new")
            .await
            .is_ok_and(|l| l.iter().any(|i| i.id == "fresh"))
    })
    .await;
    let landed_after = kill.elapsed();
    assert!(
        landed.is_some() && landed_after < Duration::from_secs(10),
        "the registration made after the kill was not seen within 10 s ({landed_after:?})"
    );
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader, "the killed member is still the leader?");

    // The load runs on until two TTLs after the kill: the keepers' lease must still hold them.
    let two_ttls = 2 * TTL + Duration::from_millis(500);
    tokio::time::sleep(two_ttls.saturating_sub(kill.elapsed())).await;
    assert_eq!(
        etcd.lease_id().await,
        Some(lease),
        "the session lease was replaced"
    );
    let mut raw = etcd_client::Client::connect(survivors, None)
        .await
        .expect("raw client");
    for i in 0..super::KEEPERS {
        let key = etcd.key(svc, &format!("k{i}")).expect("key");
        let got = raw.get(key.clone(), None).await.expect("get a keeper");
        let kv = got.kvs().first();
        assert!(
            kv.is_some_and(|kv| kv.lease() == lease),
            "{key} is not held by the lease {lease} two TTLs after the kill: {kv:?}"
        );
    }
    assert!(
        load.keepers()
            .status()
            .iter()
            .all(|s| s.backends.iter().all(|b| b.registered)),
        "keepers not registered: {:?}",
        load.keepers().status()
    );

    let figures = load.finish(&observer).await;
    figures.print(
        "cluster etcd, leader killed",
        &format!(
            "; new leader elected, a registration made after the kill seen by another client \
             {} ms after it; same lease after {} ms (2 TTLs of {} s); test took {:.1} s",
            landed_after.as_millis(),
            kill.elapsed().as_millis(),
            TTL.as_secs(),
            test_start.elapsed().as_secs_f64()
        ),
    );
    figures.assert_clean("etcd");
    assert_eq!(figures.keepers_left, 0, "a keeper left the watcher's view");
    assert_eq!(
        figures.reregistrations, 0,
        "the keepers were registered again"
    );
    assert_eq!(
        figures.exact, figures.changes,
        "etcd's watch is revision-exact: every change should be its own event; folded: {:?}",
        figures.folded
    );
}
