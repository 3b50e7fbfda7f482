//! `chi xds` with `orca_weighted_round_robin`: gRPC's own clients weigh the backends by their load
//! reports. The Cluster carries `client_side_weighted_round_robin` (inside `wrr_locality`) with
//! the config's `load_balancer.orca` settings; Python `grpcio` (gRPC's C core) and Node
//! `@grpc/grpc-js-xds` read it, and three gRPC backends on grpc-js (`tests/xds/orca_backends.js`)
//! report utilization 0.2, 0.4 and 0.8 at equal qps: weights 500, 250 and 125, so 4:2:1 of the
//! calls. Reports reach the clients per call (the `endpoint-load-metrics-bin` trailer) and, with
//! `out_of_band: true`, over `OpenRcaService` streams only: there the answers carry no report, so
//! the split shows that the clients were told to open the streams.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Agent, Proc, registration, yaml};
use crate::xds::{Client, Lang, backend_agent, python, start_xds, write_bootstrap, xds_clients};

/// The backends and the utilization each reports.
const BACKENDS: [(&str, f64); 3] = [("b1", 0.2), ("b2", 0.4), ("b3", 0.8)];

/// `orca_backends.js`: grpc-js servers reporting their load (out of band only, or also in each
/// answer); their ports by name.
fn orca_backends(modules: &Path, out_of_band_only: bool) -> (Proc, BTreeMap<String, u16>) {
    let mut cmd = Command::new("node");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xds/orca_backends.js"))
        .args(out_of_band_only.then_some("--out-of-band-only"))
        .args(BACKENDS.iter().map(|(name, u)| format!("{name}={u}")))
        .env("NODE_PATH", modules)
        .stdin(Stdio::piped());
    let mut servers = Proc::spawn(cmd);
    let mut ports = BTreeMap::new();
    for _ in BACKENDS {
        let line = servers.wait_line("a backend line", |l| l.starts_with("backend "));
        let mut words = line.split_whitespace().skip(1);
        let (Some(name), Some(port)) = (words.next(), words.next()) else {
            panic!("bad backend line {line:?}");
        };
        ports.insert(name.to_owned(), port.parse::<u16>().expect("port"));
    }
    (servers, ports)
}

/// 700 calls of `client` split 400 / 200 / 100 (each within 15 %), none failing, once the
/// weights count.
fn weighs_by_reports(what: &str, client: &mut Client) {
    client.until(&format!("{what}: the reports to weigh"), 70, |c| {
        let n = |name: &str| c.get(name).copied().unwrap_or(0);
        n("b1") >= 3 * n("b3") && n("b2") > n("b3")
    });
    // In batches: a client prints each batch's tally, and a slow one must not time out.
    let (mut counts, mut errors) = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..5 {
        let (c, e) = client.call(140);
        c.into_iter()
            .for_each(|(k, n)| *counts.entry(k).or_insert(0) += n);
        e.into_iter()
            .for_each(|(k, n)| *errors.entry(k).or_insert(0) += n);
    }
    eprintln!("{what}, 700 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "{what}: failed calls: {errors:?}");
    for (name, want) in [("b1", 400), ("b2", 200), ("b3", 100)] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (want * 85 / 100..=want * 115 / 100).contains(&n),
            "{what}: {name} got {n} of 700, about {want} expected: {counts:?}"
        );
    }
}

/// The backends, `chi xds` with `orca` as its `load_balancer.orca` block, and each client in turn.
fn scenario(orca: &str, out_of_band_only: bool) {
    let modules = xds_clients("node-path");
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (_servers, ports) = orca_backends(&modules, out_of_band_only);
    let _agents: Vec<Agent> = BACKENDS
        .iter()
        .map(|(name, _)| backend_agent(&url, name, ports[*name], "eu-west-1a"))
        .collect();
    let (_config_dir, config) = yaml(&format!(
        "service_discovery:\n  load_balancer:\n    strategy: \"orca_weighted_round_robin\"\n    orca:\n{orca}"
    ));
    let (_xds, xds_addr) = start_xds(&url, "127.0.0.1:0", Some(&config));
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    for (what, lang) in [
        ("grpcio", Lang::Grpcio(python())),
        ("grpc-js-xds", Lang::GrpcJs(modules.clone())),
    ] {
        let mut client = Client::start(&lang, &bootstrap);
        client.until(&format!("{what}: every backend to answer"), 70, |c| {
            c.len() == 3
        });
        weighs_by_reports(what, &mut client);
    }
}

#[test]
fn grpc_clients_weigh_backends_by_per_call_reports() {
    scenario(
        "      blackout_period: \"0s\"\n      weight_update_period: \"1s\"\n",
        false,
    );
}

#[test]
fn grpc_clients_weigh_backends_by_out_of_band_reports() {
    scenario(
        "      blackout_period: \"0s\"\n      weight_update_period: \"1s\"\n      out_of_band: true\n      oob_reporting_period: \"100ms\"\n",
        true,
    );
}
