//! `chi xds` serving ADS over TLS (`--tls-cert`, `--tls-key`) and mTLS (`--tls-client-ca`) to
//! grpcio, whose bootstrap reaches it with `tls` channel credentials (gRFC A65: `ca_certificate_file`,
//! `certificate_file`, `private_key_file`): a client that trusts chi's CA (and, under mTLS, holds a
//! certificate the client CA signed) gets endpoints and calls the backends; any other gets nothing.
//! Certificates made here with rcgen (the helpers of the agent's TLS tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::agent_tls::{Ca, write};
use crate::support::{Agent, Proc, chi, registration};
use crate::xds::{
    Client, Lang, assert_spread, backend_agent, python, serve_backends, write_bootstrap_as,
};

/// The world of one test: a registry host, two registered backends, and the certificates.
struct World {
    _host: Agent,
    _servers: Proc,
    _backends: Vec<Agent>,
    url: String,
    dir: tempfile::TempDir,
    ca: Ca,
    /// chi xds's certificate and key, signed by `ca`.
    server: (PathBuf, PathBuf),
}

fn world() -> World {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (servers, ports) = serve_backends(&["b1", "b2"]);
    let backends = ["b1", "b2"]
        .iter()
        .map(|name| backend_agent(&url, name, ports[*name], "eu-west-1a"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("chi xds test CA");
    let (cert, key) = ca.leaf(true);
    let server = (
        write(dir.path(), "xds.pem", &cert),
        write(dir.path(), "xds-key.pem", &key),
    );
    World {
        _host: host,
        _servers: servers,
        _backends: backends,
        url,
        dir,
        ca,
        server,
    }
}

/// `chi xds` over TLS (mTLS with `client_ca`): the process and its address.
fn start_tls_xds(world: &World, client_ca: Option<&Path>) -> (Proc, String) {
    let mut cmd = chi();
    cmd.args(["xds", "--registry", &world.url, "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&world.server.0)
        .arg("--tls-key")
        .arg(&world.server.1);
    if let Some(ca) = client_ca {
        cmd.arg("--tls-client-ca").arg(ca);
    }
    let mut xds = Proc::spawn(cmd);
    let line = xds.wait_line("the xds address", |l| l.starts_with("xds on grpcs://"));
    let addr = line.trim_start_matches("xds on grpcs://").trim().to_owned();
    (xds, addr)
}

/// A grpcio client whose bootstrap reaches `addr` with `tls` channel credentials trusting `ca`
/// and presenting `cert` (certificate and key) when given; the answers of `n` calls.
fn calls(
    world: &World,
    name: &str,
    addr: &str,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    n: u32,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut config = serde_json::json!({"ca_certificate_file": ca});
    if let Some((cert, key)) = cert {
        config["certificate_file"] = serde_json::json!(cert);
        config["private_key_file"] = serde_json::json!(key);
    }
    let creds = serde_json::json!({"type": "tls", "config": config});
    let bootstrap = write_bootstrap_as(world.dir.path(), name, addr, "eu-west-1a", creds);
    Client::start(&Lang::Grpcio(python()), &bootstrap).call(n)
}

/// Nothing answered: no endpoints reached the client.
fn assert_nothing(what: &str, (counts, errors): &(BTreeMap<String, u64>, BTreeMap<String, u64>)) {
    eprintln!("{what}: {counts:?}, errors {errors:?}");
    assert!(counts.is_empty(), "{what}: calls landed: {counts:?}");
    assert!(!errors.is_empty(), "{what}: no call failed either");
}

#[test]
fn grpcio_reaches_chi_xds_over_tls_only_when_it_trusts_its_ca() {
    let world = world();
    let (_xds, addr) = start_tls_xds(&world, None);
    let ca = write(world.dir.path(), "ca.pem", &world.ca.pem);
    let trusted = calls(&world, "trusting.json", &addr, &ca, None, 200);
    assert_spread("a client trusting chi's CA", &trusted, &["b1", "b2"], 200);

    let other = write(world.dir.path(), "other-ca.pem", &Ca::new("another CA").pem);
    let stranger = calls(&world, "other.json", &addr, &other, None, 2);
    assert_nothing("a client trusting another CA", &stranger);
}

#[test]
fn grpcio_reaches_chi_xds_over_mtls_only_with_a_certificate_the_client_ca_signed() {
    let world = world();
    let dir = world.dir.path();
    let ca = write(dir, "ca.pem", &world.ca.pem);
    let (cert, key) = world.ca.leaf(false);
    let client = (
        write(dir, "client.pem", &cert),
        write(dir, "client-key.pem", &key),
    );
    let stranger = Ca::new("another CA");
    let (cert, key) = stranger.leaf(false);
    let stray = (
        write(dir, "stray.pem", &cert),
        write(dir, "stray-key.pem", &key),
    );
    let (_xds, addr) = start_tls_xds(&world, Some(&ca));

    let with = calls(
        &world,
        "with.json",
        &addr,
        &ca,
        Some((&client.0, &client.1)),
        200,
    );
    assert_spread("a client with a certificate", &with, &["b1", "b2"], 200);

    let without = calls(&world, "without.json", &addr, &ca, None, 2);
    assert_nothing("a client without a certificate", &without);
    let stray = calls(
        &world,
        "stray.json",
        &addr,
        &ca,
        Some((&stray.0, &stray.1)),
        2,
    );
    assert_nothing("a client with a certificate another CA signed", &stray);
}

#[test]
fn chi_xds_refuses_a_certificate_it_cannot_read_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write(dir.path(), "key.pem", "not a key");
    let out = chi()
        .args(["xds", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("missing.pem"))
        .arg("--tls-key")
        .arg(&key)
        .output()
        .expect("chi xds");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let out = chi()
        .args(["xds", "--tls-key"])
        .arg(&key)
        .output()
        .expect("chi xds");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--tls-cert"),
        "{stderr}"
    );
}
