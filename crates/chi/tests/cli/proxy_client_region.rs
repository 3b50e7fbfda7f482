//! `chi proxy` placing a request that names no region by its client's address
//! (`routing.client_regions`), over IPv4 and IPv6, and believing `X-Forwarded-For` only when the
//! peer is one of `routing.trusted_proxies`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proxy::{Fleet, HttpClient, client, fleet, proxy_config, spread};
use crate::support::{Proc, chi, run, stderr, stdout, yaml};

/// Two backends of `web` v1, one per region.
async fn two_regions() -> Fleet {
    fleet(&[
        ("east", "v1", "us-east-1", 1),
        ("west", "v1", "us-west-2", 1),
    ])
    .await
}

/// A `chi proxy` on `listen` with the test proxy config plus `routing` lines; its address.
fn proxy_on(
    listen: &str,
    routing: &str,
    registry: &str,
) -> (Proc, String, (tempfile::TempDir, std::path::PathBuf)) {
    let file = yaml(&format!("{}{routing}", proxy_config("round_robin")));
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", listen, "--admin", "127.0.0.1:0", "-c"])
        .arg(&file.1)
        .args(["--registry", registry]);
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_line("listening", |l| l.contains("listening on http://"));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split([' ', ';']).next())
        .expect("listen address")
        .to_owned();
    (proc, addr, file)
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    [(name.to_owned(), n)].into()
}

/// Until the proxy knows both backends: each answers the requests that name its region.
async fn wait_for_both(c: &HttpClient, proxy: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let east = spread(c, proxy, 2, &[("x-client-region", "us-east-1")]).await;
        let west = spread(c, proxy, 2, &[("x-client-region", "us-west-2")]).await;
        if east == only("east", 2) && west == only("west", 2) {
            return;
        }
        assert!(Instant::now() < deadline, "{east:?} {west:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_places_a_silent_client_by_its_peer_address() {
    let f = two_regions().await;
    let routing =
        "    client_regions:\n      \"127.0.0.0/8\": us-west-2\n      \"::1/128\": us-east-1\n";
    let (_v4, v4, _f4) = proxy_on("127.0.0.1:0", routing, &f.host.url());
    let (_v6, v6, _f6) = proxy_on("[::1]:0", routing, &f.host.url());
    let c = client();
    wait_for_both(&c, &v4).await;
    wait_for_both(&c, &v6).await;
    // No region named: the peer's address places it (127.0.0.1 in us-west-2, ::1 in us-east-1).
    assert_eq!(spread(&c, &v4, 20, &[]).await, only("west", 20));
    assert_eq!(spread(&c, &v6, 20, &[]).await, only("east", 20));
    // A request that names its region or zone is routed by what it says.
    assert_eq!(
        spread(&c, &v4, 20, &[("x-client-region", "us-east-1")]).await,
        only("east", 20)
    );
    assert_eq!(
        spread(&c, &v6, 20, &[("x-client-zone", "us-west-2a")]).await,
        only("west", 20)
    );
    // No trusted proxy: X-Forwarded-For is not believed.
    assert_eq!(
        spread(&c, &v4, 20, &[("x-forwarded-for", "::1")]).await,
        only("west", 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reads_forwarded_for_only_from_trusted_proxies() {
    let f = two_regions().await;
    let blocks = "    client_regions:\n      \"127.0.0.0/8\": us-west-2\n      \"10.1.0.0/16\": us-east-1\n      \"2001:db8::/32\": us-east-1\n";
    let (_t, trusting, _ft) = proxy_on(
        "127.0.0.1:0",
        &format!("{blocks}    trusted_proxies: [\"127.0.0.1\"]\n"),
        &f.host.url(),
    );
    let (_u, untrusting, _fu) = proxy_on(
        "127.0.0.1:0",
        &format!("{blocks}    trusted_proxies: [\"10.9.0.0/16\"]\n"),
        &f.host.url(),
    );
    let c = client();
    wait_for_both(&c, &trusting).await;
    wait_for_both(&c, &untrusting).await;
    let xff = |value: &'static str| [("x-forwarded-for", value)];
    // The peer (127.0.0.1) is trusted: the rightmost address of no trusted proxy is the client.
    assert_eq!(
        spread(&c, &trusting, 20, &xff("10.1.0.5")).await,
        only("east", 20)
    );
    assert_eq!(
        spread(&c, &trusting, 20, &xff("10.1.0.5, 127.0.0.1")).await,
        only("east", 20)
    );
    assert_eq!(
        spread(&c, &trusting, 20, &xff("2001:db8::9")).await,
        only("east", 20)
    );
    // What the client wrote left of it is not believed.
    assert_eq!(
        spread(&c, &trusting, 20, &xff("127.0.0.9, 10.1.0.5")).await,
        only("east", 20)
    );
    // A client in no block is not placed: any region (round robin over both).
    assert_eq!(
        spread(&c, &trusting, 20, &xff("10.1.0.5, 198.51.100.7")).await,
        BTreeMap::from([("east".to_owned(), 10), ("west".to_owned(), 10)])
    );
    // No header: the peer itself.
    assert_eq!(spread(&c, &trusting, 20, &[]).await, only("west", 20));
    // The other proxy trusts another block: the header is ignored, the peer places the client.
    assert_eq!(
        spread(&c, &untrusting, 20, &xff("10.1.0.5")).await,
        only("west", 20)
    );
}

#[test]
fn config_check_shows_the_blocks_and_names_a_bad_one() {
    let routing = "service_discovery:\n  routing:\n    enable_geo_routing: true\n    regions:\n      us-east-1: [\"us-east-1a\"]\n    client_regions:\n      \"10.1.0.0/16\": us-east-1\n      \"2001:db8::/32\": us-east-1\n    trusted_proxies: [\"10.9.0.0/16\"]\n";
    let (_d, path) = yaml(routing);
    let out = run(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("10.1.0.0/16=us-east-1") && text.contains("2001:db8::/32=us-east-1"),
        "{text}"
    );
    assert!(text.contains("10.9.0.0/16"), "{text}");

    let (_d, path) =
        yaml(&routing.replace("\"10.1.0.0/16\": us-east-1", "\"10.1.0.0/16\": eu-west-9"));
    let out = run(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: service_discovery.routing.client_regions[\"10.1.0.0/16\"]: must be a region of routing.regions (us-east-1), got \"eu-west-9\""),
        "{err}"
    );
}
