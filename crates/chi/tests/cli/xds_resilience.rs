//! `chi xds` hands gRPC's own clients chi's failure handling, and they act on it: with one backend
//! failing every call (`grpc_peer.py`'s `failing` backend, UNAVAILABLE), Python `grpcio` (gRPC's C
//! core) and Node `@grpc/grpc-js-xds` eject it by the Cluster's `outlier_detection` (gRFC A50), and
//! retry its calls on another backend by the route's `retry_policy` (gRFC A44, from
//! `discovery.retry`); with backends that answer slowly, a burst of calls beyond
//! `circuit_breaker.max_requests` is cut at that many in flight (the Cluster's `circuit_breakers`,
//! gRFC A32).

use crate::support::{Agent, registration, yaml};
use crate::xds::{
    Client, Lang, backend_agent, python, serve_backends, start_xds, write_bootstrap, xds_clients,
};

const BACKENDS: [&str; 3] = ["b1", "b2", "failing"];

/// The backends `names` (see `grpc_peer.py`), `chi xds` with `config`, and each real client in
/// turn, handed to `check`.
fn scenario(names: &[&str], config: &str, check: impl Fn(&str, &mut Client)) {
    let modules = xds_clients("node-path");
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (_servers, ports) = serve_backends(names);
    let _agents: Vec<Agent> = names
        .iter()
        .map(|name| backend_agent(&url, name, ports[*name], "eu-west-1a"))
        .collect();
    let (_config_dir, config) = yaml(config);
    let (_xds, xds_addr) = start_xds(&url, "127.0.0.1:0", Some(&config));
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    for (what, lang) in [
        ("grpcio", Lang::Grpcio(python())),
        ("grpc-js-xds", Lang::GrpcJs(modules.clone())),
    ] {
        let mut client = Client::start(&lang, &bootstrap);
        check(what, &mut client);
    }
}

/// Calls until a batch of `n` lands only on the healthy backends, none failing (within 30 s).
fn until_healthy_only(what: &str, client: &mut Client, n: u64) {
    client.until(&format!("{what}: the failing backend ejected"), 30, |c| {
        c.values().sum::<u64>() == n && !c.contains_key("failing")
    });
}

#[test]
fn grpc_clients_eject_a_backend_that_fails_every_call() {
    // No retries: each call the failing backend takes fails, so the clients see it until they
    // eject it (chi's detector: 5 failures; an interval of 1 s; ejected for 30 s).
    let config = "service_discovery:\n  discovery:\n    retry:\n      max_attempts: 1\n";
    scenario(&BACKENDS, config, |what, client| {
        let (counts, errors) = client.call(30);
        eprintln!("{what}, first 30 calls: {counts:?}, errors {errors:?}");
        assert!(
            errors
                .get("UNAVAILABLE")
                .or(errors.get("StatusCode.UNAVAILABLE"))
                .is_some(),
            "{what}: the failing backend takes calls before it is ejected: {counts:?} {errors:?}"
        );
        until_healthy_only(what, client, 30);
        let (counts, errors) = client.call(90);
        eprintln!("{what}, 90 calls after the ejection: {counts:?}, errors {errors:?}");
        assert!(errors.is_empty(), "{what}: failed calls: {errors:?}");
        assert_eq!(
            counts.keys().map(String::as_str).collect::<Vec<_>>(),
            ["b1", "b2"],
            "{what}: {counts:?}"
        );
        for name in ["b1", "b2"] {
            assert!(
                counts[name] >= 30,
                "{what}: {name} got {}: {counts:?}",
                counts[name]
            );
        }
    });
}

#[test]
fn grpc_clients_retry_a_failed_call_on_another_backend() {
    // 3 attempts: a call the failing backend takes is retried on the next one, so none fails,
    // from the first call on (before any ejection, which needs 5 failures and an interval).
    let config = "service_discovery:\n  discovery:\n    retry:\n      max_attempts: 3\n      initial_interval: \"10ms\"\n      max_interval: \"50ms\"\n";
    scenario(&BACKENDS, config, |what, client| {
        let (counts, errors) = client.call(30);
        eprintln!("{what}, first 30 calls: {counts:?}, errors {errors:?}");
        assert!(errors.is_empty(), "{what}: failed calls: {errors:?}");
        assert_eq!(counts.values().sum::<u64>(), 30, "{what}: {counts:?}");
        assert!(!counts.contains_key("failing"), "{what}: {counts:?}");
    });
}

#[test]
fn grpc_clients_hold_calls_in_flight_to_circuit_breaker_max_requests() {
    // Backends answering after 300 ms; 2 calls in flight at most, and no retries.
    let config = "service_discovery:\n  discovery:\n    retry:\n      max_attempts: 1\n  load_balancer:\n    circuit_breaker:\n      max_requests: 2\n";
    scenario(&["slow1", "slow2"], config, |what, client| {
        let (counts, errors) = client.burst(2);
        eprintln!("{what}, 2 calls together: {counts:?}, errors {errors:?}");
        assert!(errors.is_empty(), "{what}: within the limit: {errors:?}");
        assert_eq!(counts.values().sum::<u64>(), 2, "{what}: {counts:?}");
        let (counts, errors) = client.burst(10);
        eprintln!("{what}, 10 calls together: {counts:?}, errors {errors:?}");
        assert_eq!(
            counts.values().sum::<u64>(),
            2,
            "{what}: two answered: {counts:?}"
        );
        let dropped: u64 = errors
            .iter()
            .filter(|(code, _)| code.ends_with("UNAVAILABLE"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            dropped, 8,
            "{what}: the rest dropped as UNAVAILABLE: {errors:?}"
        );
    });
}
