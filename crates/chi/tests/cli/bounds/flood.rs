//! Overload is refused, not absorbed: 2,000 connections opened at once on loopback against
//! `chi agent`, `chi proxy` and `chi xds`, each held for a few seconds. Past
//! `--max-connections` they are refused (`503` with `Retry-After`, `RESOURCE_EXHAUSTED` over
//! HTTP/2 for `chi xds`, or closed once the refusals in progress are at their own bound); the
//! server's resident memory (`/proc/PID/status` of the child) stays within a bound, and a client
//! that was there before the flood is served throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::xds::{channel, eds, stream, xds};
use super::{Server, agent, proxy, register};

/// Connections of a flood.
const FLOOD: usize = 2_000;
/// `--max-connections` of the server under the flood.
const LIMIT: &str = "256";
/// How long each flood connection is held open.
const HOLD: Duration = Duration::from_secs(3);
/// Most the server's RSS may grow during the flood.
const RSS_BOUND_KIB: u64 = 32 << 10;
/// What each HTTP flood connection sends: a whole request, kept alive.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
/// What each xDS flood connection sends: HTTP/2's client preface and an empty SETTINGS frame
/// (a connection that sends nothing may never reach the server: past the accept queue, the
/// kernel's SYN cookies complete it on the client's side only).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Debug, Default)]
struct Tally {
    /// Answered `503`.
    refused: AtomicU64,
    /// Answered something else (served, or an HTTP/2 server's first frames).
    answered: AtomicU64,
    /// Closed without an answer.
    closed: AtomicU64,
    /// Nothing within [`HOLD`].
    held: AtomicU64,
    failed: AtomicU64,
}

/// Opens [`FLOOD`] connections to `addr` at once, each sending `payload` and holding on for
/// [`HOLD`], while sampling `server`'s RSS and, when its admin port is another, its open
/// connections; the tally, the largest RSS seen (KiB) and the most connections seen open.
async fn flood(server: &Server, payload: &'static [u8]) -> (Tally, u64, f64) {
    let tally = Arc::new(Tally::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let (addr, tally) = (server.addr.clone(), tally.clone());
        tasks.spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let held = Instant::now();
            let _ = s.write_all(payload).await;
            let mut buf = [0u8; 512];
            let counter = match tokio::time::timeout(HOLD, s.read(&mut buf)).await {
                Err(_) => &tally.held,
                Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 503") => &tally.refused,
                Ok(Ok(n)) if n > 0 => &tally.answered,
                Ok(_) => &tally.closed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Holds the connection (kept alive by the server, or closed) for the rest of HOLD.
            tokio::time::sleep(HOLD.saturating_sub(held.elapsed())).await;
            drop(s);
        });
    }
    let (mut peak, mut open) = (0, 0.0f64);
    let sample_open = server.admin != server.addr;
    while !tasks.is_empty() {
        peak = peak.max(server.rss_kib());
        if sample_open {
            let admin = (server.admin.clone(), server.pid());
            let n = tokio::task::spawn_blocking(move || open_connections(&admin.0))
                .await
                .unwrap_or(0.0);
            open = open.max(n);
        }
        tokio::select! {
            _ = tasks.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        while tasks.try_join_next().is_some() {}
    }
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    (tally, peak, open)
}

/// `chi_connections` of the server whose admin port is `admin` (its own doors' connections
/// but the admin port's).
fn open_connections(admin: &str) -> f64 {
    let (_, body) = super::request(
        admin,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    body.lines()
        .filter(|l| l.starts_with("chi_connections{") && !l.contains("admin"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (at most 10 s) until the server has refused or admitted every connection of the
/// flood (the kernel holds those it has not accepted yet in its queue): until its count of
/// refusals stops moving; the count.
async fn settled(server: &Server) -> f64 {
    let mut refused = server.metric("chi_refused_total", "reason=\"connections\"");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.metric("chi_refused_total", "reason=\"connections\"");
        if now == refused {
            break;
        }
        refused = now;
    }
    refused
}

/// Keeps asking `url` with one kept-alive connection until `stop`; the answers 200, the others.
fn steady(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http::<Full<Bytes>>();
        let (mut ok, mut bad) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let req = hyper::Request::get(&url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(resp)) if resp.status() == 200 => {
                    let _ = resp.into_body().collect().await;
                    ok += 1;
                }
                _ => bad += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, bad)
    })
}

fn report(
    what: &str,
    (before, peak, after): (u64, u64, u64),
    tally: &Tally,
    open: f64,
    refused: f64,
) {
    println!(
        "[bounds] flood of {FLOOD} connections on {what} (--max-connections {LIMIT}, each held {} s): {} answered 503, {} answered otherwise, {} closed, {} held, {} failed to connect; at most {open} open at once (sampled); chi_refused_total{{reason=\"connections\"}} {refused}; RSS {before} KiB before, {peak} KiB at most (+{} KiB), {after} KiB after",
        HOLD.as_secs(),
        tally.refused.load(Ordering::Relaxed),
        tally.answered.load(Ordering::Relaxed),
        tally.closed.load(Ordering::Relaxed),
        tally.held.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        peak.saturating_sub(before),
    );
}

fn assert_bounded((before, peak): (u64, u64), open: f64, refused: f64) {
    assert!(
        open <= 256.0,
        "{open} connections open past --max-connections {LIMIT}"
    );
    // Connections past the limit are refused. Not all 1,744 of them: on a loaded machine the
    // accept loop falls behind, and a connection accepted after the first ones' hold ended
    // finds a free slot and is admitted (and the kernel resets a few it never queued). Without
    // the bound, none would be refused.
    assert!(
        refused >= (FLOOD / 2) as f64,
        "{refused} refusals counted for {FLOOD} connections"
    );
    assert!(
        peak.saturating_sub(before) < RSS_BOUND_KIB,
        "RSS grew {} KiB under the flood",
        peak - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_under_a_flood_refuses_stays_flat_and_serves_its_clients() {
    let _heavy = chi_test_support::heavy().await;
    let env = [
        ("CHI_MAX_CONNECTIONS", LIMIT),
        ("CHI_HEADER_TIMEOUT", "10s"),
    ];
    let agent = agent(&env, &[]);
    assert_eq!(register(&agent.admin, "flood", "flood-1", 80, "").0, 204);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = steady(
        format!("http://{}/v1/services/flood", agent.addr),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = agent.rss_kib();
    let (tally, peak, open) = flood(&agent, REQUEST).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = client.await.expect("client");
    let refused = settled(&agent).await;
    let after = agent.rss_kib();
    report("chi agent", (before, peak, after), &tally, open, refused);
    println!("[bounds] the agent's client during the flood: {ok} answered, {bad} failed");
    assert_bounded((before, peak), open, refused);
    assert!(tally.refused.load(Ordering::Relaxed) > 0, "no 503 seen");
    assert_eq!(bad, 0, "the client there before the flood was not served");
    assert!(ok >= 20, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_under_a_flood_refuses_stays_flat_and_serves_its_clients() {
    let _heavy = chi_test_support::heavy().await;
    let backend = crate::proxy::Backend::start("b1").await;
    let agent = agent(&[], &[]);
    assert_eq!(
        register(&agent.admin, "web", "web-1", backend.port, "").0,
        204
    );
    let env = [
        ("CHI_MAX_CONNECTIONS", LIMIT),
        ("CHI_HEADER_TIMEOUT", "10s"),
    ];
    let proxy = proxy(&agent.url(), &env, &[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = steady(format!("http://{}/web/x", proxy.addr), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.rss_kib();
    let (tally, peak, open) = flood(&proxy, REQUEST).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = client.await.expect("client");
    let refused = settled(&proxy).await;
    let after = proxy.rss_kib();
    report("chi proxy", (before, peak, after), &tally, open, refused);
    println!("[bounds] the proxy's client during the flood: {ok} answered, {bad} failed");
    assert_bounded((before, peak), open, refused);
    assert!(tally.refused.load(Ordering::Relaxed) > 0, "no 503 seen");
    assert_eq!(bad, 0, "the client there before the flood was not served");
    assert!(ok >= 20, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_under_a_flood_refuses_stays_flat_and_serves_its_streams() {
    let _heavy = chi_test_support::heavy().await;
    let agent = agent(&[], &[]);
    let env = [
        ("CHI_MAX_CONNECTIONS", LIMIT),
        ("CHI_HEADER_TIMEOUT", "10s"),
    ];
    let xds = xds(&agent.url(), &env, &[]);
    assert_eq!(register(&agent.admin, "flood", "flood-1", 8001, "").0, 204);
    let mut s = stream(channel(&xds.addr).await, eds(vec!["flood".into()]))
        .await
        .expect("a stream before the flood");
    let first = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an answer")
        .expect("ok")
        .expect("a response");
    assert_eq!(first.resources.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = xds.rss_kib();
    let started = Instant::now();
    let admin = agent.admin.clone();
    let change = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::spawn_blocking(move || register(&admin, "flood", "flood-2", 8002, ""))
            .await
            .expect("register")
    });
    let pushed = tokio::spawn(async move {
        let got = tokio::time::timeout(Duration::from_secs(20), s.message()).await;
        (got.map(|r| r.map(|m| m.map(|m| m.resources.len()))), s)
    });
    let (tally, peak, open) = flood(&xds, PREFACE).await;
    assert_eq!(change.await.expect("change").0, 204);
    let (got, _s) = pushed.await.expect("stream task");
    let refused = settled(&xds).await;
    let after = xds.rss_kib();
    report("chi xds", (before, peak, after), &tally, open, refused);
    let got = got.expect("the existing stream got the change in time");
    println!(
        "[bounds] chi xds: the stream open before the flood got the change pushed during it ({got:?}), {:.1} s into the flood",
        started.elapsed().as_secs_f64()
    );
    assert!(matches!(got, Ok(Some(1))), "{got:?}");
    assert_bounded((before, peak), open, refused);
}
