//! `chi select`: the distribution of picks per strategy, and routing, without a proxy.

use serde_json::Value;

use crate::support::{
    Agent, closed_port, discover_json, eventually, http_server, registration, run, stderr, yaml,
};

fn fleet() -> (Agent, Vec<Agent>) {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let agents = [
        (19101, "v1", "us-east-1", 1),
        (19102, "v1", "us-east-1", 2),
        (19103, "v2", "us-west-2", 3),
    ]
    .iter()
    .map(|(port, version, region, weight)| {
        Agent::start(
            &registration(
                "pay",
                *port,
                version,
                &format!("    weight: {weight}\n    meta:\n      region: \"{region}\"\n"),
            ),
            &["--registry", &url],
        )
    })
    .collect();
    (host, agents)
}

/// `chi select pay ... -o json`: picks per port.
fn select(url: &str, extra: &[&str]) -> Vec<(u16, u64)> {
    let mut args = vec!["select", "pay", "-o", "json", "--registry", url];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut picks: Vec<(u16, u64)> = v["picks"]
        .as_array()
        .expect("picks")
        .iter()
        .map(|p| {
            let port = p["address"]
                .as_str()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("port");
            (port, p["picks"].as_u64().expect("count"))
        })
        .collect();
    picks.sort_unstable();
    picks
}

#[test]
fn select_shows_the_distribution_of_each_strategy() {
    let (host, _agents) = fleet();
    let url = host.url();
    // Without routing headers the default version is any version (no config given).
    assert_eq!(
        select(&url, &["--strategy", "round_robin", "--count", "300"]),
        [(19101, 100), (19102, 100), (19103, 100)]
    );
    assert_eq!(
        select(
            &url,
            &["--strategy", "weighted_round_robin", "--count", "600"]
        ),
        [(19101, 100), (19102, 200), (19103, 300)]
    );
    let random = select(&url, &["--strategy", "random", "--count", "3000"]);
    assert_eq!(random.len(), 3);
    for (port, n) in &random {
        assert!((700..=1300).contains(n), "{port}: {n} of 3000");
    }
    for strategy in ["consistent_hash", "ring_hash", "maglev"] {
        let one = select(
            &url,
            &["--strategy", strategy, "--key", "user-42", "--count", "50"],
        );
        assert_eq!(one.len(), 1, "{strategy}: {one:?}");
        assert_eq!(one[0].1, 50);
    }
    for strategy in ["least_connections", "p2c", "peak_ewma"] {
        let all = select(&url, &["--strategy", strategy, "--count", "90"]);
        assert_eq!(all.iter().map(|(_, n)| n).sum::<u64>(), 90, "{strategy}");
    }
    // Routing: a version, a region.
    assert_eq!(
        select(&url, &["--service-version", "v2", "--count", "10"]),
        [(19103, 10)]
    );
    let east = select(
        &url,
        &[
            "--region",
            "us-east-1",
            "--count",
            "10",
            "--service-version",
            "v1",
        ],
    );
    assert!(east.iter().all(|(p, _)| *p != 19103), "{east:?}");

    // The table.
    let out = run(&["select", "pay", "--registry", &url, "--count", "6"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PICKS") && text.contains("SHARE"), "{text}");

    // Bad input.
    let out = run(&["select", "pay", "--registry", &url, "--strategy", "fastest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("round_robin"), "{}", stderr(&out));
    let out = run(&["select", "nobody", "--registry", &url]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn health_check_enabled_false_picks_unhealthy_instances_too() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let good = http_server(200);
    let dead = closed_port();
    let check = |port: u16| {
        format!(
            "    health_check:\n      tcp: \"127.0.0.1:{port}\"\n      interval: \"100ms\"\n      timeout: \"50ms\"\n"
        )
    };
    let _agents: Vec<Agent> = [good, dead]
        .iter()
        .map(|&port| {
            Agent::start(
                &registration("pay", port, "v1", &check(port)),
                &["--registry", &url],
            )
        })
        .collect();
    eventually("the dead instance to be unhealthy", || {
        discover_json(&url, "pay", &[])
            .iter()
            .any(|i| i["health"] == "unhealthy")
    });
    let args = ["--strategy", "round_robin", "--count", "100"];
    // By default the unhealthy instance is skipped.
    assert_eq!(select(&url, &args), [(good, 100)]);
    // With health checks off in the config, it is picked like the other.
    let (_dir, path) =
        yaml("service_discovery:\n  load_balancer:\n    health_check_enabled: false\n");
    let mut off = args.to_vec();
    let path = path.display().to_string();
    off.extend_from_slice(&["-c", &path]);
    let mut want = vec![(good, 50), (dead, 50)];
    want.sort_unstable();
    assert_eq!(select(&url, &off), want);
}

/// `load_balancer.zone_aware`: zone r-a has 1 instance of 4, half the clients: it keeps half of
/// its requests (its capacity share over its client share) and spills the rest to r-b.
#[test]
fn zone_aware_spills_a_short_zone_to_its_neighbour_zones() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let _agents: Vec<Agent> = [
        (19201, "r-a"),
        (19202, "r-b"),
        (19203, "r-b"),
        (19204, "r-b"),
    ]
    .iter()
    .map(|(port, zone)| {
        Agent::start(
            &registration(
                "pay",
                *port,
                "v1",
                &format!("    meta:\n      region: \"r\"\n      zone: \"{zone}\"\n"),
            ),
            &["--registry", &url],
        )
    })
    .collect();
    eventually("four instances", || {
        discover_json(&url, "pay", &[]).len() == 4
    });
    let routing =
        "  routing:\n    enable_geo_routing: true\n    regions:\n      r: [\"r-a\", \"r-b\"]\n";
    let args = [
        "--strategy",
        "round_robin",
        "--count",
        "1000",
        "--zone",
        "r-a",
    ];
    let with = |yaml_text: &str| {
        let (dir, path) = yaml(yaml_text);
        let path = path.display().to_string();
        let mut a = args.to_vec();
        a.extend_from_slice(&["-c", &path]);
        let picks = select(&url, &a);
        drop(dir);
        picks
    };
    // Plain zone affinity: everything stays in r-a.
    assert_eq!(
        with(&format!("service_discovery:\n{routing}")),
        [(19201, 1000)]
    );
    let picks = with(&format!(
        "service_discovery:\n  load_balancer:\n    zone_aware:\n      enabled: true\n      min_instances: 1\n{routing}"
    ));
    let local = picks.iter().find(|p| p.0 == 19201).map_or(0, |p| p.1);
    assert!(
        (420..=580).contains(&local),
        "r-a kept {local} of 1000: {picks:?}"
    );
    assert_eq!(picks.len(), 4, "the rest spread over r-b: {picks:?}");
}
