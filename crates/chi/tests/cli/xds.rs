//! `chi xds` with real xDS clients: Python `grpcio` (gRPC's C-core) and Node `@grpc/grpc-js` with
//! `@grpc/grpc-js-xds`, each resolving `xds:///order-service` through `chi xds` and calling real gRPC
//! backends (Python) registered with chi agents: calls spread, follow registrations and
//! deregistrations, survive a restart of `chi xds`, and follow the client's zone with geo routing.
//!
//! The clients come from `scripts/xds-clients` (cached in `${CHI_CACHE:-$HOME/.cache/chi}`); the
//! tests call that script themselves, so a missing client is installed or is a failure, never a
//! skip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Agent, Proc, chi, registration};

pub(crate) const SERVICE: &str = "order-service";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/xds-clients WHAT`: a path it prints (installing the client when missing).
pub(crate) fn xds_clients(what: &str) -> PathBuf {
    let out = Command::new(repo_root().join("scripts/xds-clients"))
        .arg(what)
        .output()
        .expect("run scripts/xds-clients");
    assert!(
        out.status.success(),
        "scripts/xds-clients {what} failed (the chi xds tests need it; CI={}): {}",
        std::env::var("CI").unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "scripts/xds-clients {what}: no {}",
        path.display()
    );
    path
}

/// The venv's python with grpcio.
pub(crate) fn python() -> PathBuf {
    xds_clients("python")
}

/// Which gRPC implementation the client is.
pub(crate) enum Lang {
    /// Python grpcio (the C core), run by this python.
    Grpcio(PathBuf),
    /// Node @grpc/grpc-js + @grpc/grpc-js-xds, from this node_modules.
    GrpcJs(PathBuf),
}

impl Lang {
    fn command(&self) -> Command {
        match self {
            Lang::Grpcio(python) => {
                let mut cmd = Command::new(python);
                cmd.arg(peer_script()).arg("client");
                cmd
            }
            Lang::GrpcJs(modules) => {
                let mut cmd = Command::new("node");
                // grpc-js-xds 1.14 registers client_side_weighted_round_robin only with
                // GRPC_EXPERIMENTAL_XDS_WRR_LB (orca_weighted_round_robin's clusters).
                cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xds/grpc_xds_client.js"))
                    .env("NODE_PATH", modules)
                    .env("GRPC_EXPERIMENTAL_XDS_WRR_LB", "true");
                cmd
            }
        }
    }
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xds/grpc_peer.py")
}

/// An xDS gRPC client, driven over stdin.
pub(crate) struct Client {
    pub(crate) proc: Proc,
}

impl Client {
    pub(crate) fn start(lang: &Lang, bootstrap: &Path) -> Client {
        let mut cmd = lang.command();
        cmd.arg(format!("xds:///{SERVICE}"))
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .stdin(Stdio::piped());
        let mut proc = Proc::spawn(cmd);
        proc.wait_line("the client's ready line", |l| l == "ready");
        Client { proc }
    }

    /// Makes `n` calls; the answers per backend name, and the failures.
    pub(crate) fn call(&mut self, n: u32) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        self.call_version(n, None)
    }

    /// Starts `n` calls 10 ms apart, all in flight together on slow backends; the answers per
    /// backend name, and the failures.
    pub(crate) fn burst(&mut self, n: u32) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let stdin = self.proc.child.stdin.as_mut().expect("client stdin");
        writeln!(stdin, "burst {n}").expect("write to the client");
        stdin.flush().expect("flush");
        let line = self.proc.wait_line("a result line", |l| l.starts_with('{'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON result");
        (tally(&v, "counts"), tally(&v, "errors"))
    }

    /// Makes `n` calls, with `x-service-version: version` when given.
    fn call_version(
        &mut self,
        n: u32,
        version: Option<&str>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let stdin = self.proc.child.stdin.as_mut().expect("client stdin");
        writeln!(stdin, "call {n} {}", version.unwrap_or("")).expect("write to the client");
        stdin.flush().expect("flush");
        let line = self.proc.wait_line("a result line", |l| l.starts_with('{'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON result");
        (tally(&v, "counts"), tally(&v, "errors"))
    }

    /// Starts calling back to back until a call lands on backend `name` (grpcio only); the answer
    /// is read by [`Client::landed`].
    pub(crate) fn start_first(&mut self, name: &str) {
        let stdin = self.proc.child.stdin.as_mut().expect("client stdin");
        writeln!(stdin, "first {name}").expect("write to the client");
        stdin.flush().expect("flush");
    }

    /// The answer to [`Client::start_first`] as soon as the client prints it: whether a call
    /// landed, the answers per backend and the failures.
    pub(crate) fn landed(&mut self) -> (bool, BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let line = self.proc.wait_line("a result line", |l| l.starts_with('{'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON result");
        (
            v["landed"] == true,
            tally(&v, "counts"),
            tally(&v, "errors"),
        )
    }

    /// Calls in batches of `n` until `done` holds for a batch (within 30 s); that batch.
    pub(crate) fn until(
        &mut self,
        what: &str,
        n: u32,
        done: impl Fn(&BTreeMap<String, u64>) -> bool,
    ) -> BTreeMap<String, u64> {
        self.until_version(what, n, None, done)
    }

    /// [`Client::until`] with `x-service-version: version` on the calls.
    fn until_version(
        &mut self,
        what: &str,
        n: u32,
        version: Option<&str>,
        done: impl Fn(&BTreeMap<String, u64>) -> bool,
    ) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (counts, errors) = self.call_version(n, version);
            if done(&counts) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last batch {counts:?}, errors {errors:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `{NAME: calls}` object `key` of a client's result line.
fn tally(v: &serde_json::Value, key: &str) -> BTreeMap<String, u64> {
    v[key]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// An agent registering backend `name` (version v1) at 127.0.0.1:`port` into the host's registry.
pub(crate) fn backend_agent(registry: &str, name: &str, port: u16, zone: &str) -> Agent {
    versioned_agent(registry, name, port, zone, "v1")
}

/// [`backend_agent`] with another version.
fn versioned_agent(registry: &str, name: &str, port: u16, zone: &str, version: &str) -> Agent {
    Agent::start(
        &registration(
            SERVICE,
            port,
            version,
            &format!(
                "    id: \"{name}\"\n    meta:\n      region: \"eu-west-1\"\n      zone: \"{zone}\"\n"
            ),
        ),
        &["--registry", registry],
    )
}

#[test]
fn grpcio_balances_over_what_chi_xds_serves_and_follows_changes() {
    scenario(&Lang::Grpcio(python()));
}

#[test]
fn grpc_js_xds_balances_over_what_chi_xds_serves_and_follows_changes() {
    scenario(&Lang::GrpcJs(xds_clients("node-path")));
}

/// The whole story with one client implementation; the backends are Python gRPC servers.
fn scenario(lang: &Lang) {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();

    // Five gRPC servers in one Python process; three are registered now, the others later.
    let (servers, ports) = serve_backends(&["b1", "b2", "b3", "b4", "b5"]);
    let mut agents: BTreeMap<&str, Agent> = BTreeMap::new();
    for (name, zone) in [
        ("b1", "eu-west-1a"),
        ("b2", "eu-west-1a"),
        ("b3", "eu-west-1b"),
    ] {
        agents.insert(name, backend_agent(&url, name, ports[name], zone));
    }

    let (mut xds, xds_addr) = start_xds(&url, "127.0.0.1:0", None);

    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    let mut client = Client::start(lang, &bootstrap);

    // Calls spread over every registered backend.
    let (counts, errors) = client.call(300);
    eprintln!("three backends, 300 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert_eq!(counts.values().sum::<u64>(), 300);
    for name in ["b1", "b2", "b3"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{name} got {n} of 300: {counts:?}");
    }
    assert!(!counts.contains_key("b4"), "b4 is not registered yet");

    // A newly registered backend gets calls.
    agents.insert("b4", backend_agent(&url, "b4", ports["b4"], "eu-west-1b"));
    client.until("b4 to get calls", 40, |c| c.contains_key("b4"));
    let (counts, errors) = client.call(400);
    eprintln!("after b4 registered, 400 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    for name in ["b1", "b2", "b3", "b4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((70..=130).contains(&n), "{name} got {n} of 400: {counts:?}");
    }

    // A deregistered backend stops getting calls (its agent deregisters on SIGTERM).
    let mut b1 = agents.remove("b1").expect("b1's agent");
    let (ok, _) = b1.proc.terminate();
    assert!(ok, "b1's agent exits cleanly");
    client.until("b1 to get no calls", 40, |c| !c.contains_key("b1"));
    let (counts, errors) = client.call(300);
    eprintln!("after b1 deregistered, 300 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert!(
        !counts.contains_key("b1"),
        "b1 still gets calls: {counts:?}"
    );
    for name in ["b2", "b3", "b4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{name} got {n} of 300: {counts:?}");
    }

    // A restart of chi xds loses no endpoint on the client: calls go on while it is down...
    let (ok, _) = xds.terminate();
    assert!(
        ok,
        "chi xds exits cleanly on SIGTERM, with the client's stream open"
    );
    let (counts, errors) = client.call(300);
    eprintln!("chi xds stopped, 300 calls: {counts:?}, errors {errors:?}");
    assert!(
        errors.is_empty(),
        "failed calls while chi xds is down: {errors:?}"
    );
    for name in ["b2", "b3", "b4"] {
        assert!(
            counts.get(name).copied().unwrap_or(0) > 0,
            "{name}: {counts:?}"
        );
    }
    // ...and once it is back on the same address the client follows changes again.
    let (mut xds, _) = start_xds(&url, &xds_addr, None);
    agents.insert("b1", backend_agent(&url, "b1", ports["b1"], "eu-west-1a"));
    client.until("b1 to get calls again after the restart", 40, |c| {
        c.contains_key("b1")
    });
    let (counts, errors) = client.call(400);
    eprintln!("chi xds restarted, b1 registered again, 400 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    for name in ["b1", "b2", "b3", "b4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((70..=130).contains(&n), "{name} got {n} of 400: {counts:?}");
    }

    // With version routing on, x-service-version: v2 reaches the v2 backend only; no header (or a
    // version nobody has) the default version v1.
    agents.insert(
        "b5",
        versioned_agent(&url, "b5", ports["b5"], "eu-west-1a", "v2"),
    );
    let (_version_dir, version_config) = crate::support::yaml(
        "service_discovery:\n  routing:\n    enable_version_routing: true\n    default_version: \"v1\"\n",
    );
    let (mut version_xds, version_addr) = start_xds(&url, "127.0.0.1:0", Some(&version_config));
    let version_dir = tempfile::tempdir().expect("tempdir");
    let mut versioned = Client::start(
        lang,
        &write_bootstrap(version_dir.path(), &version_addr, "eu-west-1a"),
    );
    versioned.until_version("v2 calls to reach b5", 20, Some("v2"), |c| {
        c.keys().all(|k| k == "b5") && !c.is_empty()
    });
    let (counts, errors) = versioned.call_version(100, Some("v2"));
    eprintln!("version routing, x-service-version v2, 100 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert_eq!(counts.get("b5"), Some(&100), "{counts:?}");
    let (counts, errors) = versioned.call(400);
    eprintln!("version routing, no header, 400 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert!(!counts.contains_key("b5"), "the default is v1: {counts:?}");
    for name in ["b1", "b2", "b3", "b4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((70..=130).contains(&n), "{name} got {n} of 400: {counts:?}");
    }
    let (counts, errors) = versioned.call_version(100, Some("v9"));
    eprintln!("version routing, x-service-version v9, 100 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert!(
        !counts.contains_key("b5"),
        "an unknown version goes to v1: {counts:?}"
    );
    drop(versioned);
    let (ok, _) = version_xds.terminate();
    assert!(ok, "chi xds (versions) exits cleanly on SIGTERM");
    let mut b5 = agents.remove("b5").expect("b5's agent");
    let (ok, _) = b5.proc.terminate();
    assert!(ok, "b5's agent exits cleanly");

    // With geo routing on, a client gets its own zone first and fails over to the next.
    let (_config_dir, config) = crate::support::yaml(
        "service_discovery:\n  routing:\n    enable_geo_routing: true\n    regions:\n      eu-west-1: [\"eu-west-1a\", \"eu-west-1b\"]\n",
    );
    let (mut geo_xds, geo_addr) = start_xds(&url, "127.0.0.1:0", Some(&config));
    let geo_dir = tempfile::tempdir().expect("tempdir");
    let mut zone_b = Client::start(
        lang,
        &write_bootstrap(geo_dir.path(), &geo_addr, "eu-west-1b"),
    );
    let (counts, errors) = zone_b.call(300);
    eprintln!("geo routing, a client in eu-west-1b, 300 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["b3", "b4"],
        "zone b only: {counts:?}"
    );
    for name in ["b3", "b4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (100..=200).contains(&n),
            "{name} got {n} of 300: {counts:?}"
        );
    }
    for name in ["b3", "b4"] {
        let mut agent = agents.remove(name).expect("agent");
        let (ok, _) = agent.proc.terminate();
        assert!(ok, "{name}'s agent exits cleanly");
    }
    client_failover(&mut zone_b);

    drop((client, zone_b));
    let (ok, _) = geo_xds.terminate();
    assert!(ok, "chi xds (geo) exits cleanly on SIGTERM");
    let (ok, _) = xds.terminate();
    assert!(ok, "chi xds exits cleanly on SIGTERM");
    drop(servers);
}

/// Once zone b is empty, the zone-b client's calls go to zone a (priority 1).
fn client_failover(client: &mut Client) {
    client.until("zone b's client to fail over to zone a", 40, |c| {
        c.keys().all(|k| k == "b1" || k == "b2") && !c.is_empty()
    });
    let (counts, errors) = client.call(300);
    eprintln!("zone b emptied, 300 calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    for name in ["b1", "b2"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (100..=200).contains(&n),
            "{name} got {n} of 300: {counts:?}"
        );
    }
}

/// Python gRPC backends in one process, one per name (answering that name); their ports by name.
/// They serve until the returned process is dropped.
pub(crate) fn serve_backends(names: &[&str]) -> (Proc, BTreeMap<String, u16>) {
    let mut cmd = Command::new(python());
    cmd.arg(peer_script())
        .arg("serve")
        .args(names)
        .stdin(Stdio::piped());
    let mut servers = Proc::spawn(cmd);
    let mut ports = BTreeMap::new();
    for _ in names {
        let line = servers.wait_line("a backend line", |l| l.starts_with("backend "));
        let mut words = line.split_whitespace().skip(1);
        let (Some(name), Some(port)) = (words.next(), words.next()) else {
            panic!("bad backend line {line:?}");
        };
        ports.insert(name.to_owned(), port.parse::<u16>().expect("port"));
    }
    (servers, ports)
}

/// `chi xds --registry REGISTRY --listen LISTEN [-c CONFIG]`, serving; and its address.
pub(crate) fn start_xds(registry: &str, listen: &str, config: Option<&Path>) -> (Proc, String) {
    start_xds_with(registry, listen, config, &[])
}

/// [`start_xds`] with more arguments.
pub(crate) fn start_xds_with(
    registry: &str,
    listen: &str,
    config: Option<&Path>,
    args: &[&str],
) -> (Proc, String) {
    let mut cmd = chi();
    cmd.args(["xds", "--registry", registry, "--listen", listen]);
    if let Some(config) = config {
        cmd.arg("-c").arg(config);
    }
    cmd.args(args);
    let mut xds = Proc::spawn(cmd);
    let line = xds.wait_line("the xds address", |l| l.starts_with("xds on grpc://"));
    let addr = line.trim_start_matches("xds on grpc://").trim().to_owned();
    (xds, addr)
}

/// Asserts that `counts` (of `total` calls) went to exactly `names`, each within 30 % of an even
/// share, and that no call failed.
pub(crate) fn assert_spread(
    what: &str,
    (counts, errors): &(BTreeMap<String, u64>, BTreeMap<String, u64>),
    names: &[&str],
    total: u64,
) {
    eprintln!("{what}, {total} calls: {counts:?}, errors {errors:?}");
    assert!(errors.is_empty(), "{what}: failed calls: {errors:?}");
    assert_eq!(counts.values().sum::<u64>(), total, "{what}: {counts:?}");
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        names,
        "{what}: the backends that answered"
    );
    let share = total / names.len() as u64;
    for name in names {
        let n = counts.get(*name).copied().unwrap_or(0);
        assert!(
            (share * 7 / 10..=share * 13 / 10).contains(&n),
            "{what}: {name} got {n} of {total}: {counts:?}"
        );
    }
}

/// A gRPC bootstrap file for a client in `zone` of eu-west-1, talking to `chi xds` at `server`.
pub(crate) fn write_bootstrap(dir: &Path, server: &str, zone: &str) -> PathBuf {
    let insecure = serde_json::json!({"type": "insecure"});
    write_bootstrap_as(dir, "bootstrap.json", server, zone, insecure)
}

/// [`write_bootstrap`] to `dir/name`, reaching the server with `channel_creds` (one entry).
pub(crate) fn write_bootstrap_as(
    dir: &Path,
    name: &str,
    server: &str,
    zone: &str,
    channel_creds: serde_json::Value,
) -> PathBuf {
    let path = dir.join(name);
    let json = serde_json::json!({
        "xds_servers": [{
            "server_uri": server,
            "channel_creds": [channel_creds],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": format!("chi-test-client-{zone}"), "locality": {"region": "eu-west-1", "zone": zone}},
    });
    std::fs::write(&path, json.to_string()).expect("write the bootstrap");
    path
}
