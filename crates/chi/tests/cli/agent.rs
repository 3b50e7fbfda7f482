//! `chi agent`, `chi discover` and `chi watch` against an agent's embedded registry.

use serde_json::Value;

use crate::support::{
    Agent, Proc, chi, closed_port, discover_json, eventually, http_get, http_server, ids,
    registration, run, stderr,
};

fn health_check(kind: &str, target: &str) -> String {
    format!(
        "    health_check:\n      {kind}: \"{target}\"\n      interval: \"100ms\"\n      timeout: \"50ms\"\n"
    )
}

#[test]
fn agent_registers_and_deregisters_on_sigterm() {
    let host = Agent::start(&registration("registry-host", 19001, "v1", ""), &[]);
    let url = host.url();
    let mut b = Agent::start(
        &registration("user-service", 19002, "v1", ""),
        &["--registry", &url],
    );
    assert_eq!(
        ids(&discover_json(&url, "user-service", &[])),
        ["user-service-127.0.0.1-19002"]
    );

    let (ok, rest) = b.proc.terminate();
    assert!(
        ok,
        "agent exits 0 after deregistering; stdout {:?}",
        b.proc.seen
    );
    assert!(
        rest.iter()
            .any(|l| l.starts_with("deregistered user-service-127.0.0.1-19002")),
        "{rest:?}"
    );
    assert!(discover_json(&url, "user-service", &[]).is_empty());

    // The host agent deregisters itself too.
    let mut host = host;
    let (ok, rest) = host.proc.terminate();
    assert!(ok);
    assert!(
        rest.iter()
            .any(|l| l.starts_with("deregistered registry-host"))
    );
}

#[test]
fn discover_json_parses_and_matches_filters() {
    let backend = http_server(200);
    let host = Agent::start(
        &registration(
            "user-service",
            backend,
            "v1.0.0",
            &format!(
                "    tags: [\"api\", \"v1\"]\n    meta:\n      region: \"us-east-1\"\n    weight: 5\n{}",
                health_check("http", "/health")
            ),
        ),
        &[],
    );
    let url = host.url();
    let dead = closed_port();
    let _sick = Agent::start(
        &registration(
            "user-service",
            dead,
            "v2.0.0",
            &format!(
                "    tags: [\"api\", \"v2\"]\n    meta:\n      region: \"us-west-2\"\n{}",
                health_check("tcp", &format!("127.0.0.1:{dead}"))
            ),
        ),
        &["--registry", &url],
    );
    let good = format!("user-service-127.0.0.1-{backend}");
    let bad = format!("user-service-127.0.0.1-{dead}");

    // Health reaches the registry through the keep-alives.
    eventually("both health checks to settle", || {
        let all = discover_json(&url, "user-service", &[]);
        all.len() == 2
            && all
                .iter()
                .any(|i| i["id"] == good.as_str() && i["health"] == "healthy")
            && all
                .iter()
                .any(|i| i["id"] == bad.as_str() && i["health"] == "unhealthy")
    });

    let all = discover_json(&url, "user-service", &[]);
    let first = all
        .iter()
        .find(|i| i["id"] == good.as_str())
        .expect("the good instance");
    let mut keys: Vec<&str> = first
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "address", "health", "id", "meta", "name", "port", "tags", "version", "weight"
        ]
    );
    assert_eq!(first["name"], "user-service");
    assert_eq!(first["version"], "v1.0.0");
    assert_eq!(first["address"], "127.0.0.1");
    assert_eq!(first["port"], backend);
    assert_eq!(first["tags"], serde_json::json!(["api", "v1"]));
    assert_eq!(first["meta"]["region"], "us-east-1");
    assert_eq!(first["weight"], 5);

    assert_eq!(
        ids(&discover_json(&url, "user-service", &["--tag", "v1"])),
        [good.as_str()]
    );
    assert_eq!(
        ids(&discover_json(
            &url,
            "user-service",
            &["--meta", "region=us-west-2"]
        )),
        [bad.as_str()]
    );
    assert_eq!(
        ids(&discover_json(&url, "user-service", &["--healthy"])),
        [good.as_str()]
    );
    assert!(discover_json(&url, "user-service", &["--tag", "api", "--tag", "nope"]).is_empty());

    // The table names both.
    let out = run(&["discover", "user-service", "--registry", &url]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&good) && table.contains(&bad), "{table}");

    // A bad --meta is bad input.
    let out = run(&[
        "discover",
        "user-service",
        "--registry",
        &url,
        "--meta",
        "novalue",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("KEY=VALUE"));
}

/// `chi watch NAME -o json` on `registry`, and its first line (the reset).
fn watch_json(registry: &str, name: &str) -> (Proc, Value) {
    let mut cmd = chi();
    cmd.args(["watch", name, "-o", "json", "--registry", registry]);
    let mut watch = Proc::spawn(cmd);
    let reset =
        serde_json::from_str(&watch.wait_line("reset", |l| l.contains("\"reset\""))).expect("json");
    (watch, reset)
}

#[test]
fn watch_sees_a_change() {
    let host = Agent::start(&registration("orders", 19011, "v1", ""), &[]);
    let url = host.url();
    let (mut watch, reset) = watch_json(&url, "orders");
    assert_eq!(reset["type"], "reset");
    assert_eq!(reset["instances"][0]["id"], "orders-127.0.0.1-19011");

    let mut second = Agent::start(
        &registration("orders", 19012, "v2", ""),
        &["--registry", &url],
    );
    let added: Value =
        serde_json::from_str(&watch.wait_line("added", |l| l.contains("\"added\""))).expect("json");
    assert_eq!(added["instance"]["id"], "orders-127.0.0.1-19012");
    assert_eq!(added["instance"]["version"], "v2");

    let (ok, _) = second.proc.terminate();
    assert!(ok);
    let removed: Value =
        serde_json::from_str(&watch.wait_line("removed", |l| l.contains("\"removed\"")))
            .expect("json");
    assert_eq!(removed["instance"]["id"], "orders-127.0.0.1-19012");

    let (ok, _) = watch.terminate();
    assert!(ok, "watch exits 0 on SIGTERM");
}

/// When the agent goes away the watch says so once, opens again when it is back, and resyncs
/// with a reset of what the new agent holds.
#[test]
fn watch_follows_an_agent_restart() {
    let mut host = Agent::start(&registration("payments", 19031, "v1", ""), &[]);
    let admin = host.admin.clone();
    let url = host.url();
    let (mut watch, reset) = watch_json(&url, "payments");
    assert_eq!(reset["instances"][0]["id"], "payments-127.0.0.1-19031");

    // The agent deregisters and goes (the removal may or may not reach the watch first).
    let (ok, _) = host.proc.terminate();
    assert!(ok);

    let _back = Agent::start_on(&admin, &registration("payments", 19032, "v2", ""), &[]);
    let reset: Value = serde_json::from_str(&watch.wait_line("reset after the restart", |l| {
        l.contains("\"reset\"") && l.contains("19032")
    }))
    .expect("json");
    assert_eq!(reset["instances"][0]["id"], "payments-127.0.0.1-19032");
    assert_eq!(reset["instances"].as_array().map(Vec::len), Some(1));
    let (ok, _) = watch.terminate();
    assert!(ok, "watch exits 0 on SIGTERM");
}

#[test]
fn agent_serves_health_and_metrics() {
    let host = Agent::start(&registration("metered", 19021, "v1", ""), &[]);
    let (status, body) = http_get(&host.admin, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    let (status, body) = http_get(&host.admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("chi_agent_registered{service=\"metered\",backend=\"memory\"} 1"),
        "{body}"
    );
    assert!(body.contains("chi_registration_registered{"), "{body}");
}

#[test]
fn commands_on_the_embedded_registry_alone_explain_themselves() {
    for args in [&["discover", "x"][..], &["watch", "x"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("hint: ") && err.contains("chi://"), "{err}");
    }
    let out = run(&["discover", "x", "--registry", "chi://nohost"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["discover", "x", "--registry", "eureka://h:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("hint:"));
}

#[test]
fn agent_without_a_registration_is_bad_input() {
    let (_dir, path) = crate::support::yaml("service_discovery: {}\n");
    let out = chi()
        .args(["agent", "--admin", "127.0.0.1:0", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("registration"));
}
