//! A fault-injecting stand-in for a Consul agent: the one place a fake server is right, because
//! it produces answers a real agent never does (malformed or truncated JSON, an endless body, a
//! socket that accepts and never answers, a body dripping one byte at a time, HTML with the wrong
//! content type, a blocking-query index that goes backwards, an empty stale read from a server
//! without a leader).
//!
//! Each fault test first serves a good answer through the real Consul adapter and a
//! `DiscoveryClient`, then switches the stub to the fault and asserts: the adapter's error is typed
//! and says what went wrong (its Display), a fresh client's `discover` fails with it, the cached
//! client keeps its last good list (stale), every call is bounded in time, and the endless body is
//! cut at `consul::MAX_BODY`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::consul::{Consistency, Consul, ConsulConfig, MAX_BODY};
use chi_discovery::{Change, DiscoveryClient, Error, Registry, RetryPolicy};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use chi_test_support as harness;

/// The adapter's per-request deadline in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the stub answers to `GET /v1/health/service/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A real-looking answer with `instances` entries and `X-Consul-Index: index`.
    Good,
    /// 200, `application/json`, not JSON.
    Malformed,
    /// `Content-Length` of the whole answer, half of it sent, then the connection closed.
    Truncated,
    /// 200 with a chunked body that never ends (`[` then entries forever).
    Endless,
    /// Accepts the connection, reads the request, never writes a byte.
    Hung,
    /// Headers at once, then one byte of body every 100 ms, forever.
    Drip,
    /// 200 `text/html` with a proxy's login page.
    WrongContentType,
    /// Blocking queries are answered at once with a *lower* index and one more instance.
    IndexBackwards,
    /// 200 `[]` with `X-Consul-KnownLeader: false`: a stale read answered by a server that knows
    /// no leader and has not caught up (one restarted during an election). A real cluster gives
    /// this only in a narrow, unpredictable window, hence the stub.
    LeaderlessEmpty,
}

struct State {
    mode: Mutex<Mode>,
    instances: AtomicUsize,
    index: AtomicU64,
    requests: AtomicUsize,
    /// Body bytes written by the endless mode, summed over connections.
    endless_sent: AtomicU64,
    /// Endless connections that ended because the client closed them.
    endless_closed_by_client: AtomicUsize,
}

struct Stub {
    port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    async fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Good),
            instances: AtomicUsize::new(3),
            index: AtomicU64::new(100),
            requests: AtomicUsize::new(0),
            endless_sent: AtomicU64::new(0),
            endless_closed_by_client: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        Stub { port, state, task }
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    fn consul(&self) -> Arc<dyn Registry> {
        Arc::new(
            Consul::new(ConsulConfig {
                address: format!("127.0.0.1:{}", self.port),
                request_timeout: REQUEST_TIMEOUT,
                wait: Duration::from_secs(2),
                ..ConsulConfig::default()
            })
            .expect("consul adapter"),
        )
    }
}

fn entry(i: usize) -> String {
    format!(
        r#"{{"Node":{{"Node":"stub","Address":"127.0.0.1"}},"Service":{{"ID":"api-{i}","Service":"api","Tags":["t"],"Address":"10.0.0.{i}","Meta":{{"chi_version":"v1"}},"Port":8080,"Weights":{{"Passing":1,"Warning":1}}}},"Checks":[{{"Status":"passing"}}]}}"#
    )
}

fn good_body(n: usize) -> String {
    let entries: Vec<String> = (1..=n).map(entry).collect();
    format!("[{}]", entries.join(","))
}

/// Reads one request head; returns the request target (path and query).
async fn read_head(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut byte).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).map(str::to_owned)
}

async fn respond(sock: &mut TcpStream, content_type: &str, index: u64, body: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nX-Consul-Index: {index}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn serve(mut sock: TcpStream, st: Arc<State>) {
    let Some(target) = read_head(&mut sock).await else {
        return;
    };
    st.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *st.mode.lock().expect("mode");
    let n = st.instances.load(Ordering::SeqCst);
    let index = st.index.load(Ordering::SeqCst);
    match mode {
        Mode::Good => respond(&mut sock, "application/json", index, &good_body(n)).await,
        Mode::Malformed => {
            respond(
                &mut sock,
                "application/json",
                index,
                r#"[{"Node":{"Address":"127.0.0.1"},"Service":{"ID":"api-1","Port":"#,
            )
            .await;
        }
        Mode::Truncated => {
            let body = good_body(n);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body.as_bytes()[..body.len() / 2]).await;
            // Closing here leaves the client short of Content-Length.
        }
        Mode::Endless => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // 64 KiB chunks of entries, forever (well past 100 MB), until the client hangs up.
            let mut piece = String::from("[");
            while piece.len() < 64 * 1024 {
                piece.push_str(&entry(7));
                piece.push(',');
            }
            let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
            loop {
                if sock.write_all(chunk.as_bytes()).await.is_err() {
                    st.endless_closed_by_client.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                st.endless_sent
                    .fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
        }
        Mode::Hung => {
            // Hold the socket open, silent, until the client gives up (or the test ends).
            let mut sink = [0u8; 64];
            let _ = sock.read(&mut sink).await;
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        Mode::Drip => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nContent-Length: 1000000\r\n\r\n["
            );
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if sock.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }
        Mode::WrongContentType => {
            respond(
                &mut sock,
                "text/html; charset=utf-8",
                index,
                "<html><body><h1>Proxy login</h1><form>...</form></body></html>",
            )
            .await;
        }
        Mode::LeaderlessEmpty => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nX-Consul-KnownLeader: false\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
        Mode::IndexBackwards => {
            let blocking = target.contains("index=");
            if blocking {
                // A snapshot restore: the index drops, and the list changed meanwhile.
                let lower = (index / 2).max(2);
                st.index.store(lower, Ordering::SeqCst);
                st.instances.store(4, Ordering::SeqCst);
                respond(&mut sock, "application/json", lower, &good_body(4)).await;
            } else {
                respond(&mut sock, "application/json", index, &good_body(n)).await;
            }
        }
    }
}

/// What one fault did to discovery.
struct Outcome {
    /// The adapter's own error (`Registry::instances`).
    error: Error,
    /// How long the adapter took to fail.
    took: Duration,
    /// A client with a good cached list: its list after a refresh during the fault.
    stale_len: usize,
    stale: bool,
}

/// Good answer first (3 instances cached), then `mode`: the adapter's error, a fresh client's
/// error, and what the cached client serves.
async fn fault(stub: &Stub, mode: Mode) -> Outcome {
    let consul = stub.consul();
    let cached = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_secs(3600),
            ..CacheConfig::default()
        })
        .retry(RetryPolicy::none())
        .request_timeout(Duration::from_secs(10))
        .build(consul.clone());
    stub.set(Mode::Good);
    let good = cached.discover("api").await.expect("good answer first");
    assert_eq!(good.len(), 3, "the stub's good answer");
    assert!(!good.is_stale());

    stub.set(mode);
    let start = Instant::now();
    let error = consul
        .instances("api")
        .await
        .expect_err("the fault must be an error");
    let took = start.elapsed();

    // A client with nothing cached gets the error itself, typed.
    let fresh = DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .request_timeout(Duration::from_secs(10))
        .build(consul.clone());
    let fresh_error = fresh
        .discover("api")
        .await
        .expect_err("a fresh client must fail too");
    assert_eq!(
        std::mem::discriminant(&fresh_error),
        std::mem::discriminant(&error),
        "fresh client: {fresh_error}; adapter: {error}"
    );

    // The cached client keeps the last good list, marked stale.
    let snap = cached
        .refresh("api")
        .await
        .expect("a refresh during the fault serves the last good list");
    assert_eq!(cached.cache_stats().refresh_errors, 1);
    Outcome {
        error,
        took,
        stale_len: snap.len(),
        stale: snap.is_stale(),
    }
}

fn check(name: &str, o: &Outcome, expect: &[&str]) {
    let shown = o.error.to_string();
    for e in expect {
        assert!(
            shown.contains(e),
            "{name}: the error should say `{e}`, it says: {shown}"
        );
    }
    assert!(
        o.stale && o.stale_len == 3,
        "{name}: the last good list of 3 must be kept and marked stale (got {} instances, stale {})",
        o.stale_len,
        o.stale
    );
    assert!(
        o.took < REQUEST_TIMEOUT + Duration::from_secs(1),
        "{name}: failing took {:?}, the deadline is {REQUEST_TIMEOUT:?}",
        o.took
    );
    println!(
        "[reliability] stub {name}: error after {:.2} s ({shown}), stale list of {} kept",
        o.took.as_secs_f64(),
        o.stale_len
    );
}

#[tokio::test]
async fn malformed_json_is_a_clear_error_and_the_last_list_stays() {
    let stub = Stub::start().await;
    let o = fault(&stub, Mode::Malformed).await;
    assert!(matches!(o.error, Error::Registry { .. }), "{:?}", o.error);
    check(
        "malformed JSON",
        &o,
        &[
            "registry `consul`",
            "GET /v1/health/service/api",
            "not a health answer",
        ],
    );
}

#[tokio::test]
async fn truncated_body_is_a_clear_error_and_the_last_list_stays() {
    let stub = Stub::start().await;
    let o = fault(&stub, Mode::Truncated).await;
    assert!(matches!(o.error, Error::Registry { .. }), "{:?}", o.error);
    check(
        "truncated body",
        &o,
        &[
            "registry `consul`",
            "GET /v1/health/service/api",
            "bad answer",
        ],
    );
}

#[tokio::test]
async fn wrong_content_type_is_a_clear_error_and_the_last_list_stays() {
    let stub = Stub::start().await;
    let o = fault(&stub, Mode::WrongContentType).await;
    assert!(matches!(o.error, Error::Registry { .. }), "{:?}", o.error);
    check(
        "text/html answer",
        &o,
        &[
            "GET /v1/health/service/api",
            "not a health answer",
            "the answer is `text/html; charset=utf-8`, not JSON",
        ],
    );
}

#[tokio::test]
async fn hung_socket_is_bounded_by_the_request_timeout() {
    let stub = Stub::start().await;
    let o = fault(&stub, Mode::Hung).await;
    assert!(matches!(o.error, Error::Timeout { .. }), "{:?}", o.error);
    assert!(
        o.took >= REQUEST_TIMEOUT - Duration::from_millis(50),
        "a timeout before the deadline? {:?}",
        o.took
    );
    check(
        "hung socket",
        &o,
        &["registry `consul` did not answer within 2s"],
    );
}

#[tokio::test]
async fn slow_drip_is_bounded_by_the_request_timeout() {
    let stub = Stub::start().await;
    let o = fault(&stub, Mode::Drip).await;
    assert!(matches!(o.error, Error::Timeout { .. }), "{:?}", o.error);
    check(
        "slow drip (1 byte / 100 ms)",
        &o,
        &["registry `consul` did not answer within 2s"],
    );
}

#[tokio::test]
async fn endless_body_is_cut_at_the_limit_and_memory_stays_bounded() {
    let _heavy = harness::heavy().await;
    let stub = Stub::start().await;
    let rss_before = harness::rss_kib();
    let o = fault(&stub, Mode::Endless).await;
    let rss_after = harness::rss_kib();
    assert!(matches!(o.error, Error::Registry { .. }), "{:?}", o.error);
    check(
        "endless body",
        &o,
        &[
            "GET /v1/health/service/api",
            "larger than the limit of 32 MiB (consul::MAX_BODY)",
        ],
    );
    // Two endless reads (the adapter's, the fresh client's) and the cached client's refresh:
    // each must stop at the limit, plus what sits in socket buffers, and hang up.
    let closed = harness::eventually(Duration::from_secs(5), || async {
        stub.state.endless_closed_by_client.load(Ordering::SeqCst) >= 3
    })
    .await;
    let sent = stub.state.endless_sent.load(Ordering::SeqCst);
    assert!(
        closed.is_some(),
        "the client kept reading an endless body ({} connections closed, {sent} bytes sent)",
        stub.state.endless_closed_by_client.load(Ordering::SeqCst)
    );
    let per_read = sent / 3;
    let slack = 16 * 1024 * 1024; // socket buffers on both sides
    assert!(
        per_read <= (MAX_BODY + slack) as u64,
        "{per_read} bytes read per request; the limit is {MAX_BODY}"
    );
    println!(
        "[reliability] stub endless body: cut at {:.1} MiB per request (limit {} MiB), RSS {} -> {} KiB",
        per_read as f64 / 1048576.0,
        MAX_BODY / 1048576,
        rss_before,
        rss_after
    );
}

#[tokio::test]
async fn index_going_backwards_resyncs_without_a_tight_loop() {
    let stub = Stub::start().await;
    let consul = stub.consul();
    let mut watch = consul.watch("api").await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("first event in time")
        .expect("stream open")
        .expect("first event ok");
    let Change::Reset(list) = first else {
        panic!("the first event must be a Reset, got {first:?}");
    };
    assert_eq!(list.len(), 3);
    stub.set(Mode::IndexBackwards);
    let before = stub.state.requests.load(Ordering::SeqCst);
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let mut view: std::collections::HashMap<String, chi_discovery::Instance> =
        list.into_iter().map(|i| (i.id.clone(), i)).collect();
    let mut errors = 0;
    while start.elapsed() < window {
        match tokio::time::timeout(window - start.elapsed(), watch.next()).await {
            Err(_) => break,
            Ok(None) => panic!("the watch ended"),
            Ok(Some(Err(e))) => {
                errors += 1;
                println!("watch error: {e}");
            }
            Ok(Some(Ok(change))) => change.apply(&mut view),
        }
    }
    let requests = stub.state.requests.load(Ordering::SeqCst) - before;
    let mut ids: Vec<&str> = view.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["api-1", "api-2", "api-3", "api-4"],
        "the watcher's view must follow the server's list"
    );
    assert_eq!(errors, 0, "an index going backwards is not an error");
    // Every blocking query is answered at once with a lower index: without backoff this would
    // be thousands of requests in 4 s.
    assert!(
        requests < 40,
        "{requests} requests in {window:?}: the watch loops on a server whose index goes backwards"
    );
    println!(
        "[reliability] stub index going backwards: view resynced to {} instances, {requests} requests in {:.0} s (backoff, no tight loop)",
        view.len(),
        window.as_secs_f64()
    );
}

#[tokio::test]
async fn an_empty_stale_read_without_a_leader_is_not_believed() {
    let stub = Stub::start().await;
    let check_ttl = Duration::from_secs(1);
    let consul = Consul::new(ConsulConfig {
        address: format!("127.0.0.1:{}", stub.port),
        consistency: Consistency::Stale,
        check_ttl,
        request_timeout: REQUEST_TIMEOUT,
        wait: Duration::from_secs(2),
        ..ConsulConfig::default()
    })
    .expect("consul adapter");
    assert_eq!(consul.instances("api").await.expect("good answer").len(), 3);

    stub.set(Mode::LeaderlessEmpty);
    let error = consul
        .instances("api")
        .await
        .expect_err("an empty answer no leader stood behind must not be believed");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

    // The cluster has a leader again, and the service really has no instance now: believed once
    // the agent has answered with a leader for the grace period (check_ttl), not before.
    stub.state.instances.store(0, Ordering::SeqCst);
    stub.set(Mode::Good);
    let start = Instant::now();
    assert!(consul.instances("api").await.is_err(), "believed at once");
    let believed = harness::eventually(Duration::from_secs(5), || async {
        consul.instances("api").await.is_ok_and(|l| l.is_empty())
    })
    .await;
    assert!(
        believed.is_some(),
        "a leader's empty answer is never believed"
    );
    let after = start.elapsed();
    assert!(
        after >= check_ttl,
        "believed after {after:?}, before the grace of {check_ttl:?}"
    );
    println!(
        "[reliability] stub leaderless stale empty read: refused ({error}); a leader's empty \
         answer believed after {:.2} s (grace {:?})",
        after.as_secs_f64(),
        check_ttl
    );
}
