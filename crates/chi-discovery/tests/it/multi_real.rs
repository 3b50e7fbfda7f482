//! The multi-registry on real servers together: one config enabling Consul, etcd and Nacos
//! (rnacos), a [`Chi`] registering in all three, and each registry in turn killed (SIGKILL)
//! and brought back empty (a new data directory; a Consul dev agent keeps nothing anyway).
//!
//! Asserted for each: the registration is back on the restarted server within 20 s, and the
//! other two saw nothing of it: the instance stayed listed there at every poll, no watch of
//! theirs reported a change, the manager neither failed nor re-registered there, and their
//! own records of it are the same ones (Consul's catalog indexes, etcd's revisions and lease).
//! The recovery times are printed on `[reliability] multi: ` lines (`-- --nocapture`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chi_discovery::config::Config;
use chi_discovery::manager::{BackendChange, BackendEvent};
use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::Nacos;
use chi_discovery::{Change, Chi, Registry};
use chi_test_support::consul::ConsulAgent;
use chi_test_support::etcd::Etcd as EtcdServer;
use chi_test_support::nacos::NacosServer;
use chi_test_support::{self as harness, eventually};
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::health::HttpServer;

const SERVICE: &str = "multi-real";
/// The issue's bound: a registry back empty holds the registration again within this.
const RECOVERY: Duration = Duration::from_secs(20);

/// The three servers.
struct Fleet {
    consul: ConsulAgent,
    etcd: EtcdServer,
    nacos: NacosServer,
}

impl Fleet {
    async fn start() -> Fleet {
        Fleet {
            consul: ConsulAgent::start().await,
            etcd: EtcdServer::single().await,
            nacos: tokio::task::block_in_place(NacosServer::start),
        }
    }

    /// One config enabling all three, as a user writes it (every registry setting at its
    /// default), registering an instance at `port` with an HTTP check of `/health`.
    fn yaml(&self, port: u16) -> String {
        format!(
            r#"service_discovery:
  registration:
    name: "{SERVICE}"
    version: "v1"
    address: "127.0.0.1"
    port: {port}
    health_check:
      http: "/health"
      interval: "1s"
      timeout: "500ms"
  registries:
    consul:
      enabled: true
      address: "{consul}"
    etcd:
      enabled: true
      endpoints: ["{etcd}"]
    nacos:
      enabled: true
      server_configs:
        - ip: "127.0.0.1"
          port: {nacos}
"#,
            consul = self.consul.addr(),
            etcd = self.etcd.endpoint(),
            nacos = self.nacos.http_port,
        )
    }

    /// A client of one backend, apart from the `Chi` under test, to look at what it holds.
    async fn observer(&self, backend: &str) -> Arc<dyn Registry> {
        match backend {
            "consul" => Arc::new(
                Consul::new(ConsulConfig {
                    address: self.consul.addr(),
                    ..ConsulConfig::default()
                })
                .expect("consul"),
            ),
            "etcd" => Arc::new(
                Etcd::connect(EtcdConfig {
                    endpoints: self.etcd.endpoints(),
                    ..EtcdConfig::default()
                })
                .await
                .expect("etcd"),
            ),
            "nacos" => Arc::new(Nacos::connect(self.nacos.config()).await.expect("nacos")),
            other => panic!("no backend {other}"),
        }
    }

    fn kill(&mut self, backend: &str) {
        match backend {
            "consul" => self.consul.kill(),
            "etcd" => self.etcd.members[0].kill(),
            "nacos" => self.nacos.kill(),
            other => panic!("no backend {other}"),
        }
    }

    /// Starts the killed server again on its ports with nothing in it (etcd and rnacos on a new
    /// data directory; a Consul dev agent keeps nothing) and waits until it serves.
    async fn restart_empty(&mut self, backend: &str) {
        match backend {
            "consul" => self.consul.restart().await,
            "etcd" => {
                let member = &mut self.etcd.members[0];
                member.wipe();
                tokio::task::block_in_place(|| member.restart());
                self.etcd.wait_for_leader(Duration::from_secs(15)).await;
            }
            "nacos" => tokio::task::block_in_place(|| {
                self.nacos.wipe();
                self.nacos.restart();
            }),
            other => panic!("no backend {other}"),
        }
    }

    /// The backend's own record of `id`, which a deregistration or a registration made again
    /// changes: Consul's catalog `CreateIndex` and `ModifyIndex`, etcd's create and mod
    /// revisions and lease. Nacos keeps no such record (its watch and the manager tell).
    async fn record(&self, backend: &str, id: &str) -> Option<(i64, i64, i64)> {
        match backend {
            "consul" => {
                let url = format!("{}/v1/catalog/service/{SERVICE}", self.consul.url());
                let body: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                let entry = body.as_array()?.iter().find(|e| e["ServiceID"] == id)?;
                Some((
                    entry["CreateIndex"].as_i64()?,
                    entry["ModifyIndex"].as_i64()?,
                    0,
                ))
            }
            "etcd" => {
                let mut raw = self.etcd.client().await;
                let key = format!("/chi/services/{SERVICE}/{id}");
                let resp = raw.get(key, None).await.ok()?;
                let kv = resp.kvs().first()?;
                Some((kv.create_revision(), kv.mod_revision(), kv.lease()))
            }
            _ => None,
        }
    }
}

/// True when `registry` lists `id` now.
async fn holds(registry: &dyn Registry, id: &str) -> bool {
    registry
        .instances(SERVICE)
        .await
        .is_ok_and(|list| list.iter().any(|i| i.id == id))
}

/// Everything a watch of `registry` reports after its first `Reset` (which must list `id`),
/// until the returned task is aborted.
async fn follow(
    registry: &dyn Registry,
    id: &str,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let mut watch = registry.watch(SERVICE).await.expect("watch");
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(Change::Reset(list)))) => {
            assert!(
                list.iter().any(|i| i.id == id),
                "{} lists {list:?}",
                registry.backend()
            );
        }
        other => panic!("{}: expected a Reset, got {other:?}", registry.backend()),
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(item) = watch.next().await {
            out.lock().expect("lock").push(format!("{item:?}"));
        }
    });
    (seen, task)
}

/// The manager's events so far, by backend.
fn drain(events: &mut broadcast::Receiver<BackendEvent>) -> Vec<(String, BackendChange)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push((e.backend, e.change));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_registry_back_empty_gets_the_registration_again_and_the_others_see_nothing() {
    let _heavy = harness::heavy().await;
    let mut fleet = Fleet::start().await;
    let server = HttpServer::start().await;
    let config = Config::from_yaml(&fleet.yaml(server.port)).expect("config");
    let t = Instant::now();
    let chi = Chi::new(config).await.expect("chi");
    println!(
        "[reliability] multi: connected to the three in {:?}",
        t.elapsed()
    );
    let manager = chi.manager().clone();
    let mut events = manager.subscribe();
    let report = chi
        .register()
        .await
        .expect("register")
        .require_complete()
        .expect("all three hold it");
    let id = report.id.clone();
    assert_eq!(
        report.registered().collect::<Vec<_>>(),
        ["consul", "etcd", "nacos"]
    );
    let backends = ["consul", "etcd", "nacos"];
    let mut observers = Vec::new();
    for b in backends {
        observers.push(fleet.observer(b).await);
    }
    for o in &observers {
        let visible = eventually(Duration::from_secs(10), || holds(&**o, &id)).await;
        assert!(visible.is_some(), "{} does not list {id}", o.backend());
    }
    assert!(
        drain(&mut events)
            .iter()
            .all(|(_, c)| *c == BackendChange::Registered),
        "registered everywhere at once"
    );

    let mut figures = Vec::new();
    for (v, victim) in backends.iter().enumerate() {
        let others: Vec<usize> = (0..3).filter(|&i| i != v).collect();
        let status_before = manager.status()[0].backends.clone();
        let mut records = Vec::new();
        let mut watches = Vec::new();
        for &o in &others {
            records.push(fleet.record(backends[o], &id).await);
            let fresh = fleet.observer(backends[o]).await;
            watches.push(follow(&*fresh, &id).await);
        }

        fleet.kill(victim);
        let killed = Instant::now();
        // The manager notices (its next keep-alive there fails).
        let noticed = eventually(Duration::from_secs(15), || async {
            !manager.status()[0].backends[v].is_up()
        })
        .await;
        assert!(
            noticed.is_some(),
            "{victim} down, the manager did not notice: {:?}",
            manager.status()
        );
        fleet.restart_empty(victim).await;
        let restarted = Instant::now();

        // Back on the victim; listed on the others at every poll meanwhile.
        let deadline = restarted + RECOVERY;
        let recovered = loop {
            if holds(&*observers[v], &id).await {
                break restarted.elapsed();
            }
            for &o in &others {
                assert!(
                    holds(&*observers[o], &id).await,
                    "{} stopped listing {id} while {victim} was restarted",
                    backends[o]
                );
            }
            assert!(
                Instant::now() < deadline,
                "{victim} back empty: {id} not registered there again within {RECOVERY:?}; manager {:?}",
                manager.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The manager's own account: failing, then registered (again) there; nothing elsewhere.
        let back = eventually(Duration::from_secs(10), || async {
            manager.status()[0].backends[v].is_up()
        })
        .await;
        assert!(back.is_some(), "{:?}", manager.status());
        // Two keep-alive rounds on the others after the victim is back, for churn to show.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let changes = drain(&mut events);
        let on_victim: Vec<&BackendChange> = changes
            .iter()
            .filter(|(b, _)| b == victim)
            .map(|(_, c)| c)
            .collect();
        assert!(
            matches!(on_victim.first(), Some(BackendChange::Failing { .. }))
                && matches!(
                    on_victim.last(),
                    Some(BackendChange::Registered | BackendChange::Reregistered)
                ),
            "{victim}: {changes:?}"
        );
        assert!(
            changes.iter().all(|(b, _)| b == victim),
            "churn on the others: {changes:?}"
        );
        let status = &manager.status()[0].backends;
        for (k, &o) in others.iter().enumerate() {
            let name = backends[o];
            assert_eq!(
                (status[o].reregistrations, status[o].errors),
                (status_before[o].reregistrations, status_before[o].errors),
                "{name} re-registered or failed while {victim} was away: {status:?}"
            );
            assert!(status[o].is_up(), "{status:?}");
            let (seen, task) = &watches[k];
            task.abort();
            let seen = seen.lock().expect("lock").clone();
            assert!(
                seen.is_empty(),
                "{name}'s watch saw {seen:?} while {victim} was away"
            );
            assert_eq!(
                fleet.record(name, &id).await,
                records[k],
                "{name}'s record of {id} changed while {victim} was away"
            );
        }
        println!(
            "[reliability] multi: {victim}: killed, noticed by the manager after {:?}, restarted empty after {:?}; \
             registered there again {:?} after it served (manager: {:?}); {} untouched",
            noticed.unwrap_or_default(),
            restarted - killed,
            recovered,
            on_victim.last(),
            others
                .iter()
                .map(|&o| backends[o])
                .collect::<Vec<_>>()
                .join(" and "),
        );
        figures.push((victim, recovered));
    }
    println!(
        "[reliability] multi: recovery (registry back empty -> instance listed there again): {}",
        figures
            .iter()
            .map(|(b, d)| format!("{b} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    chi.shutdown().await;
    for o in &observers {
        let gone = eventually(Duration::from_secs(10), || async {
            !holds(&**o, &id).await
        })
        .await;
        assert!(
            gone.is_some(),
            "{} still lists {id} after shutdown",
            o.backend()
        );
    }
}
