//! Consul, three servers and the client agent chi talks to, on loopback
//! ([`ConsulCluster`]: raft multiplier 1, and the agent holds a request for at most 1 s while
//! there is no leader, so the election's `500` answers reach chi).
//!
//! - The leader killed under the load of [`Load`](super::Load): the blocking queries of the
//!   watch fail (the one waiting on the dead leader, then `No cluster leader`), back off and
//!   resume with the new leader; the registrations live on the agent and survive (nothing is
//!   registered again, the keepers' TTL checks keep passing); a registration made after the kill
//!   is served within 10 s; no change lost, no empty list.
//! - The quorum lost (two servers killed): `consistency: stale` reads answer the full list from
//!   the last server, `default` and `consistent` reads fail (never an empty list); with the
//!   servers back, a watch started before the loss resumes and sees a registration made while
//!   there was no quorum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::consul::{Consistency, Consul, ConsulConfig};
use chi_discovery::{Change, Instance, Registry};
use futures_util::StreamExt;

use chi_test_support::consul::ConsulCluster;
use chi_test_support::{self as harness, eventually};

use super::{KEEPERS, Load, keeper, manager};

const CHECK_TTL: Duration = Duration::from_secs(3);
/// Stale reads in a row that must answer while there is no quorum.
const READS: u32 = 5;

fn consul(cluster: &ConsulCluster, consistency: Consistency) -> Arc<dyn Registry> {
    Arc::new(
        Consul::new(ConsulConfig {
            address: cluster.addr(),
            consistency,
            check_ttl: CHECK_TTL,
            request_timeout: Duration::from_secs(2),
            ..ConsulConfig::default()
        })
        .expect("consul config"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_blocking_queries_resume_and_registrations_survive() {
    let _heavy = harness::heavy().await;
    let test_start = Instant::now();
    let mut cluster = ConsulCluster::start().await;
    let registry = consul(&cluster, Consistency::Default);
    let svc = "cluster-consul";
    let mut load = Load::start(registry.clone(), svc).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.kill(leader);
    let kill = load.killed();

    // A registration made after the kill: the agent takes it at once and syncs it to the new
    // leader; discovery through the agent serves it within 10 s.
    let fresh = Instance::new("cluster-consul-new", "127.0.0.1", 7500).with_id("fresh");
    let registered = eventually(Duration::from_secs(10), || async {
        registry.register(&fresh).await.is_ok()
    })
    .await;
    assert!(registered.is_some(), "the agent refused a registration");
    let landed = eventually(Duration::from_secs(10), || async {
        registry
            .instances("cluster-consul-new")
            .await
            .is_ok_and(|l| l.iter().any(|i| i.id == "fresh"))
    })
    .await;
    let landed_after = kill.elapsed();
    assert!(
        landed.is_some() && landed_after < Duration::from_secs(10),
        "the registration made after the kill was not served within 10 s ({landed_after:?}):\n{}",
        cluster.logs()
    );
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let elected = kill.elapsed();

    // The load runs on for two check TTLs after the kill: the keepers' TTL checks, updated on
    // the agent, keep them passing; nothing needs registering again.
    tokio::time::sleep((2 * CHECK_TTL).saturating_sub(kill.elapsed())).await;
    let passing = chi_discovery::Filter::new().healthy_only();
    let healthy = registry.instances(svc).await.map(|l| {
        passing
            .apply(&l)
            .iter()
            .filter(|i| i.id.starts_with('k'))
            .count()
    });
    assert_eq!(
        healthy.as_ref().ok(),
        Some(&usize::from(KEEPERS)),
        "keepers not all healthy two check TTLs after the kill: {healthy:?}"
    );

    let figures = load.finish(registry.as_ref()).await;
    figures.print(
        "cluster consul, leader killed",
        &format!(
            "; new leader known to the servers {} ms after the kill, a registration made after \
             the kill served {} ms after it; test took {:.1} s",
            elected.as_millis(),
            landed_after.as_millis(),
            test_start.elapsed().as_secs_f64()
        ),
    );
    figures.assert_clean("consul");
    assert_eq!(figures.keepers_left, 0, "a keeper left the watcher's view");
    assert_eq!(figures.reregistrations, 0, "the agent lost registrations");
}

/// What a series of reads answered.
#[derive(Debug, Default)]
struct Reads {
    full: u32,
    partial: u32,
    empty: u32,
    errors: u32,
    last_error: Option<String>,
}

impl Reads {
    async fn read(&mut self, registry: &dyn Registry, service: &str) {
        match registry.instances(service).await {
            Ok(l) if l.is_empty() => self.empty += 1,
            Ok(l) if l.len() == usize::from(KEEPERS) => self.full += 1,
            Ok(_) => self.partial += 1,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_stale_reads_answer_and_the_watch_resumes_after() {
    let _heavy = harness::heavy().await;
    let test_start = Instant::now();
    let mut cluster = ConsulCluster::start().await;
    let default = consul(&cluster, Consistency::Default);
    let stale = consul(&cluster, Consistency::Stale);
    let consistent = consul(&cluster, Consistency::Consistent);
    let svc = "cluster-consul-quorum";
    let keepers = manager(default.clone());
    for i in 0..KEEPERS {
        keepers
            .register_instance(keeper(svc, i))
            .await
            .expect("register");
    }
    // Every server holds the keepers (a stale read from each one's own copy says so): raft
    // commits on a majority, so the one left after the cut could otherwise lag behind.
    let own_copies: Vec<Arc<dyn Registry>> = cluster
        .servers
        .iter()
        .map(|s| {
            Arc::new(
                Consul::new(ConsulConfig {
                    address: s.addr(),
                    consistency: Consistency::Stale,
                    ..ConsulConfig::default()
                })
                .expect("consul config"),
            ) as Arc<dyn Registry>
        })
        .collect();
    for r in own_copies.iter().chain([&default, &stale, &consistent]) {
        let all = eventually(Duration::from_secs(15), || async {
            r.instances(svc)
                .await
                .is_ok_and(|l| l.len() == usize::from(KEEPERS))
        })
        .await;
        assert!(all.is_some(), "the keepers never showed");
    }
    let mut watch = default.watch(svc).await.expect("watch");
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(Change::Reset(all)))) => assert_eq!(all.len(), usize::from(KEEPERS)),
        other => panic!("expected the first Reset, got {other:?}"),
    }

    // Two of three servers gone: no quorum, no leader, until they come back.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let other = (leader + 1) % 3;
    cluster.kill(leader);
    cluster.kill(other);
    let cut = Instant::now();
    // Reads of the three modes side by side (each read without a leader waits for the agent's
    // hold of 1 s) until stale reads have answered READS times in a row: the client agent sends
    // some RPCs to the dead servers until gossip declares them failed, and those fail.
    let (mut by_stale, mut by_default, mut by_consistent) =
        (Reads::default(), Reads::default(), Reads::default());
    let mut streak = 0;
    let mut stale_after = None;
    while streak < READS {
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "stale reads did not settle without a quorum: {by_stale:?}\n{}",
            cluster.logs()
        );
        let full = by_stale.full;
        futures_util::join!(
            by_stale.read(stale.as_ref(), svc),
            by_default.read(default.as_ref(), svc),
            by_consistent.read(consistent.as_ref(), svc),
        );
        if by_stale.full > full {
            streak += 1;
            stale_after.get_or_insert(cut.elapsed());
        } else {
            streak = 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = cut.elapsed();
    assert_eq!(
        (by_stale.empty, by_stale.partial),
        (0, 0),
        "stale reads answered less than the list: {by_stale:?}"
    );
    for (name, reads) in [("default", &by_default), ("consistent", &by_consistent)] {
        assert!(
            reads.full == 0 && reads.partial == 0 && reads.empty == 0 && reads.errors > 0,
            "{name} reads without a quorum must all fail: {reads:?}"
        );
    }
    // The agent takes a registration without a quorum; the servers get it once they are back.
    let late = Instance::new(svc, "127.0.0.1", 7600).with_id("late");
    default
        .register(&late)
        .await
        .expect("the agent takes a registration without a quorum");

    cluster.restart(leader);
    cluster.restart(other);
    let restarted = Instant::now();
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let leader_back = restarted.elapsed();
    // The watch reported the outage in line and resumes: a Reset, then `late` arrives.
    let (mut errors, mut resets, mut empty_resets) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut view = std::collections::HashMap::new();
    while !view.contains_key("late") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the watch never saw `late`: {view:?}");
        match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(Ok(change))) => {
                if let Change::Reset(all) = &change {
                    resets += 1;
                    empty_resets += usize::from(all.is_empty());
                }
                change.apply(&mut view);
            }
            Ok(Some(Err(_))) => errors += 1,
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("the watch never saw `late`: {view:?}"),
        }
    }
    let resumed = restarted.elapsed();
    assert_eq!(view.len(), usize::from(KEEPERS) + 1, "{view:?}");
    assert!(
        errors >= 1 && resets >= 1,
        "errors {errors}, resets {resets}"
    );
    assert_eq!(empty_resets, 0, "the watch sent an empty list");
    keepers.shutdown().await;
    println!(
        "[reliability] cluster consul, quorum lost (2 of 3 servers killed): stale reads answered \
         the full list {} ms after the kill, every time from {} ms ({} full, {} errors, 0 \
         empty); default reads {} errors, consistent {} errors, 0 answers, 0 empty ({}); the \
         agent took a registration meanwhile; servers restarted, leader after {} ms, the watch \
         ({errors} errors in line, {resets} resets, 0 empty) saw that registration {} ms after \
         the restart; test took {:.1} s",
        stale_after.unwrap_or_default().as_millis(),
        settled.as_millis(),
        by_stale.full,
        by_stale.errors,
        by_default.errors,
        by_consistent.errors,
        by_default.last_error.as_deref().unwrap_or(""),
        leader_back.as_millis(),
        resumed.as_millis(),
        test_start.elapsed().as_secs_f64()
    );
}
