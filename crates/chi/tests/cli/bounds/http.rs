//! The HTTP doors: `chi agent`'s port and `chi proxy`'s listener, probed with raw sockets (the
//! probes of the hostile-input report) and hyper backends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Server, agent, closed_within, parse, proxy, register, request};

/// A backend that reads each request body to the end (counting its bytes in `received`), waits
/// `delay`, then answers `got N`.
struct Drain {
    port: u16,
    received: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Drain {
    fn start(delay: Duration) -> Drain {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let counter = counter.clone();
                            async move {
                                let mut body = req.into_body();
                                let mut n = 0u64;
                                while let Some(Ok(frame)) = body.frame().await {
                                    if let Some(d) = frame.data_ref() {
                                        n += d.len() as u64;
                                        counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                                    }
                                }
                                tokio::time::sleep(delay).await;
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(format!(
                                        "got {n}"
                                    ))),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Drain {
            port,
            received,
            _runtime: runtime,
        }
    }
}

/// A backend answering every request with `answer`, raw, on a thread.
fn raw_backend(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(answer.as_bytes());
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(200));
            });
        }
    });
    port
}

/// Connections that send a request head one header line every 300 ms (slowloris) are cut at
/// the header timeout, on the agent's port and the proxy's listener, while a plain request is
/// served; before, 500 such connections were held as long as the client liked.
#[test]
fn slowloris_is_cut_at_the_header_timeout() {
    let env = [("CHI_HEADER_TIMEOUT", "1s")];
    let agent = agent(&env, &[]);
    let proxy = proxy(&agent.url(), &env, &[]);
    for server in [&agent, &proxy] {
        let mut conns: Vec<Option<TcpStream>> = (0..100)
            .map(|_| {
                let mut s = TcpStream::connect(&server.addr).expect("connect");
                s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
                    .expect("write");
                Some(s)
            })
            .collect();
        let start = Instant::now();
        let mut last_cut = Duration::ZERO;
        while conns.iter().any(Option::is_some) && start.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(300));
            for slot in &mut conns {
                let Some(s) = slot else { continue };
                let _ = s.write_all(b"x-drip: 1\r\n");
                s.set_nonblocking(true).expect("nonblocking");
                let mut buf = [0u8; 512];
                let cut = match s.read(&mut buf) {
                    Ok(_) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if cut {
                    *slot = None;
                    last_cut = start.elapsed();
                }
            }
        }
        let held = conns.iter().filter(|c| c.is_some()).count();
        println!(
            "[bounds] slowloris on {}: 100 connections, {held} still open after {:.1} s, the last cut after {:.2} s (header timeout 1 s)",
            server.addr,
            start.elapsed().as_secs_f64(),
            last_cut.as_secs_f64()
        );
        assert_eq!(
            held, 0,
            "slowloris connections still open on {}",
            server.addr
        );
        assert!(last_cut < Duration::from_secs(6), "{last_cut:?}");
        let (status, _) = request(
            &server.admin,
            "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert!(
            server.metric("chi_refused_total", "reason=\"header_timeout\"") >= 1.0,
            "the cuts are counted"
        );
    }
}

/// A connection that sends nothing is closed at the header timeout, and one left idle after a
/// request at the idle timeout.
#[test]
fn silent_and_idle_connections_are_closed() {
    let env = [("CHI_HEADER_TIMEOUT", "1s"), ("CHI_IDLE_TIMEOUT", "1s")];
    let agent = agent(&env, &[]);
    let mut silent = TcpStream::connect(&agent.addr).expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(6));
    assert!(closed.is_some(), "a silent connection stays open");
    let mut idle = TcpStream::connect(&agent.addr).expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let (after, text) = closed_within(&mut idle, Duration::from_secs(6)).expect("closed");
    assert_eq!(parse(&text).0, 200, "{text}");
    println!(
        "[bounds] agent: silent connection closed after {:?}, idle keep-alive after {:.2} s",
        closed.map(|c| c.0),
        after.as_secs_f64()
    );
}

/// POSTs that declare 15 MiB and stall 64 KiB short: before, `chi proxy` held each body whole
/// (its RSS grew 84 MiB for three) and never timed them out. Now the body streams to the
/// backend as it comes, the proxy's memory stays flat, and the stalled request ends with 408 at
/// the body timeout.
#[test]
fn stalled_uploads_stream_to_the_backend_and_time_out() {
    let backend = Drain::start(Duration::ZERO);
    let agent = agent(&[], &[]);
    assert_eq!(
        register(&agent.admin, "upload", "upload-1", backend.port, "").0,
        204
    );
    // mimalloc purges freed pages at once: RSS shows what is held, not what was.
    let proxy = proxy(
        &agent.url(),
        &[("CHI_BODY_TIMEOUT", "2s"), ("MIMALLOC_PURGE_DELAY", "0")],
        &[],
    );
    let (status, body) = request(
        &proxy.addr,
        "POST /upload/ HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    );
    assert_eq!((status, body.as_str()), (200, "got 5"));
    let before = proxy.rss_kib();
    const DECLARED: usize = 15 << 20;
    const SENT: usize = DECLARED - (64 << 10);
    let uploads: Vec<_> = (0..3)
        .map(|_| {
            let addr = proxy.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                write!(
                    s,
                    "POST /upload/ HTTP/1.1\r\nhost: x\r\ncontent-length: {DECLARED}\r\n\r\n"
                )
                .expect("head");
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..SENT / chunk.len() {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let stalled = Instant::now();
                let answer = closed_within(&mut s, Duration::from_secs(15));
                (stalled.elapsed(), answer)
            })
        })
        .collect();
    // While the clients stall, the backend has had what they sent, and the proxy's memory is
    // flat.
    let start = Instant::now();
    while backend.received.load(Ordering::Relaxed) < 3 * SENT as u64 - (1 << 20)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = proxy.rss_kib();
    let received = backend.received.load(Ordering::Relaxed);
    let answers: Vec<_> = uploads
        .into_iter()
        .map(|u| u.join().expect("upload thread"))
        .collect();
    println!(
        "[bounds] 3 uploads of 15 MiB stalled 64 KiB short: backend received {:.1} MiB before the stall ended; proxy RSS {before} -> {during} KiB (+{} KiB); answers after the stall: {:?}",
        received as f64 / f64::from(1 << 20),
        during.saturating_sub(before),
        answers
            .iter()
            .map(|(t, a)| (
                format!("{:.2} s", t.as_secs_f64()),
                a.as_ref().map(|a| parse(&a.1).0)
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        during.saturating_sub(before) < 16 << 10,
        "the proxy's RSS grew {} KiB",
        during - before
    );
    assert!(
        received >= 3 * SENT as u64 - (1 << 20),
        "not streamed: {received} bytes"
    );
    for (stalled_for, answer) in answers {
        let (_, text) = answer.expect("the stalled request is ended");
        assert_eq!(parse(&text).0, 408, "{text}");
        assert!(stalled_for < Duration::from_secs(8), "{stalled_for:?}");
    }
    assert!(proxy.metric("chi_refused_total", "reason=\"body_timeout\"") >= 3.0);
}

/// The agent's JSON bodies are capped: more is 413 with a body that says the bound, declared or
/// chunked; a stalled body is 408 at the body timeout.
#[test]
fn the_agents_bodies_are_capped_and_timed() {
    let agent = agent(&[("CHI_BODY_TIMEOUT", "1s")], &[]);
    let meta: String = (0..300)
        .map(|n| format!(r#""k{n}":"{}""#, "v".repeat(1000)))
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = register(
        &agent.admin,
        "big",
        "big-1",
        80,
        &format!(r#","meta":{{{meta}}}"#),
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("at most 262144 bytes") && body.contains("--max-body"),
        "{body}"
    );
    let chunked = format!(
        "PUT /v1/services/big/instances/big-1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        300_000,
        " ".repeat(300_000)
    );
    let (status, body) = request(&agent.admin, &chunked);
    assert_eq!(status, 413, "{body}");
    let mut s = TcpStream::connect(&agent.admin).expect("connect");
    s.write_all(b"PUT /v1/services/slow/instances/slow-1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":")
        .expect("write");
    let (after, text) = closed_within(&mut s, Duration::from_secs(8)).expect("ended");
    assert_eq!(parse(&text).0, 408, "{text}");
    println!(
        "[bounds] agent: stalled body answered 408 after {:.2} s",
        after.as_secs_f64()
    );
    assert!(agent.metric("chi_refused_total", "reason=\"body_size\"") >= 2.0);
}

/// A backend's `Content-Length` beside `Transfer-Encoding: chunked` is dropped (RFC 9112
/// §6.1), so the client gets the whole body instead of a stale length's worth; a malformed
/// chunked request is 400, not 413.
#[test]
fn the_proxy_keeps_message_framing_honest() {
    let port = raw_backend(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    );
    let agent = agent(&[], &[]);
    assert_eq!(
        register(&agent.admin, "framing", "framing-1", port, "").0,
        204
    );
    let proxy = proxy(&agent.url(), &[], &[]);
    let (status, body) = request(
        &proxy.addr,
        "GET /framing/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    // The client's decoder: a length, or chunks.
    let text = if body.starts_with("hello") {
        body
    } else {
        body.lines().nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(text, "hello world", "a stale length cut the body");

    let (status, body) = request(
        &proxy.addr,
        "POST /framing/ HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");
}

/// Over `--max-connections` a connection is answered 503 with `Retry-After` and closed; the
/// connections already there are served, and a new one is once they leave.
#[test]
fn connections_over_the_limit_get_503_with_retry_after() {
    let env = [("CHI_MAX_CONNECTIONS", "20")];
    let agent = agent(&env, &[]);
    let proxy = proxy(&agent.url(), &env, &[]);
    for server in [&agent, &proxy] {
        let mut held: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(&server.addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut over = TcpStream::connect(&server.addr).expect("connect");
        over.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("write");
        let (_, text) = closed_within(&mut over, Duration::from_secs(5)).expect("refused");
        let (status, body) = parse(&text);
        assert_eq!(status, 503, "{text}");
        assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
        assert!(body.contains("--max-connections"), "{body}");
        // One already there still gets answers.
        // One already there still gets answers (the agent's 404, the proxy's 400: `/` names
        // no service).
        held[0]
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("write");
        let (_, text) = closed_within(&mut held[0], Duration::from_secs(5)).expect("served");
        assert!(matches!(parse(&text).0, 400 | 404), "{text}");
        held.clear();
        let served = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            matches!(
                request(
                    &server.addr,
                    "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                )
                .0,
                400 | 404
            )
        });
        assert!(served, "still refused after the others left");
        assert!(server.metric("chi_refused_total", "reason=\"connections\"") >= 1.0);
    }
}

/// Over `--max-requests` in flight, the proxy answers 503 with `Retry-After` at once.
#[test]
fn requests_over_the_limit_get_503_with_retry_after() {
    let backend = Drain::start(Duration::from_millis(1500));
    let agent = agent(&[], &[]);
    assert_eq!(
        register(&agent.admin, "slow", "slow-1", backend.port, "").0,
        204
    );
    let proxy = proxy(&agent.url(), &[("CHI_MAX_REQUESTS", "2")], &[]);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = proxy.addr.clone();
            std::thread::spawn(move || {
                request(
                    &addr,
                    "GET /slow/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let mut s = TcpStream::connect(&proxy.addr).expect("connect");
    s.write_all(b"GET /slow/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let (_, text) = closed_within(&mut s, Duration::from_secs(5)).expect("answered");
    assert_eq!(parse(&text).0, 503, "{text}");
    assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    for s in slow {
        assert_eq!(s.join().expect("thread").0, 200);
    }
    assert!(proxy.metric("chi_refused_total", "reason=\"requests\"") >= 1.0);
}

/// The agent's registrations through its API are bounded like the library's: more than 64
/// tags is a 400 naming the field.
#[test]
fn the_agent_refuses_oversized_tags() {
    let agent: Server = agent(&[], &[]);
    let tags: Vec<String> = (0..65).map(|n| format!("\"t{n}\"")).collect();
    let (status, body) = register(
        &agent.admin,
        "tags",
        "tags-1",
        80,
        &format!(r#","tags":[{}]"#, tags.join(",")),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 64 tags"), "{body}");
}
