//! Who may use an agent's registry API, with real clients: curl, `chi discover`, and other `chi
//! agent`s registering through `chi://` with a token; the loopback rule (`--insecure`); what a
//! proxy's admin port and an agent fronting another registry refuse.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::proxy::start_proxy_config;
use crate::support::{Agent, Proc, chi, discover_json, eventually, ids, registration, yaml};

const WRITE: &str = "write-token-0123456789";
const READ: &str = "read-token-0123456789";
const ORDERS: &str = "orders-token-0123456789";

/// A `chi agent` started with `config`, `args` and `envs`, stderr to a file; its admin address.
struct Running {
    proc: Proc,
    admin: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _config: (tempfile::TempDir, PathBuf),
}

impl Running {
    fn start(config: &str, args: &[&str], envs: &[(&str, &str)]) -> Running {
        let file = yaml(config);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let mut cmd = agent_command(&file.1, args, envs);
        cmd.args(["--admin", "127.0.0.1:0"]);
        let mut proc =
            Proc::spawn_with_stderr(cmd, Stdio::from(std::fs::File::create(&log).expect("log")));
        let line = proc.wait_line("the admin address", |l| l.contains("admin on http://"));
        let admin = line
            .rsplit("http://")
            .next()
            .expect("addr")
            .trim()
            .to_owned();
        Running {
            proc,
            admin,
            log,
            _dir: dir,
            _config: file,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn agent_command(config: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = chi();
    cmd.arg("agent").arg("-c").arg(config).args(args);
    for k in [
        "CHI_AGENT_TOKEN",
        "CHI_AGENT_READ_TOKEN",
        "CHI_AGENT_WRITE_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(envs.iter().copied());
    cmd
}

/// `curl -X METHOD url` with an optional bearer token and JSON body: the status and body.
fn curl(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        url,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data", b]);
    }
    let out = cmd.output().expect("curl runs");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

fn instance(name: &str, id: &str) -> String {
    format!(r#"{{"id":"{id}","name":"{name}","address":"127.0.0.1","port":1}}"#)
}

const SCOPES: &str = "  agent:\n    write_scopes:\n      - token: \"orders-token-0123456789\"\n        services: [\"orders-*\"]\n";

#[test]
fn agent_tokens_guard_the_registry_api_for_curl_and_chi_clients() {
    let config = format!("{}{SCOPES}", registration("registry-host", 1, "v1", ""));
    let host = Running::start(
        &config,
        &[],
        &[
            ("CHI_AGENT_WRITE_TOKEN", WRITE),
            ("CHI_AGENT_READ_TOKEN", READ),
        ],
    );
    let base = format!("http://{}", host.admin);
    let url = format!("chi://{}", host.admin);
    let own = "registry-host-127.0.0.1-1";

    // curl: no token or a wrong one is 401 with a JSON body; reads need the read token.
    let (status, body) = curl("GET", &format!("{base}/v1/services"), None, None);
    assert_eq!(status, 401, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["error"], "unauthorized", "{body}");
    assert_eq!(
        curl("GET", &format!("{base}/v1/services"), Some("wrong"), None).0,
        401
    );
    let (status, body) = curl("GET", &format!("{base}/v1/services"), Some(READ), None);
    assert_eq!((status, body.as_str()), (200, "[\"registry-host\"]"));
    // The read token may not write; nothing changes.
    let own_url = format!("{base}/v1/services/registry-host/instances/{own}");
    let (status, body) = curl("DELETE", &own_url, Some(READ), None);
    assert_eq!(status, 403, "{body}");
    let (status, _) = curl("DELETE", &own_url, Some(ORDERS), None);
    assert_eq!(
        status, 403,
        "a scope of orders-* may not remove registry-host"
    );
    let put = format!("{base}/v1/services/orders-api/instances/o-1");
    let (status, _) = curl("PUT", &put, None, Some(&instance("orders-api", "o-1")));
    assert_eq!(status, 401);
    // Health is open (probes), and so are the metrics; the console needs the read token.
    assert_eq!(curl("GET", &format!("{base}/health"), None, None).0, 200);
    assert_eq!(
        curl("GET", &format!("{base}/ui/api/state"), None, None).0,
        401
    );

    // chi discover through chi://: refused without CHI_AGENT_TOKEN, served with it.
    let out = chi()
        .args(["discover", "registry-host", "--registry", &url])
        .env_remove("CHI_AGENT_TOKEN")
        .output()
        .expect("discover");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    let out = chi()
        .args([
            "discover",
            "registry-host",
            "-o",
            "json",
            "--registry",
            &url,
        ])
        .env("CHI_AGENT_TOKEN", READ)
        .output()
        .expect("discover");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ids(&listed), [own]);

    // Agents registering through chi:// with the scoped token: in scope it registers, out of
    // scope the host refuses it (403) and it never appears.
    let orders = Running::start(
        &registration("orders-api", 2, "v1", ""),
        &["--registry", &url],
        &[("CHI_AGENT_TOKEN", ORDERS)],
    );
    let billing = Running::start(
        &registration("billing", 3, "v1", ""),
        &["--registry", &url],
        &[("CHI_AGENT_TOKEN", ORDERS)],
    );
    eventually("billing's agent to be refused", || {
        billing.stderr().contains("403")
    });
    assert!(
        billing
            .stderr()
            .contains("may not write service \\\"billing\\\""),
        "{}",
        billing.stderr()
    );
    let (status, body) = curl("GET", &format!("{base}/v1/services"), Some(WRITE), None);
    assert_eq!(status, 200);
    let mut names: Vec<String> = serde_json::from_str(&body).expect("names");
    names.sort();
    assert_eq!(names, ["orders-api", "registry-host"]);
    drop((orders, billing));

    // Every refusal was counted, by reason.
    let (_, metrics) = curl("GET", &format!("{base}/metrics"), None, None);
    for reason in ["missing", "invalid", "scope"] {
        let prefix = format!("chi_agent_auth_refusals_total{{reason=\"{reason}\"}} ");
        assert!(metrics.contains(&prefix), "{reason}: {metrics}");
    }
    // The tokens appear nowhere in what the agent printed.
    let printed = format!("{:?}{}", host.proc.seen, host.stderr());
    for t in [WRITE, READ, ORDERS] {
        assert!(!printed.contains(t), "{printed}");
    }
}

#[test]
fn agent_refuses_a_wide_address_without_a_write_token_unless_insecure() {
    let config = yaml(&registration("wide", 4, "v1", ""));
    let out = agent_command(&config.1, &["--admin", "0.0.0.0:0"], &[])
        .output()
        .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the registry API on 0.0.0.0:0 without a write token"),
        "{err}"
    );
    assert!(
        err.contains("CHI_AGENT_WRITE_TOKEN") && err.contains("--insecure"),
        "{err}"
    );

    for (args, envs, warns) in [
        (&["--insecure"][..], &[][..], true),
        (&[][..], &[("CHI_AGENT_WRITE_TOKEN", WRITE)][..], false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let mut cmd = agent_command(&config.1, args, envs);
        cmd.args(["--admin", "0.0.0.0:0"]);
        let mut proc =
            Proc::spawn_with_stderr(cmd, Stdio::from(std::fs::File::create(&log).expect("log")));
        proc.wait_line("the admin address", |l| l.contains("admin on http://"));
        let err = std::fs::read_to_string(&log).expect("stderr");
        assert_eq!(
            err.contains("WARNING: --insecure"),
            warns,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn proxy_admin_takes_no_registry_writes() {
    let host = Agent::start(&registration("web", 5, "v1", ""), &[]);
    let id = "web-127.0.0.1-5";
    let proxy = start_proxy_config(
        "service_discovery:\n  load_balancer:\n    strategy: \"round_robin\"\n",
        &host.url(),
        &[],
    );
    let admin = format!("http://{}", proxy.admin);
    let path = format!("{admin}/v1/services/web/instances/{id}");
    for (method, body) in [
        ("DELETE", None),
        ("PUT", Some(instance("web", id))),
        ("POST", Some(instance("web", id))),
    ] {
        let (status, text) = curl(method, &path, None, body.as_deref());
        assert!(status == 404 || status == 405, "{method}: {status} {text}");
    }
    assert_eq!(
        curl("GET", &format!("{admin}/v1/services"), None, None).0,
        404
    );
    // Nothing changed behind it; the admin port still serves what it says.
    assert_eq!(ids(&discover_json(&host.url(), "web", &[])), [id]);
    assert_eq!(curl("GET", &format!("{admin}/health"), None, None).0, 200);
    assert_eq!(curl("GET", &format!("{admin}/metrics"), None, None).0, 200);
}

#[test]
fn agent_fronting_another_registry_forwards_writes_only_when_told() {
    let host = Agent::start(&registration("registry-host", 6, "v1", ""), &[]);
    let url = host.url();
    let put = |admin: &str, token: Option<&str>| {
        curl(
            "PUT",
            &format!("http://{admin}/v1/services/other/instances/other-1"),
            token,
            Some(&instance("other", "other-1")),
        )
    };

    // By default: reads pass through, writes are refused and never reach the host.
    let front = Running::start(
        &registration("front", 7, "v1", ""),
        &["--registry", &url],
        &[],
    );
    let (status, body) = put(&front.admin, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forward_writes"), "{body}");
    assert!(discover_json(&url, "other", &[]).is_empty());
    let (status, _) = curl(
        "GET",
        &format!("http://{}/v1/services/registry-host", front.admin),
        None,
        None,
    );
    assert_eq!(status, 200);

    // forward_writes without a write token: refused at start, unless --insecure.
    let forward = format!(
        "{}  agent:\n    forward_writes: true\n",
        registration("front", 8, "v1", "")
    );
    let file = yaml(&forward);
    let out = agent_command(
        &file.1,
        &["--registry", &url, "--admin", "127.0.0.1:0"],
        &[],
    )
    .output()
    .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service_discovery.agent.forward_writes: needs a write token"),
        "{err}"
    );

    // With a write token: forwarded for its holder only.
    let front = Running::start(
        &forward,
        &["--registry", &url],
        &[("CHI_AGENT_WRITE_TOKEN", WRITE)],
    );
    assert_eq!(put(&front.admin, None).0, 401);
    assert!(discover_json(&url, "other", &[]).is_empty());
    let (status, body) = put(&front.admin, Some(WRITE));
    assert_eq!(status, 204, "{body}");
    assert_eq!(ids(&discover_json(&url, "other", &[])), ["other-1"]);
}
