//! `load_balancer.health_check_enabled` through `chi xds` to a real gRPC client (Python grpcio):
//! two gRPC backends, one of them unhealthy by its registration's check (a `grpc.health.v1`
//! probe the backend does not serve) while it answers calls. With checks on (the default), the
//! client calls only the healthy one; with `health_check_enabled: false`, it calls both, as chi's
//! own balancers then do.

use std::collections::BTreeMap;

use crate::support::{Agent, discover_json, eventually, registration, yaml};
use crate::xds::{
    Client, Lang, SERVICE, assert_spread, backend_agent, python, serve_backends, start_xds,
    write_bootstrap,
};

#[test]
fn health_check_enabled_false_lets_grpc_clients_call_unhealthy_backends() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (_servers, ports) = serve_backends(&["up", "down"]);
    let mut agents: BTreeMap<&str, Agent> = BTreeMap::new();
    agents.insert("up", backend_agent(&url, "up", ports["up"], "eu-west-1a"));
    // `down` answers calls, but its check asks for grpc.health.v1, which it does not serve.
    agents.insert(
        "down",
        Agent::start(
            &registration(
                SERVICE,
                ports["down"],
                "v1",
                &format!(
                    "    id: \"down\"\n    meta:\n      region: \"eu-west-1\"\n      zone: \"eu-west-1a\"\n    health_check:\n      grpc: \"{SERVICE}\"\n      interval: \"500ms\"\n      timeout: \"300ms\"\n"
                ),
            ),
            &["--registry", &url],
        ),
    );
    eventually("down to be registered unhealthy beside up", || {
        let list = discover_json(&url, SERVICE, &[]);
        let health = |id: &str| {
            list.iter()
                .find(|i| i["id"] == id)
                .map(|i| i["health"].as_str().unwrap_or_default().to_owned())
        };
        health("down").as_deref() == Some("unhealthy") && health("up").is_some()
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let lang = Lang::Grpcio(python());

    // Checks on (the default): the unhealthy backend gets no call.
    let (mut on_xds, on_addr) = start_xds(&url, "127.0.0.1:0", None);
    let on_dir = dir.path().join("on");
    std::fs::create_dir(&on_dir).expect("mkdir");
    let mut on = Client::start(&lang, &write_bootstrap(&on_dir, &on_addr, "eu-west-1a"));
    on.until("up to get calls", 20, |c| c.contains_key("up"));
    assert_spread("checks on", &on.call(200), &["up"], 200);

    // Checks off: both get calls.
    let (_off_dir, off_config) =
        yaml("service_discovery:\n  load_balancer:\n    health_check_enabled: false\n");
    let (mut off_xds, off_addr) = start_xds(&url, "127.0.0.1:0", Some(&off_config));
    let client_dir = dir.path().join("off");
    std::fs::create_dir(&client_dir).expect("mkdir");
    let mut off = Client::start(
        &lang,
        &write_bootstrap(&client_dir, &off_addr, "eu-west-1a"),
    );
    off.until("down to get calls", 20, |c| c.len() == 2);
    assert_spread("checks off", &off.call(400), &["down", "up"], 400);

    drop((on, off));
    for xds in [&mut on_xds, &mut off_xds] {
        let (ok, _) = xds.terminate();
        assert!(ok, "chi xds exits cleanly on SIGTERM");
    }
    drop(agents);
}
