//! Nacos, three rnacos nodes in one raft cluster on loopback ([`NacosCluster`]): the node chi's
//! first connection is on killed with SIGKILL under the load of [`Load`](super::Load). chi's
//! config names all three nodes (`server_configs`); each nacos-sdk connection picks one of
//! them. The first connection carries the subscriptions, the one-instance service and the
//! first keeper; the other keepers and the writer's instances each have a connection of their
//! own (one instance per service per connection), on whichever node it picked.
//!
//! Asserted: the connections move to live nodes (this process's TCP connections say so); the
//! heartbeats and registrations move with them (nacos-sdk registers again on the new node, and
//! the survivors keep listing the keepers past the moment they declare the dead node gone, 15 s
//! after the kill, when they drop what its clients had registered there); the subscription
//! moves too (the watch sees the changes made after the kill); a registration made after the
//! kill is listed by both survivors within 10 s; no change lost, no empty list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::nacos::{Nacos, decode_instances};
use chi_discovery::{Instance, Registry};

use chi_test_support::nacos::NacosCluster;
use chi_test_support::{self as harness, eventually};

use super::{KEEPERS, Load};

/// How long rnacos nodes wait before declaring a silent peer gone (`node_manage.rs`: 15 s, checked
/// every 3 s), plus room.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// The ids node `i` lists for `service` (its own copy, over the open API).
async fn listed_on(cluster: &NacosCluster, i: usize, service: &str) -> Option<Vec<String>> {
    let body = cluster.list_on(i, service).await.ok()?;
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    let hosts = serde_json::to_vec(value.get("hosts")?).ok()?;
    let mut ids: Vec<String> = decode_instances(service, &hosts)
        .ok()?
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    Some(ids)
}

/// What discovery and a watch of a one-instance service saw.
#[derive(Debug, Default)]
struct Solo {
    discovers: u64,
    empty: u64,
    watch_empty: u64,
    longest_empty: Duration,
}

/// Discovers and watches `service` for [`PEER_TIMEOUT`] plus 5 s, counting empty answers and the
/// longest time the watch's view was empty.
async fn follow_solo(client: chi_discovery::DiscoveryClient, service: &'static str) -> Solo {
    let mut out = Solo::default();
    let mut watch = client.watch(service).await.expect("watch solo");
    let mut view = std::collections::HashMap::new();
    let mut empty_since: Option<Instant> = None;
    let end = Instant::now() + PEER_TIMEOUT + Duration::from_secs(5);
    while Instant::now() < end {
        out.discovers += 1;
        if client.discover(service).await.is_ok_and(|s| s.is_empty()) {
            out.empty += 1;
        }
        if let Ok(Some(Ok(change))) = tokio::time::timeout(
            Duration::from_millis(10),
            futures_util::StreamExt::next(&mut watch),
        )
        .await
        {
            change.apply(&mut view);
            match (view.is_empty(), empty_since) {
                (true, None) => {
                    out.watch_empty += 1;
                    empty_since = Some(Instant::now());
                }
                (false, Some(since)) => {
                    out.longest_empty = out.longest_empty.max(since.elapsed());
                    empty_since = None;
                }
                _ => {}
            }
        }
    }
    if let Some(since) = empty_since {
        out.longest_empty = out.longest_empty.max(since.elapsed());
    }
    out
}

/// True when node `i` lists every keeper.
async fn keepers_listed(cluster: &NacosCluster, i: usize, service: &str) -> bool {
    listed_on(cluster, i, service)
        .await
        .is_some_and(|ids| (0..KEEPERS).all(|k| ids.contains(&format!("k{k}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_chi_talks_to_killed_under_load_heartbeats_and_subscriptions_move() {
    let _heavy = harness::heavy().await;
    let test_start = Instant::now();
    let mut cluster = NacosCluster::start().await;
    let nacos = Nacos::connect(cluster.config())
        .await
        .expect("connect to the cluster");
    // Before any registration, the first connection is the only one.
    let first = cluster.serving();
    assert_eq!(
        first.len(),
        1,
        "a new client should talk to exactly one node, talks to {first:?}"
    );
    let victim = first[0];
    let registry: Arc<dyn Registry> = Arc::new(nacos.clone());
    let svc = "cluster-nacos";
    // A service whose only instance is registered first, watched and discovered throughout.
    let solo = "cluster-nacos-solo";
    let solo_manager = super::manager(registry.clone());
    solo_manager
        .register_instance(Instance::new(solo, "127.0.0.1", 7600).with_id("solo"))
        .await
        .expect("register solo");
    let mut load = Load::start(registry.clone(), svc).await;
    for i in 0..cluster.nodes.len() {
        let copied = eventually(Duration::from_secs(15), || keepers_listed(&cluster, i, svc)).await;
        assert!(copied.is_some(), "node {} never listed the keepers", i + 1);
    }
    let solo_watch = tokio::spawn(follow_solo(load.client().clone(), solo));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let connections = cluster.connections();
    let raft_leader = cluster.raft_leader().await;
    cluster.kill(victim);
    let kill = load.killed();
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != victim).collect();

    // Every connection on the dead node moves to a live one (the writer may open more).
    let moved = eventually(Duration::from_secs(20), || async {
        let now = cluster.connections();
        now[victim] == 0 && now.iter().sum::<usize>() >= connections.iter().sum()
    })
    .await;
    assert!(
        moved.is_some(),
        "nacos-sdk's connections did not all move to live nodes within 20 s (before the kill \
         {connections:?}, now {:?}):\n{}",
        cluster.connections(),
        cluster.logs()
    );
    let moved_after = kill.elapsed();
    let to = cluster.serving();

    // A registration made after the kill is listed by both survivors.
    let fresh = Instance::new("cluster-nacos-new", "127.0.0.1", 7500).with_id("fresh");
    let registered = eventually(Duration::from_secs(10), || async {
        registry.register(&fresh).await.is_ok()
    })
    .await;
    assert!(registered.is_some(), "no registration after the kill");
    let landed = eventually(Duration::from_secs(10), || async {
        let mut all = true;
        for i in &survivors {
            all &= listed_on(&cluster, *i, "cluster-nacos-new")
                .await
                .is_some_and(|ids| ids == ["fresh"]);
        }
        all
    })
    .await;
    let landed_after = kill.elapsed();
    assert!(
        landed.is_some() && landed_after < Duration::from_secs(10),
        "the registration made after the kill was not listed by the survivors within 10 s \
         ({landed_after:?})"
    );

    // The load runs on past the moment the survivors declare the dead node gone and drop what
    // its clients registered there: the keepers, registered again through the new node, stay.
    tokio::time::sleep(PEER_TIMEOUT.saturating_sub(kill.elapsed())).await;
    for i in &survivors {
        let listed = listed_on(&cluster, *i, svc).await;
        assert!(
            keepers_listed(&cluster, *i, svc).await,
            "node {} lost keepers {} s after the kill: {listed:?}",
            i + 1,
            PEER_TIMEOUT.as_secs()
        );
    }
    registry
        .deregister("cluster-nacos-new", "fresh")
        .await
        .expect("deregister fresh");

    let solo = solo_watch.await.expect("solo follower");
    let solo_reregistrations: u64 = solo_manager
        .status()
        .iter()
        .map(|s| s.backends.iter().map(|b| b.reregistrations).sum::<u64>())
        .sum();
    solo_manager.shutdown().await;
    let figures = load.finish(registry.as_ref()).await;
    figures.print(
        "cluster nacos, the node chi talks to killed",
        &format!(
            "; node {} killed (raft leader: node {}), connections per node before the kill \
             {connections:?}, on nodes {:?} {} ms after it; a registration made after the kill listed by both survivors {} ms after it; \
             keepers still listed {} s after the kill; one-instance service: {solo:?}, \
             {solo_reregistrations} re-registrations; test \
             took {:.1} s",
            victim + 1,
            raft_leader.map_or("unknown".to_owned(), |l| (l + 1).to_string()),
            to.iter().map(|i| i + 1).collect::<Vec<_>>(),
            moved_after.as_millis(),
            landed_after.as_millis(),
            PEER_TIMEOUT.as_secs(),
            test_start.elapsed().as_secs_f64()
        ),
    );
    figures.assert_clean("nacos");
    assert_eq!(
        (figures.keepers_left, figures.reregistrations),
        (0, 0),
        "keepers left the view (longest {:?}): their registrations did not move to the live \
         node before the survivors dropped the dead node's",
        figures.keeper_gap
    );
    assert_eq!(
        (solo.empty, solo.watch_empty, solo_reregistrations),
        (0, 0, 0),
        "the one-instance service: {solo:?}"
    );
}
