//! The console at `/ui`, in a real browser: headless Chromium (Debian's `chromium`), driven by
//! Node's `playwright-core` (`tests/console/drive.js`), both installed by `scripts/browser`
//! (a missing one is installed, or is a failure: never a skip). Each test starts the real
//! binaries, changes what they see (registrations through the agent's API, requests through
//! the proxy, an xDS client) while the page is open, and asserts what the page shows. The
//! screenshots are saved on the way (into `docs/console/`, which the README shows, with
//! `CHI_SCREENSHOTS=docs/console`).

mod drive;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Agent, Proc, chi, closed_port, http_get, http_server, registration};
use drive::{Browser, Fleet, heavy, shot};

fn zone(zone: &str, version: &str, weight: u32) -> Value {
    json!({"version": version, "weight": weight, "meta": {"region": "eu-west-1", "zone": zone}})
}

#[test]
fn agent_console_follows_instances_live_filters_and_refuses_writes() {
    let _heavy = heavy();
    let closed = closed_port();
    // The agent's own registration fails its check: the page must say why.
    let config = registration(
        "console-agent",
        closed,
        "v3",
        "    meta:\n      region: \"eu-west-1\"\n      zone: \"eu-west-1a\"\n    health_check:\n      http: \"/health\"\n      interval: \"500ms\"\n      timeout: \"300ms\"\n",
    );
    let agent = Agent::start(&config, &[]);
    let fleet = Fleet::new(&agent.admin);
    fleet.add(
        "checkout",
        "c1",
        7001,
        "healthy",
        zone("eu-west-1a", "v2", 2),
    );
    fleet.add(
        "checkout",
        "c2",
        7002,
        "healthy",
        zone("eu-west-1b", "v1", 1),
    );
    fleet.add(
        "checkout",
        "c3",
        7003,
        "unhealthy",
        zone("eu-west-1b", "v1", 1),
    );
    fleet.add(
        "payments",
        "p1",
        7101,
        "healthy",
        zone("eu-west-1a", "v1", 1),
    );

    let mut b = Browser::start();
    let url = format!("http://{}/ui", agent.admin);
    let opened = b.run(json!({"cmd": "open", "url": url}));
    assert_eq!(opened["title"], "chi agent console");
    let own = format!("console-agent/console-agent-127.0.0.1-{closed}");
    b.run(json!({"cmd": "waitRow", "key": own, "health": "unhealthy"}));
    b.run(json!({"cmd": "waitRow", "key": "payments/p1"}));
    let rows = Browser::visible(
        &b.run(json!({"cmd": "waitRow", "key": "checkout/c3", "health": "unhealthy"})),
    );
    let (health, why, _) = &rows[&own];
    assert_eq!(health, "unhealthy");
    assert!(why.contains("probe here: connect failed"), "{why}");
    assert_eq!(rows["checkout/c3"].1, "reported unhealthy by memory");
    let c1 = &rows["checkout/c1"].2;
    assert_eq!(
        c1,
        &[
            "c1",
            "127.0.0.1:7001",
            "healthy",
            "—",
            "v2",
            "eu-west-1",
            "eu-west-1a",
            "2",
            "memory"
        ],
        "instance, address, health, why, version, region, zone, weight, registry"
    );

    // Live: an instance that comes shows up, one that goes leaves, without a reload.
    fleet.add(
        "checkout",
        "c4",
        7004,
        "healthy",
        zone("eu-west-1b", "v2", 1),
    );
    b.run(json!({"cmd": "waitRow", "key": "checkout/c4", "health": "healthy"}));
    fleet.remove("checkout", "c2");
    let rows =
        Browser::visible(&b.run(json!({"cmd": "waitRow", "key": "checkout/c2", "gone": true})));
    assert!(rows.contains_key("checkout/c1") && !rows.contains_key("checkout/c2"));

    // The filter, as typed: text, then healthy only, then cleared.
    let answer = b.run(json!({"cmd": "filter", "text": "eu-west-1b", "healthy": false}));
    let keys: Vec<String> = Browser::visible(&answer).into_keys().collect();
    assert_eq!(keys, ["checkout/c3", "checkout/c4"]);
    let answer = b.run(json!({"cmd": "filter", "text": "eu-west-1b", "healthy": true}));
    let keys: Vec<String> = Browser::visible(&answer).into_keys().collect();
    assert_eq!(keys, ["checkout/c4"]);
    assert_eq!(answer["shown"], "Showing 1 of 5 instances.");
    let answer = b.run(json!({"cmd": "filter", "text": "", "healthy": false}));
    assert_eq!(Browser::visible(&answer).len(), 5);

    // Keyboard: the skip link, the sections, the filter's controls, each with a visible focus.
    let answer = b.run(json!({"cmd": "tabs", "n": 6}));
    let seen: Vec<(String, String, bool)> = answer["seen"]
        .as_array()
        .expect("seen")
        .iter()
        .map(|s| {
            let name = match s["id"].as_str() {
                Some(id) if !id.is_empty() => format!("#{id}"),
                _ => s["text"].as_str().unwrap_or_default().to_owned(),
            };
            (
                s["tag"].as_str().unwrap_or_default().to_owned(),
                name,
                s["outline"] == true,
            )
        })
        .collect();
    let expected = [
        ("a", "Skip to content"),
        ("a", "Services"),
        ("a", "Balancing"),
        ("a", "Registries"),
        ("input", "#filter"),
        ("input", "#healthy-only"),
    ];
    for ((tag, name, outline), (want_tag, want_name)) in seen.iter().zip(expected) {
        assert_eq!(
            (tag.as_str(), name.as_str()),
            (want_tag, want_name),
            "focus order: {seen:?}"
        );
        assert!(outline, "no visible focus on {name}: {seen:?}");
    }

    // Read-only: the page offers no write, and a write sent anyway is refused, changing nothing.
    b.no_errors();
    assert!(
        !b.text("[data-section=\"services\"]", "")
            .contains("Deregister")
    );
    let answer = b.run(json!({"cmd": "write", "service": "checkout", "id": "c1"}));
    assert_eq!(answer["status"], 403, "{answer}");
    let body = answer["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("read-only") && body.contains("--console-writes"),
        "{body}"
    );
    let (_, listed) = http_get(&agent.admin, "/v1/services/checkout");
    assert!(
        listed.contains("\"c1\""),
        "c1 is still registered: {listed}"
    );
    let registries = b.text("[data-section=\"registries\"]", "connected");
    assert!(registries.contains("memory"), "{registries}");

    b.assert_contrast();
    b.run(json!({"cmd": "screenshot", "path": shot("agent.png")}));
    assert_eq!(
        b.errors(),
        json!(["Failed to load resource: the server responded with a status of 403 (Forbidden)"]),
        "the refused write, and nothing else"
    );

    // Without JavaScript: the same tables, rendered by the server, filtered by the form's query.
    let answer = b.run(json!({"cmd": "static", "url": format!("{url}?q=checkout")}));
    let rows: Vec<&str> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(rows, ["checkout/c1", "checkout/c3", "checkout/c4"]);
    assert!(
        answer["live"]
            .as_str()
            .unwrap_or_default()
            .contains("Static page")
    );
    drop(fleet);
}

#[test]
fn agent_console_deregisters_from_the_keyboard_only_when_started_to() {
    let _heavy = heavy();
    let agent = Agent::start(
        &registration("console-writes", 1, "v1", ""),
        &["--console-writes"],
    );
    let fleet = Fleet::new(&agent.admin);
    fleet.add("web", "w1", 7201, "healthy", json!({}));
    fleet.add("web", "w2", 7202, "healthy", json!({}));
    let mut b = Browser::start();
    b.run(json!({"cmd": "open", "url": format!("http://{}/ui", agent.admin)}));
    b.run(json!({"cmd": "waitRow", "key": "web/w2"}));
    // Stop keeping w1 alive, then deregister it from its row's button, with the keyboard.
    fleet
        .live
        .lock()
        .expect("fleet")
        .retain(|(i, _)| i["id"] != "w1");
    let answer = b.run(json!({"cmd": "deregister", "service": "web", "id": "w1"}));
    assert_eq!(answer["dialogs"], 1, "the page asks before it deregisters");
    let rows = Browser::visible(&b.run(json!({"cmd": "waitRow", "key": "web/w1", "gone": true})));
    assert!(rows.contains_key("web/w2"));
    b.text("#notice", "Deregistered w1 of web");
    let (_, listed) = http_get(&agent.admin, "/v1/services/web");
    assert!(
        !listed.contains("\"w1\""),
        "w1 is gone from the registry: {listed}"
    );
    b.no_errors();
}

/// `load_balancer_selections_total` of `service` per instance, from a scrape of `admin`.
fn selections(admin: &str, service: &str) -> BTreeMap<String, u64> {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("load_balancer_selections_total{")
                && l.contains(&format!("service=\"{service}\""))
        })
        .filter_map(|l| {
            let id = l.split("instance=\"").nth(1)?.split('"').next()?.to_owned();
            let n = l.rsplit(' ').next()?.parse::<u64>().ok()?;
            Some((id, n))
        })
        .collect()
}

#[test]
fn proxy_console_charts_picks_ejections_and_ramps() {
    let _heavy = heavy();
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let fleet = Fleet::new(&host.admin);
    for (id, weight) in [("s1", 1), ("s2", 2), ("s3", 3)] {
        fleet.add(
            "shop",
            id,
            http_server(200),
            "healthy",
            json!({"weight": weight}),
        );
    }
    // A backend that fails every request: outlier detection ejects it.
    fleet.add(
        "shop",
        "s5",
        http_server(503),
        "healthy",
        json!({"weight": 1}),
    );
    let config = "service_discovery:
  discovery:
    cache:
      refresh_interval: \"200ms\"
  load_balancer:
    strategy: \"weighted_round_robin\"
    slow_start:
      window: \"60s\"
    circuit_breaker:
      max_requests: 50
";
    let proxy = crate::proxy::start_proxy_config(config, &host.url(), &["--workers", "1"]);
    let (status, _) = http_get(&proxy.addr, "/shop/");
    assert_eq!(status, 200);
    let first_pick = std::time::Instant::now();

    // Requests all along, so the chart moves and the failing backend stays ejected.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), proxy.addr.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = http_get(&addr, "/shop/");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut b = Browser::start();
    let opened = b.run(json!({"cmd": "open", "url": format!("http://{}/ui", proxy.admin)}));
    assert_eq!(opened["title"], "chi proxy console");
    b.run(json!({"cmd": "bars", "service": "shop", "min": 20}));
    let rows = Browser::visible(
        &b.run(json!({"cmd": "waitRow", "key": "shop/s5", "health": "unhealthy"})),
    );
    assert!(
        rows["shop/s5"]
            .1
            .contains("ejected by this proxy after 3 failed requests in a row"),
        "{rows:?}"
    );
    let balancing = b.text("[data-section=\"balancing\"]", "s5: ejected");
    assert!(balancing.contains("weighted_round_robin"), "{balancing}");
    assert!(
        balancing.contains("at most 50 requests in flight per instance"),
        "{balancing}"
    );

    // A backend that joins ramps up under slow start.
    fleet.add(
        "shop",
        "s4",
        http_server(200),
        "healthy",
        json!({"weight": 2}),
    );
    let balancing = b.text("[data-section=\"balancing\"]", "% of its weight");
    assert!(balancing.contains("s4: "), "{balancing}");
    b.run(json!({"cmd": "bars", "service": "shop", "min": 60}));
    b.assert_contrast();
    b.run(json!({"cmd": "screenshot", "path": shot("proxy.png")}));

    // The chart counts what the selection metric counts, pick for pick.
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread");
    assert!(
        first_pick.elapsed() < Duration::from_secs(50),
        "the chart counts the last minute: the comparison with the cumulative metric needs every pick in it"
    );
    let counted = selections(&proxy.admin, "shop");
    let total: u64 = counted.values().sum();
    assert!(total >= 60, "{counted:?}");
    let answer = b.run(json!({"cmd": "bars", "service": "shop", "min": total}));
    let bars: BTreeMap<String, (u64, f64)> = answer["bars"]
        .as_array()
        .expect("bars")
        .iter()
        .map(|b| {
            let id = b["id"].as_str().unwrap_or_default().to_owned();
            (
                id,
                (
                    b["picks"].as_u64().unwrap_or(0),
                    b["width"].as_f64().unwrap_or(0.0),
                ),
            )
        })
        .collect();
    let picks: BTreeMap<String, u64> = bars.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert_eq!(
        picks, counted,
        "the chart's picks are the selection counters'"
    );
    // Bars are drawn to scale: s3 (weight 3) about three times s1 (weight 1).
    let (s1, s3) = (bars["s1"], bars["s3"]);
    let ratio = s3.1 / s1.1;
    let want = s3.0 as f64 / s1.0 as f64;
    assert!((ratio - want).abs() < 0.05 * want, "widths {bars:?}");
    assert!(s3.0 > 2 * s1.0, "weighted round robin: {picks:?}");
    b.no_errors();
    drop(fleet);
}

#[test]
fn xds_console_lists_each_client_what_it_was_sent_and_its_ack() {
    use crate::xds::{Client, Lang, backend_agent, python, serve_backends, write_bootstrap};
    let _heavy = heavy();
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (_servers, ports) = serve_backends(&["b1", "b2"]);
    let _agents: Vec<Agent> = [("b1", "eu-west-1a"), ("b2", "eu-west-1b")]
        .into_iter()
        .map(|(name, zone)| backend_agent(&url, name, ports[name], zone))
        .collect();
    let mut cmd = chi();
    cmd.args([
        "xds",
        "--registry",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let mut xds = Proc::spawn(cmd);
    let admin = xds
        .wait_line("the admin address", |l| {
            l.starts_with("xds admin on http://")
        })
        .trim_start_matches("xds admin on http://")
        .trim()
        .to_owned();
    let addr = xds
        .wait_line("the xds address", |l| l.starts_with("xds on grpc://"))
        .trim_start_matches("xds on grpc://")
        .trim()
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut client = Client::start(
        &Lang::Grpcio(python()),
        &write_bootstrap(dir.path(), &addr, "eu-west-1a"),
    );
    let (counts, errors) = client.call(20);
    assert!(
        errors.is_empty() && counts.values().sum::<u64>() == 20,
        "{counts:?} {errors:?}"
    );

    let mut b = Browser::start();
    let opened = b.run(json!({"cmd": "open", "url": format!("http://{admin}/ui")}));
    assert_eq!(opened["title"], "chi xds console");
    b.run(json!({"cmd": "waitRow", "key": "order-service/b2"}));
    let clients = b.text("[data-section=\"xds\"]", "chi-test-client-eu-west-1a");
    for want in [
        "locality eu-west-1 / eu-west-1a",
        "sotw stream",
        "CDS",
        "EDS",
        "LDS",
        "ACK of version",
        "order-service",
    ] {
        assert!(clients.contains(want), "no {want:?} in {clients}");
    }
    assert!(!clients.contains("NACK"), "{clients}");
    let rows = Browser::visible(&b.run(json!({"cmd": "rows"})));
    assert_eq!(
        rows["order-service/b1"].2[8], "chi",
        "the registry it came from"
    );
    let health: (u16, String) = http_get(&admin, "/health");
    assert_eq!(health.0, 200);
    b.assert_contrast();
    b.run(json!({"cmd": "screenshot", "path": shot("xds.png")}));
    b.no_errors();

    // A client that leaves leaves the page.
    drop(client);
    b.text("[data-section=\"xds\"]", "No client connected.");
}
