//! `chi xds --registry consul://… | etcd://… | nacos://…` in front of real registries (started by
//! `chi_test_support` on loopback), with real xDS clients: Python `grpcio` against each registry,
//! and Node `@grpc/grpc-js-xds` beside it against etcd. Real gRPC backends (Python) are
//! registered by `chi agent --registry URL`; the clients dial `xds:///order-service`.
//!
//! The story, per registry: calls spread over every backend; a newly registered backend gets
//! calls; a deregistered one stops getting them; `chi xds` restarted and the registry restarted
//! (kill -9, then started on the same ports) lose no endpoint on the client: every call succeeds
//! across both, every batch of calls reaches every backend (the restart grace covers the agents
//! registering again one by one), and a change made afterwards still reaches the client. Against Consul the test
//! also times a registration to the first call landing on the new backend, beside Consul's own
//! change floor (a blocking query's wake-up), and prints both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::{HealthStatus, Instance, Registry};

use crate::real::{Server, consul, etcd, nacos};
use crate::support::{Agent, discover_json};
use crate::xds::{
    Client, Lang, SERVICE, assert_spread, backend_agent, python, serve_backends, start_xds_with,
    write_bootstrap, xds_clients,
};

#[test]
fn grpcio_through_chi_xds_against_real_consul() {
    let mut server = consul();
    let consul_addr = server.url.trim_start_matches("consul://").to_owned();
    scenario(&mut server, &[Lang::Grpcio(python())], |client, port| {
        register_to_first_call(&consul_addr, client, port);
    });
}

#[test]
fn grpcio_and_grpc_js_xds_through_chi_xds_against_real_etcd() {
    let mut server = etcd();
    let langs = [
        Lang::Grpcio(python()),
        Lang::GrpcJs(xds_clients("node-path")),
    ];
    scenario(&mut server, &langs, |_, _| {});
}

#[test]
fn grpcio_through_chi_xds_against_real_nacos() {
    let mut server = nacos();
    scenario(&mut server, &[Lang::Grpcio(python())], |_, _| {});
}

/// Every client makes `n` calls; each batch must spread evenly over exactly `names`.
fn spread(clients: &mut [Client], what: &str, names: &[&str], n: u32) {
    for client in clients.iter_mut() {
        assert_spread(what, &client.call(n), names, u64::from(n));
    }
}

/// Every client calls until `done` holds for a batch of 40 (each within 30 s).
fn until_all(
    clients: &mut [Client],
    what: &str,
    done: impl Fn(&BTreeMap<String, u64>) -> bool + Copy,
) {
    for client in clients.iter_mut() {
        client.until(what, 40, done);
    }
}

/// The story against the registry `server`, with one client per `langs`; `measure` runs with the
/// first client and the port of a spare backend (`m1`) once three backends are served.
fn scenario(server: &mut Server, langs: &[Lang], measure: impl FnOnce(&mut Client, u16)) {
    let url = server.url.clone();
    let (_servers, ports) = serve_backends(&["b1", "b2", "b3", "b4", "m1"]);
    let agent = |name: &str| backend_agent(&url, name, ports[name], "eu-west-1a");
    let mut agents: BTreeMap<&str, Agent> = ["b1", "b2", "b3"]
        .into_iter()
        .map(|name| (name, agent(name)))
        .collect();

    // Once the registry is back the agents register again within their keep-alive period
    // (4.8 to 5.4 s against rnacos on an idle machine); a loaded one stretched that past the
    // default restart grace of 10 s once (a parallel release build): 30 s leaves room.
    let grace = ["--restart-grace", "30s"];
    let (mut xds, xds_addr) = start_xds_with(&url, "127.0.0.1:0", None, &grace);
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    let mut clients: Vec<Client> = langs.iter().map(|l| Client::start(l, &bootstrap)).collect();

    // Calls spread over every registered backend (the registry may list them one by one).
    until_all(&mut clients, "b1, b2 and b3 to get calls", |c| c.len() == 3);
    spread(&mut clients, "three backends", &["b1", "b2", "b3"], 300);

    measure(&mut clients[0], ports["m1"]);

    // A newly registered backend gets calls.
    agents.insert("b4", agent("b4"));
    until_all(&mut clients, "b4 to get calls", |c| c.contains_key("b4"));
    spread(
        &mut clients,
        "b4 registered",
        &["b1", "b2", "b3", "b4"],
        400,
    );

    // A deregistered backend stops getting calls (its agent deregisters on SIGTERM).
    stop(&mut agents, "b1");
    until_all(&mut clients, "b1 to get no calls", |c| {
        !c.contains_key("b1")
    });
    spread(&mut clients, "b1 deregistered", &["b2", "b3", "b4"], 300);

    // chi xds restarted: calls go on while it is down, and once it is back on the same address
    // the clients follow changes again.
    let (ok, _) = xds.terminate();
    assert!(
        ok,
        "chi xds exits cleanly on SIGTERM, with the clients' streams open"
    );
    spread(&mut clients, "chi xds down", &["b2", "b3", "b4"], 300);
    let (mut xds, _) = start_xds_with(&url, &xds_addr, None, &grace);
    spread(&mut clients, "chi xds back", &["b2", "b3", "b4"], 300);
    agents.insert("b1", agent("b1"));
    until_all(&mut clients, "b1 to get calls after the restart", |c| {
        c.contains_key("b1")
    });
    let all = ["b1", "b2", "b3", "b4"];
    spread(
        &mut clients,
        "chi xds restarted, b1 registered again",
        &all,
        400,
    );

    // The registry restarted: calls go on while it is down and while it comes back, and a change
    // made after it is back reaches the clients. A Consul dev agent and rnacos come back empty
    // and the agents register again one by one (within their keep-alive period): chi xds keeps
    // the last list while the registry answers "none", and its restart grace keeps the backends
    // the resync lacks until they are back, so every batch still reaches all four backends.
    server.kill();
    spread(&mut clients, "registry down", &all, 200);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut batches, mut narrowed) = (0, 0);
    loop {
        for client in &mut clients {
            let (counts, errors) = client.call(100);
            assert!(
                errors.is_empty(),
                "failed calls after the registry restart: {errors:?} ({counts:?})"
            );
            assert!(
                counts.keys().all(|k| all.contains(&k.as_str())),
                "{counts:?}"
            );
            batches += 1;
            if counts.len() < all.len() {
                narrowed += 1;
                eprintln!("after the registry restart, a batch reached fewer backends: {counts:?}");
            }
        }
        let listed = discover_json(&url, SERVICE, &[]).len();
        if listed == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not register again in the restarted registry ({listed} listed)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "registry restarted: {narrowed} of {batches} batches of 100 calls (no failure) reached \
         fewer than the {} backends while the agents registered again",
        all.len()
    );
    assert_eq!(
        narrowed, 0,
        "the clients lost backends across the registry restart ({narrowed} of {batches} batches)"
    );
    until_all(&mut clients, "every backend to get calls again", |c| {
        c.len() == all.len()
    });
    spread(&mut clients, "registry restarted, agents back", &all, 400);
    stop(&mut agents, "b4");
    until_all(
        &mut clients,
        "b4 to get no calls after the registry restart",
        |c| !c.contains_key("b4"),
    );
    spread(
        &mut clients,
        "registry restarted, b4 gone",
        &["b1", "b2", "b3"],
        300,
    );

    drop(clients);
    let (ok, _) = xds.terminate();
    assert!(ok, "chi xds exits cleanly on SIGTERM");
    for name in ["b1", "b2", "b3"] {
        stop(&mut agents, name);
    }
}

/// SIGTERM to backend `name`'s agent, which deregisters it and exits.
fn stop(agents: &mut BTreeMap<&str, Agent>, name: &str) {
    let mut agent = agents.remove(name).expect("the backend's agent");
    let (ok, _) = agent.proc.terminate();
    assert!(ok, "{name}'s agent exits cleanly: {:?}", agent.proc.seen);
}

/// Rounds of the registration-to-first-call measurement.
const ROUNDS: usize = 5;

/// Registers backend `m1` (at `port`) in Consul with the library's Consul adapter, timing from
/// the register request to the first call of `client` that lands on it, and, beside it, Consul's
/// own floor: the wake-up of a blocking query on the service that was waiting when the
/// registration went in. Prints both per round; fails when a call never lands, or lands more
/// than 2 s after the floor (a poll somewhere instead of a push).
fn register_to_first_call(consul_addr: &str, client: &mut Client, port: u16) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let registry = Consul::new(ConsulConfig {
        address: consul_addr.to_owned(),
        ..ConsulConfig::default()
    })
    .expect("a Consul client");
    let instance = Instance::new(SERVICE, "127.0.0.1", port)
        .with_id("m1")
        .with_version("v1")
        .with_health(HealthStatus::Healthy);
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        let base = format!("http://{consul_addr}/v1/health/service/{SERVICE}");
        let index = rt.block_on(async {
            let r = http.get(&base).send().await.expect("Consul health query");
            r.headers()["x-consul-index"]
                .to_str()
                .expect("index")
                .to_owned()
        });
        // Consul's floor: a blocking query that returns when the service changes. The
        // registration waits until the query is on its way (`query_sent`): parked when the change
        // comes, it wakes with it; still in flight, it is answered on arrival. Either way the
        // floor is Consul's wake-up or the query's own trip over loopback, never a guess at how
        // long parking takes.
        let (on_its_way, query_sent) = tokio::sync::oneshot::channel::<()>();
        let woke = rt.spawn({
            let http = http.clone();
            async move {
                let mut index = index;
                let mut on_its_way = Some(on_its_way);
                for _ in 0..10 {
                    if let Some(sent) = on_its_way.take() {
                        let _ = sent.send(());
                    }
                    let r = http
                        .get(format!("{base}?index={index}&wait=10s"))
                        .send()
                        .await
                        .expect("Consul blocking query");
                    let at = Instant::now();
                    index = r.headers()["x-consul-index"]
                        .to_str()
                        .expect("index")
                        .to_owned();
                    let entries: Vec<serde_json::Value> = r.json().await.expect("JSON entries");
                    if entries.iter().any(|e| e["Service"]["ID"] == "m1") {
                        return at;
                    }
                }
                panic!("Consul's blocking queries never listed m1");
            }
        });
        rt.block_on(query_sent)
            .expect("the blocking query is on its way");
        client.start_first("m1");
        let t0 = Instant::now();
        rt.block_on(registry.register(&instance))
            .expect("register m1");
        let (landed, counts, errors) = client.landed();
        let landing = t0.elapsed();
        let floor = rt
            .block_on(woke)
            .expect("the blocking query")
            .duration_since(t0);
        eprintln!(
            "round {round}: registered in Consul -> Consul blocking query woke after {floor:.1?}, \
             first grpcio call on the new backend after {landing:.1?} ({counts:?}, errors {errors:?})"
        );
        assert!(landed, "no call landed on m1 within 30 s: {counts:?}");
        assert!(errors.is_empty(), "failed calls: {errors:?}");
        assert!(
            landing < floor + Duration::from_secs(2),
            "the first call came {landing:?} after the registration, Consul's floor {floor:?}"
        );
        rows.push((floor, landing));
        rt.block_on(registry.deregister(SERVICE, "m1"))
            .expect("deregister m1");
        client.until("m1 to get no calls", 40, |c| !c.contains_key("m1"));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let floors = median(rows.iter().map(|r| r.0).collect());
    let landings = median(rows.iter().map(|r| r.1).collect());
    let excess = median(rows.iter().map(|r| r.1.saturating_sub(r.0)).collect());
    println!(
        "register in Consul -> first grpcio call on the new backend, {ROUNDS} rounds, medians: \
         Consul floor {floors:.1?}, first call {landings:.1?}, first call minus floor {excess:.1?}"
    );
}
