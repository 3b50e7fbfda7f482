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
//! The streams ([`client`]) stand in for gRPC clients on other machines but share this one's
//! cores with the server, so they are plain HTTP/2, as cheap as a correct client can be. Through
//! tonic's client (a task per stream, another per request body, a write per ACK) they took as
//! much CPU per change as the server did.
//!
//! `cargo bench -p chi --bench xds_fanout [-- STREAMS SERVICES ENDPOINTS CHANGES]`
//! (default 1000 50 100 20).
#![allow(missing_docs, clippy::unwrap_used)]

mod client;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::mpsc;

use client::{Report, connection};

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const STREAMS_PER_CONNECTION: usize = 100;

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
