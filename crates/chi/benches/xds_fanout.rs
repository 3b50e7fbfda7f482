//! `chi xds` fan-out: how long a registry change takes to reach every ADS stream.
//!
//! A black-box bench of the release binary: a `chi agent` holds the embedded registry with
//! SERVICES x ENDPOINTS instances, `chi xds` serves it, and STREAMS ADS streams (spread over a few
//! HTTP/2 connections, like many clients) each subscribe to the ClusterLoadAssignment of every
//! service and ACK every response. Then, CHANGES times, one instance is registered and the time
//! from the registration to the EDS response is taken on every stream. Beside it, in the same
//! run, the registry's own floor: the same registration seen by a plain `chi://` watch (the
//! agent's JSON-lines watch), which `chi xds` itself reads through.
//!
//! Also printed: the resident memory of `chi xds` per stream: RSS with every stream open and
//! served, minus RSS with the first one (which made the server follow every service: one
//! registry watch each, the instances, the encoded resources, paid once however many streams
//! follow), divided by the other streams. The last line sums it up:
//! `xds fanout: streams=N endpoints=M push_p99=X ms rss_per_stream=Y KiB` (M is SERVICES x
//! ENDPOINTS; the p99 is over every stream of every change).
//!
//! The streams stand in for gRPC clients on other machines but share this one's cores with the
//! server, so they are as cheap as a correct client can be: plain HTTP/2 (the `h2` crate), one
//! task per connection that reads what arrived, lets the streams that got something ACK it, and
//! sends the ACKs in one write. Through tonic's client (a task per stream, another per request
//! body, a write per ACK) they took as much CPU per change as the server did.
//!
//! `cargo bench -p chi --bench xds_fanout [-- STREAMS SERVICES ENDPOINTS CHANGES]`
//! (default 1000 50 100 20).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::{self, BufRead, BufReader, IoSlice};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const STREAMS_PER_CONNECTION: usize = 100;
/// What one read of a client connection takes from its socket at most.
const READ_CHUNK: usize = 256 << 10;

/// What a bench stream reads of a `DiscoveryResponse`: its version and nonce, and the resources
/// as slices of the received bytes (decoded only until the initial state is complete).
#[derive(Clone, PartialEq, prost::Message)]
struct Response {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// A `DiscoveryRequest` for every service's endpoints as one gRPC message (its 5-byte prefix,
/// then the request): the subscription (names and type, the same on every request of every
/// stream) encoded once, then the version and nonce it answers, and the node on a stream's
/// first request only (as gRPC's clients send it).
fn request(subscription: &[u8], node: Option<&Node>, version: &str, nonce: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(subscription.len() + version.len() + nonce.len() + 64);
    b.put_slice(&[0; 5]);
    prost::encoding::string::encode(1, &version.to_owned(), &mut b);
    if let Some(node) = node {
        prost::encoding::message::encode(2, node, &mut b);
    }
    b.put_slice(subscription);
    prost::encoding::string::encode(5, &nonce.to_owned(), &mut b);
    let len = u32::try_from(b.len() - 5).unwrap();
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// A client connection's socket as its HTTP/2 codec sees it: reads come from one large read of
/// the socket, writes gather in `out` and leave in one write per poll of the connection's task
/// ([`Shared::send_out`]). The streams stand in for clients on other machines; sharing this
/// one with the server, they should cost it as little CPU as they can.
struct BenchIo {
    shared: Arc<Shared>,
    read: BytesMut,
}

struct Shared {
    tcp: TcpStream,
    out: Mutex<Vec<u8>>,
}

impl Shared {
    /// Writes what the codec gathered, as far as the socket takes it now.
    fn send_out(&self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut out = self.out.lock().unwrap();
        while !out.is_empty() {
            match self.tcp.try_write(&out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_write_ready(cx) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncRead for BenchIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.read.is_empty() {
            ready!(this.shared.tcp.poll_read_ready(cx))?;
            this.read.reserve(READ_CHUNK);
            match this.shared.tcp.try_read_buf(&mut this.read) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BenchIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.out.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut out = self.shared.out.lock().unwrap();
        for b in bufs {
            out.extend_from_slice(b);
        }
        Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where the streams report: the arrivals of each change (per poll of a connection, in one
/// batch), and each stream's initial state complete.
#[derive(Clone)]
struct Report {
    arrivals: mpsc::UnboundedSender<Vec<(usize, Instant)>>,
    ready: mpsc::UnboundedSender<()>,
}

/// What the streams of a connection share: the subscription they send, the number of services
/// that makes their initial state complete, and the arrivals of this poll (reported in one
/// batch per poll of the connection).
struct Streams {
    services: usize,
    subscription: Bytes,
    ready: mpsc::UnboundedSender<()>,
    arrived: Mutex<Vec<(usize, Instant)>>,
}

/// One ADS stream: it subscribes to every service's endpoints and ACKs every response; every
/// response after the initial state is a change.
async fn stream(
    s: usize,
    response: h2::client::ResponseFuture,
    mut send: h2::SendStream<Bytes>,
    shared: Arc<Streams>,
) {
    let Ok(response) = response.await else {
        return;
    };
    let mut recv = response.into_body();
    let mut known = HashSet::new();
    let mut ready = false;
    // A gRPC message split across DATA frames.
    let mut partial = BytesMut::new();
    while let Some(Ok(chunk)) = recv.data().await {
        let _ = recv.flow_control().release_capacity(chunk.len());
        let mut data = if partial.is_empty() {
            chunk
        } else {
            partial.extend_from_slice(&chunk);
            partial.split().freeze()
        };
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if data.len() < 5 + len {
                break;
            }
            let message = data.slice(5..5 + len);
            data.advance(5 + len);
            let r = Response::decode(message).expect("a DiscoveryResponse");
            if ready {
                shared.arrived.lock().unwrap().push((s, Instant::now()));
            } else {
                for resource in &r.resources {
                    let Ok(any) = Any::decode(resource.clone()) else {
                        continue;
                    };
                    if let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) {
                        known.insert(cla.cluster_name);
                    }
                }
                if known.len() == shared.services {
                    ready = true;
                    let _ = shared.ready.send(());
                }
            }
            let ack = request(&shared.subscription, None, &r.version_info, &r.nonce);
            if send.send_data(ack, false).is_err() {
                return;
            }
        }
        partial.extend_from_slice(&data);
    }
}

/// One client connection and its streams, driven by a single task: one poll reads what
/// arrived, lets the streams that got something answer it, and sends the answers in one write.
async fn connection(
    addr: String,
    mut opens: mpsc::UnboundedReceiver<usize>,
    services: usize,
    subscription: Bytes,
    report: Report,
) {
    let tcp = TcpStream::connect(&addr).await.expect("connect to chi xds");
    tcp.set_nodelay(true).expect("nodelay");
    let shared = Arc::new(Shared {
        tcp,
        out: Mutex::new(Vec::new()),
    });
    let io = BenchIo {
        shared: shared.clone(),
        read: BytesMut::new(),
    };
    let handshake = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(io);
    let (mut send_request, mut conn) = {
        let mut handshake = std::pin::pin!(handshake);
        std::future::poll_fn(|cx| {
            let r = handshake.as_mut().poll(cx);
            shared.send_out(cx).expect("write");
            r
        })
        .await
        .expect("HTTP/2 handshake")
    };
    let uri = format!("http://{addr}{SOTW}");
    let streams_of = Arc::new(Streams {
        services,
        subscription,
        ready: report.ready.clone(),
        arrived: Mutex::new(Vec::new()),
    });
    let mut waiting = VecDeque::new();
    let mut streams = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r);
        }
        while let Poll::Ready(Some(s)) = opens.poll_recv(cx) {
            waiting.push_back(s);
        }
        while let Some(&s) = waiting.front() {
            if send_request.poll_ready(cx).is_pending() {
                break;
            }
            waiting.pop_front();
            let head = http::Request::post(&uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request head");
            let (response, mut send) = send_request.send_request(head, false).expect("stream");
            let node = Node {
                id: format!("bench-{s}"),
                ..Default::default()
            };
            send.send_data(
                request(&streams_of.subscription, Some(&node), "", ""),
                false,
            )
            .expect("first request");
            streams.push(stream(s, response, send, streams_of.clone()));
        }
        // Polls only the streams woken since the last poll.
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        let arrived = std::mem::take(&mut *streams_of.arrived.lock().unwrap());
        if !arrived.is_empty() {
            let _ = report.arrivals.send(arrived);
        }
        // The answers queued above, written into `out`, then sent in one write.
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r);
        }
        shared.send_out(cx).expect("write to chi xds");
        Poll::Pending
    })
    .await
    .expect("the connection to chi xds");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chi ARGS` and returns it with the first stdout line containing `marker`.
fn start(args: &[&str], marker: &str) -> (Killed, String) {
    let (child, mut lines) = start_all(args, marker);
    (child, lines.pop().unwrap_or_default())
}

/// Starts `chi ARGS` and returns it with every stdout line up to the first containing `marker`.
fn start_all(args: &[&str], marker: &str) -> (Killed, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chi"))
        .args(args)
        .env_remove("CHI_REGISTRY")
        .env_remove("CHI_CONFIG")
        .env_remove("CHI_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chi");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("a line").expect("read");
        let done = line.contains(marker);
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), seen)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn instance(service: &str, id: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": service, "address": "127.0.0.1", "port": port,
        "meta": {"region": "eu-west-1", "zone": format!("eu-west-1{}", if port.is_multiple_of(2) { 'a' } else { 'b' })},
    })
}

async fn register(http: &reqwest::Client, admin: &str, service: &str, id: &str, port: u16) {
    let url = format!("http://{admin}/v1/services/{service}/instances/{id}");
    let r = http
        .put(url)
        .json(&instance(service, id, port))
        .send()
        .await
        .expect("PUT");
    assert!(r.status().is_success(), "register: {}", r.status());
}

/// Says which streams missed a change (by connection) and, for a few of them, what `chi xds`'s
/// console says it last sent them and heard from them (times from the change's registration).
async fn missed(http: &reqwest::Client, xds_admin: &str, got: &[bool], t0: Instant) {
    let missing: Vec<usize> = (0..got.len()).filter(|s| !got[*s]).collect();
    let mut per_connection = std::collections::BTreeMap::new();
    for s in &missing {
        *per_connection
            .entry(s / STREAMS_PER_CONNECTION)
            .or_insert(0) += 1;
    }
    eprintln!(
        "{} streams missed the change; per connection: {per_connection:?}",
        missing.len()
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let t0_ms = now_ms - t0.elapsed().as_millis() as i64;
    let Ok(reply) = http
        .get(format!("http://{xds_admin}/ui/api/state"))
        .send()
        .await
    else {
        return;
    };
    let state: serde_json::Value = reply.json().await.unwrap_or_default();
    let clients = state["xds"].as_array().cloned().unwrap_or_default();
    for s in missing.iter().take(5) {
        let node = format!("bench-{s}");
        for t in clients
            .iter()
            .filter(|c| c["node"] == node.as_str())
            .flat_map(|c| c["types"].as_array().cloned().unwrap_or_default())
        {
            let at = |v: &serde_json::Value| v["at"].as_i64().unwrap_or(t0_ms) - t0_ms;
            eprintln!(
                "  {node} {}: sent nonce {} at {} ms; last answer nonce {} at {} ms",
                t["kind"],
                t["sent"]["nonce"],
                at(&t["sent"]),
                t["answer"]["nonce"],
                at(&t["answer"])
            );
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name:<34} n={:<6} p50={:>8.2?} p90={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let streams = args.first().copied().unwrap_or(1000);
    let services = args.get(1).copied().unwrap_or(50);
    let endpoints = args.get(2).copied().unwrap_or(100);
    let changes = args.get(3).copied().unwrap_or(20);
    // One thread for the clients: they share the machine with the server, and a second worker
    // cost them about a quarter more CPU in wake-ups between the two (measured).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(streams, services, endpoints, changes));
}

async fn run(streams: usize, services: usize, endpoints: usize, changes: usize) {
    let dir = std::env::temp_dir().join(format!("chi-xds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("host.yaml");
    std::fs::write(
        &config,
        // The agent's embedded registry expires a registration 10 s after its last keep-alive
        // by default; the bench registers once, so its instances must outlive the run.
        "service_discovery:\n  registries:\n    memory:\n      enabled: true\n      ttl: 1h\n  registration:\n    name: \"bench-host\"\n    address: \"127.0.0.1\"\n    port: 1\n",
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let (_agent, line) = start(
        &["agent", "-c", &config, "--admin", "127.0.0.1:0"],
        "admin on http://",
    );
    let admin = line
        .rsplit("http://")
        .next()
        .expect("admin")
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..services).map(|s| format!("svc-{s:03}")).collect();
    let t = Instant::now();
    let mut jobs = Vec::new();
    for (s, name) in names.iter().enumerate() {
        for e in 0..endpoints {
            let (http, admin, name) = (http.clone(), admin.clone(), name.clone());
            let port = u16::try_from(10_000 + s * 100 + e).unwrap_or(u16::MAX);
            jobs.push(async move { register(&http, &admin, &name, &format!("i{e}"), port).await });
            if jobs.len() == 64 {
                futures_util::future::join_all(std::mem::take(&mut jobs)).await;
            }
        }
    }
    futures_util::future::join_all(jobs).await;
    println!(
        "registered {services} services x {endpoints} endpoints in {:.2?}",
        t.elapsed()
    );

    let registry = format!("chi://{admin}");
    let max = (streams + 10).to_string();
    let (xds, lines) = start_all(
        &[
            "xds",
            "--registry",
            &registry,
            "--listen",
            "127.0.0.1:0",
            "--max-streams",
            &max,
            "--admin",
            "127.0.0.1:0",
        ],
        "xds on grpc://",
    );

    let line = lines.last().cloned().unwrap_or_default();
    let xds_addr = line.trim_start_matches("xds on grpc://").trim().to_owned();
    let xds_admin = lines[0]
        .rsplit("http://")
        .next()
        .expect("admin")
        .trim()
        .to_owned();
    let pid = xds.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid);

    // The streams: each subscribes to every service's endpoints and ACKs every response; it
    // reports the arrival time of every response after the initial state.
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Vec<(usize, Instant)>>();
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<()>();
    let subscription = {
        let mut b = BytesMut::new();
        prost::encoding::string::encode_repeated(3, &names, &mut b);
        prost::encoding::string::encode(4, &EDS.to_owned(), &mut b);
        b.freeze()
    };
    let report = Report {
        arrivals: arrivals_tx,
        ready: ready_tx,
    };
    let mut opens = Vec::new();
    for _ in 0..streams.div_ceil(STREAMS_PER_CONNECTION) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (addr, subscription, report) = (xds_addr.clone(), subscription.clone(), report.clone());
        tokio::spawn(connection(addr, rx, services, subscription, report));
        opens.push(tx);
    }
    drop(report);
    let open = |s: usize| {
        opens[s / STREAMS_PER_CONNECTION]
            .send(s)
            .expect("a connection task");
    };
    // One stream first: it makes chi xds follow every service (one registry watch each, the
    // instances, the encoded resources), which the server pays once however many streams
    // follow; the memory per stream is measured over it.
    open(0);
    let warm = tokio::time::timeout(Duration::from_secs(60), ready.recv()).await;
    assert!(
        matches!(warm, Ok(Some(()))),
        "the first stream got no initial state"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_one = rss_kib(pid);
    let t = Instant::now();
    (1..streams).for_each(open);
    for i in 1..streams {
        let got = tokio::time::timeout(Duration::from_secs(120), ready.recv()).await;
        assert!(
            matches!(got, Ok(Some(()))),
            "only {i} of {streams} streams got the initial state"
        );
    }
    println!(
        "{streams} streams over {} connections got the initial state ({} resources each) in {:.2?}",
        opens.len(),
        services,
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid);
    let others = streams.saturating_sub(1).max(1) as f64;
    let rss_per_stream = (rss_after.saturating_sub(rss_one)) as f64 / others;
    println!(
        "chi xds RSS: {rss_before} KiB before any stream, {rss_one} KiB with the first, {rss_after} KiB with all {streams}: {rss_per_stream:.1} KiB per stream after the first"
    );

    // The registry's floor: a plain chi:// watch of the changed service.
    let mut fanout = Vec::new();
    let mut floor = Vec::new();
    let mut last_all = Vec::new();
    for c in 0..changes {
        let service = &names[c % names.len()];
        let mut watch = http
            .get(format!("http://{admin}/v1/services/{service}/watch"))
            .send()
            .await
            .expect("watch");
        // The first line is the reset with the current list.
        let mut buf = Vec::new();
        while !buf.contains(&b'\n') {
            let chunk = watch.chunk().await.expect("bytes").expect("the reset line");
            buf.extend_from_slice(&chunk);
        }
        let t0 = Instant::now();
        register(
            &http,
            &admin,
            service,
            &format!("new-{c}"),
            9_000 + c as u16,
        )
        .await;
        let floor_task = tokio::spawn(async move {
            let mut buf = buf;
            loop {
                let lines = buf.iter().filter(|b| **b == b'\n').count();
                if lines >= 2 {
                    return t0.elapsed();
                }
                match watch.chunk().await {
                    Ok(Some(b)) => buf.extend_from_slice(&b),
                    _ => return t0.elapsed(),
                }
            }
        });
        let mut got = vec![false; streams];
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while n < streams {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(batch)) => {
                    for (s, at) in batch {
                        if !got[s] {
                            got[s] = true;
                            n += 1;
                            fanout.push(at.duration_since(t0));
                        }
                    }
                }
                _ => break,
            }
        }
        last_all.push(t0.elapsed());
        if n < streams {
            missed(&http, &xds_admin, &got, t0).await;
        }
        assert_eq!(
            n, streams,
            "change {c}: only {n} of {streams} streams got it"
        );
        floor.push(floor_task.await.expect("floor"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{changes} changes, each registering one instance; times from the registration request:"
    );
    summary("registry floor (chi:// watch line)", floor);
    let push_p99 = {
        let mut sorted = fanout.clone();
        sorted.sort_unstable();
        percentile(&sorted, 0.99)
    };
    summary("EDS response, every stream", fanout);
    summary("last stream of each change", last_all);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "chi xds RSS 2 s after the last change: {} KiB; load average: {}",
        rss_kib(pid),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "xds fanout: streams={streams} endpoints={} push_p99={:.1} ms rss_per_stream={rss_per_stream:.1} KiB",
        services * endpoints,
        push_p99.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
