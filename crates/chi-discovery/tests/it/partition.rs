//! Network partitions, made with `ip netns` and veth pairs on this machine (we run as root).
//!
//! # Topology
//!
//! Every test builds its own little network and tears it down on drop (also on panic):
//!
//! ```text
//!  root namespace (the test)          hub namespace: bridge br0        member namespaces
//!  chp{pid}-{n}c  10.213.K.1  ── veth ── c ─┐                    ┌─ m0 ── veth ── e0  K.10, K+1.10  etcd m0
//!  chp{pid}-{n}w  10.213.K+1.1 ─ veth ── w ─┼──── br0 (L2) ──────┼─ m1 ── veth ── e0  K.11, K+1.11  etcd m1
//!                                           ┘                    └─ m2 ── veth ── e0  K.12, K+1.12  etcd m2
//! ```
//!
//! Subnet `10.213.K.0/24` is the client's path (and the members' peer network); `10.213.K+1.0/24`
//! is a second, independent path from the root namespace (the "writer", another process of the
//! fleet that is not cut off). Only addresses inside these two subnets are used, on interfaces the
//! test created; no existing interface or route is touched. The root namespace gets two veth ends
//! and their connected routes, which vanish with the namespaces. IP forwarding is not needed (the
//! hub is a bridge).
//!
//! A cut sets the hub-side end of a link down: the other end stays administratively up with no
//! carrier, so packets are silently dropped (no RST, no "unreachable"), which is what a real
//! partition looks like to a TCP client. (`tc netem` is not available in this kernel.)
//!
//! Names carry the test process's pid (`chi-p{pid}-{n}-...`), so a crashed earlier run cannot
//! collide; leftovers of dead pids with the same prefix are removed at start.
//!
//! # Behaviour (what the tests assert)
//!
//! - **One member cut off** (`one_member_cut_off_*`): the member the client is talking to is cut.
//!   Requests to it time out; the etcd adapter gives each attempt a share of the request timeout
//!   and moves on to the next member, so discovery and registration keep working through the two
//!   others after a failover window well below the lease TTL. The session lease stays alive (same
//!   lease id, no re-registration), the watch moves to a live member and resyncs with a `Reset`.
//!   After the heal the member rejoins the raft group and its own (serializable) copy of the keys
//!   equals the cluster's: nothing lost.
//! - **Client cut off** (`client_cut_off_*`): the client reaches no member for longer than the
//!   lease TTL. The discovery cache keeps serving the last good list, marked stale, never empty;
//!   etcd expires the lease, and another client (the writer, on the other path) sees the
//!   registration vanish within the TTL. After the heal the keep-alive answers `Lost`, the manager
//!   registers again (a new lease), and the watch resumes and resyncs: the watcher's view equals
//!   the registry's again, including a change made by the writer during the cut.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::Registry;
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::{Change, DiscoveryClient, Instance, ServiceManager};
use etcd_client::{Client, GetOptions};

use chi_test_support::{self as harness, Proc, eventually, scaled};

const IP: &str = "/usr/sbin/ip";
const PREFIX: &str = "chi-p";
const LINK_PREFIX: &str = "chp";

/// Runs `ip ARGS`, panicking with its stderr (and the likely fix) when it fails.
fn ip(args: &[&str]) {
    let out = Command::new(IP)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {IP} (apt-get install iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}\nthe partition tests need root (CAP_NET_ADMIN) and iproute2 with \
         network namespaces, veth and bridge support",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `ip ARGS`, output as text, errors ignored (for cleanup and discovery of what exists).
fn ip_out(args: &[&str]) -> String {
    Command::new(IP)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes namespaces and root links of earlier runs whose process is gone.
fn clean_leftovers() {
    for line in ip_out(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(rest) = name.strip_prefix(PREFIX) {
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !pid_alive(pid) {
                eprintln!("[partition] removing leftover namespace {name}");
                let _ = ip_out(&["netns", "del", name]);
            }
        }
    }
    for line in ip_out(&["-o", "link", "show"]).lines() {
        // "12: chp123-0c@if11: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or("");
        if let Some(rest) = name.strip_prefix(LINK_PREFIX) {
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !pid_alive(pid) {
                eprintln!("[partition] removing leftover link {name}");
                let _ = ip_out(&["link", "del", name]);
            }
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The test network (see the module docs). Deleted on drop.
struct Net {
    hub: String,
    members: Vec<String>,
    client_link: String,
    writer_link: String,
    /// Third octet of the client subnet; the writer's is `k + 1`.
    k: u8,
}

impl Net {
    fn new(members: usize) -> Net {
        clean_leftovers();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{n}");
        // Two free /24s in 10.213.0.0/16: not on any interface or route of the root namespace.
        let used = format!("{}{}", ip_out(&["-4", "-o", "addr"]), ip_out(&["route"]));
        let start = ((pid as usize * 7 + n as usize * 2) % 120) * 2;
        let k = (0..120)
            .map(|i| ((start + 2 * i) % 240) as u8)
            .find(|k| {
                !used.contains(&format!("10.213.{k}."))
                    && !used.contains(&format!("10.213.{}.", k + 1))
            })
            .expect("a free 10.213.x.0/24 pair");
        let net = Net {
            hub: format!("{tag}-hub"),
            members: (0..members).map(|i| format!("{tag}-m{i}")).collect(),
            client_link: format!("{LINK_PREFIX}{pid}-{n}c"),
            writer_link: format!("{LINK_PREFIX}{pid}-{n}w"),
            k,
        };
        // From here on, drop cleans up whatever was made.
        ip(&["netns", "add", &net.hub]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, ns) in net.members.iter().enumerate() {
            ip(&["netns", "add", ns]);
            let hub_end = format!("m{i}");
            ip(&[
                "-n", &net.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "e0",
                "netns", ns,
            ]);
            ip(&["-n", &net.hub, "link", "set", &hub_end, "master", "br0"]);
            ip(&["-n", &net.hub, "link", "set", &hub_end, "up"]);
            for addr in [net.member_addr(i), net.member_writer_addr(i)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "e0"]);
            }
            ip(&["-n", ns, "link", "set", "e0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (link, hub_end, octet) in [
            (&net.client_link, "c", net.k),
            (&net.writer_link, "w", net.k + 1),
        ] {
            ip(&[
                "link", "add", link, "type", "veth", "peer", "name", hub_end, "netns", &net.hub,
            ]);
            ip(&["-n", &net.hub, "link", "set", hub_end, "master", "br0"]);
            ip(&["-n", &net.hub, "link", "set", hub_end, "up"]);
            ip(&["addr", "add", &format!("10.213.{octet}.1/24"), "dev", link]);
            ip(&["link", "set", link, "up"]);
        }
        net
    }

    /// Member `i`'s address on the client subnet (also its peer address).
    fn member_addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.k, 10 + i)
    }

    /// Member `i`'s address on the writer subnet.
    fn member_writer_addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.k + 1, 10 + i)
    }

    fn set(&self, hub_end: &str, up: bool) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            hub_end,
            if up { "up" } else { "down" },
        ]);
    }

    /// Cuts member `i` off from everyone (clients and peers).
    fn cut_member(&self, i: usize) {
        self.set(&format!("m{i}"), false);
    }

    fn heal_member(&self, i: usize) {
        self.set(&format!("m{i}"), true);
    }

    /// Cuts the client path (the writer path stays).
    fn cut_client(&self) {
        self.set("c", false);
    }

    fn heal_client(&self) {
        self.set("c", true);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.members.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip_out(&["netns", "del", ns]);
        }
        // Deleting the hub destroys the veth pairs; this is for a half-built network.
        for link in [&self.client_link, &self.writer_link] {
            if ip_out(&["link", "show", link]).contains(link.as_str()) {
                let _ = ip_out(&["link", "del", link]);
            }
        }
    }
}

/// A three-member etcd cluster, one member per namespace of `net`. Dropped before the network.
struct Cluster {
    procs: Vec<Proc>,
    client_endpoints: Vec<String>,
    writer_endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(net: &Net) -> Cluster {
        let bin = harness::binary("etcd");
        let dir = tempfile::Builder::new()
            .prefix("chi-netns-etcd-")
            .tempdir()
            .expect("temp dir");
        let n = net.members.len();
        let initial = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", net.member_addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("chi-netns-{}-{}", std::process::id(), net.k);
        let procs = (0..n)
            .map(|i| {
                let a = net.member_addr(i);
                let b = net.member_writer_addr(i);
                let name = format!("m{i}");
                let data = dir.path().join(&name).display().to_string();
                let mut args: Vec<String> =
                    vec!["netns".into(), "exec".into(), net.members[i].clone()];
                args.push(bin.display().to_string());
                for s in [
                    "--name",
                    &name,
                    "--data-dir",
                    &data,
                    "--listen-client-urls",
                    &format!("http://{a}:2379,http://{b}:2379"),
                    "--advertise-client-urls",
                    &format!("http://{a}:2379"),
                    "--listen-peer-urls",
                    &format!("http://{a}:2380"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{a}:2380"),
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ] {
                    args.push(s.to_owned());
                }
                Proc::spawn(
                    &format!("etcd-{name}"),
                    Path::new(IP),
                    &args,
                    dir.path().join(format!("{name}.log")),
                )
            })
            .collect();
        let cluster = Cluster {
            procs,
            client_endpoints: (0..n)
                .map(|i| format!("{}:2379", net.member_addr(i)))
                .collect(),
            writer_endpoints: (0..n)
                .map(|i| format!("{}:2379", net.member_writer_addr(i)))
                .collect(),
            _dir: dir,
        };
        for (i, e) in cluster.client_endpoints.iter().enumerate() {
            let addr: SocketAddr = e.parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "etcd m{i} in its namespace did not start:\n{}",
                    cluster.procs[i].log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let t = eventually(Duration::from_secs(20), || async {
            let mut ok = 0;
            for i in 0..n {
                if cluster.leader_seen_by(i).await {
                    ok += 1;
                }
            }
            ok == n
        })
        .await;
        assert!(t.is_some(), "no etcd leader:\n{}", cluster.logs());
        cluster
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(Proc::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// A plain etcd-client for member `i` alone (on the writer path).
    async fn member_client(&self, i: usize) -> Option<Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect([self.writer_endpoints[i].clone()], Some(options)),
        )
        .await
        .ok()?
        .ok()
    }

    /// True when member `i` answers and knows a leader.
    async fn leader_seen_by(&self, i: usize) -> bool {
        let Some(mut c) = self.member_client(i).await else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), c.status()).await,
            Ok(Ok(s)) if s.leader() != 0
        )
    }

    /// Ids under `{prefix}/{service}/` in member `i`'s own store (a serializable read: what that
    /// member holds, not what the leader holds).
    async fn local_ids(&self, i: usize, service: &str) -> Option<BTreeSet<String>> {
        let mut c = self.member_client(i).await?;
        let dir = format!("/chi/services/{service}/");
        let resp = c
            .get(
                dir.clone(),
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .ok()?;
        Some(
            resp.kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok())
                .filter_map(|k| k.strip_prefix(&dir).map(str::to_owned))
                .collect(),
        )
    }
}

fn config(endpoints: Vec<String>, ttl: Duration) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        lease_ttl: ttl,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    }
}

fn inst(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, "10.0.0.1", port).with_id(id)
}

fn ids(list: &[Instance]) -> BTreeSet<String> {
    list.iter().map(|i| i.id.clone()).collect()
}

/// What a watcher task saw.
#[derive(Default)]
struct Seen {
    view: HashMap<String, Instance>,
    resets: usize,
    errors: usize,
}

/// Follows `client.watch(service)` in a task, applying every change to a shared view.
async fn follow(
    client: &DiscoveryClient,
    service: &str,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let mut w = client.watch(service).await.expect("watch");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(item) = w.next().await {
            let mut s = s.lock().expect("seen lock");
            match item {
                Ok(c) => {
                    if matches!(c, Change::Reset(_)) {
                        s.resets += 1;
                    }
                    c.apply(&mut s.view);
                }
                Err(_) => s.errors += 1,
            }
        }
    });
    (seen, task)
}

fn view_ids(seen: &Mutex<Seen>) -> BTreeSet<String> {
    seen.lock()
        .expect("seen lock")
        .view
        .keys()
        .cloned()
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_cut_off_cluster_keeps_serving_and_member_rejoins() {
    let _g = harness::heavy().await;
    let started = Instant::now();
    let net = Net::new(3);
    let cluster = Cluster::start(&net).await;
    let ttl = Duration::from_secs(4);
    let svc = "part-member";
    let reg = Etcd::connect(config(cluster.client_endpoints.clone(), ttl))
        .await
        .expect("connect");
    let manager = ServiceManager::new(Arc::new(reg.clone()));
    manager
        .register_instance(inst(svc, "x", 1))
        .await
        .expect("register x");
    let lease = reg.lease_id().await.expect("a session lease");
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(300),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .build(Arc::new(reg.clone()));
    assert_eq!(
        ids(&client.discover(svc).await.expect("discover")),
        set(&["x"])
    );
    let (seen, watch_task) = follow(&client, svc).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            view_ids(&seen) == set(&["x"])
        })
        .await
        .is_some(),
        "the watch did not start"
    );
    let resets_before = seen.lock().expect("seen").resets;

    // Cut member 0: the one the client has been talking to (requests start at the first).
    let cut_for = scaled(Duration::from_secs(12), Duration::from_secs(300));
    net.cut_member(0);
    let cut = Instant::now();
    let mut first_ok: Option<Duration> = None;
    let mut errors_after_failover = 0u32;
    let mut calls = 0u32;
    let mut empty_served = 0u32;
    let mut y_registered: Option<Duration> = None;
    let mut y_at: Option<Instant> = None;
    let mut watch_y: Option<Duration> = None;
    while cut.elapsed() < cut_for {
        calls += 1;
        match tokio::time::timeout(Duration::from_secs(3), reg.instances(svc)).await {
            Ok(Ok(list)) => {
                assert!(
                    ids(&list).contains("x"),
                    "x vanished during the cut: {list:?}"
                );
                first_ok.get_or_insert(cut.elapsed());
            }
            _ if first_ok.is_some() => errors_after_failover += 1,
            _ => {}
        }
        if client.cached(svc).is_none_or(|s| s.is_empty()) {
            empty_served += 1;
        }
        if y_registered.is_none() && cut.elapsed() > Duration::from_secs(1) {
            // A registration during the cut goes through the live members.
            let at = Instant::now();
            let r = manager
                .register_instance(inst(svc, "y", 2))
                .await
                .expect("register y during the cut");
            assert!(r.is_complete(), "{r:?}");
            y_registered = Some(at.elapsed());
            y_at = Some(Instant::now());
        }
        if let Some(at) = y_at
            && watch_y.is_none()
            && view_ids(&seen) == set(&["x", "y"])
        {
            watch_y = Some(at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failover = first_ok.expect("no successful discovery through the live members");
    let y_took = y_registered.expect("y registered");
    let status = manager.status();
    let rereg: u64 = status
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.reregistrations))
        .sum();
    let lease_after = reg.lease_id().await;

    net.heal_member(0);
    let rejoin = eventually(Duration::from_secs(30), || async {
        cluster.leader_seen_by(0).await && cluster.local_ids(0, svc).await == Some(set(&["x", "y"]))
    })
    .await;
    let final_list = ids(&reg.instances(svc).await.expect("list after heal"));
    let final_view = view_ids(&seen);
    let resets = seen.lock().expect("seen").resets - resets_before;

    println!(
        "[reliability] partition etcd member cut {}: failover {}, {calls} discoveries \
         ({errors_after_failover} failed after failover), register during cut {}, watch saw it \
         {}, lease {} (re-registrations {rereg}), rejoin after heal {}, watch resets {resets}, \
         empty lists served {empty_served}",
        secs(cut_for),
        secs(failover),
        secs(y_took),
        watch_y.map_or("never during the cut".into(), secs),
        if lease_after == Some(lease) {
            "kept"
        } else {
            "changed"
        },
        rejoin.map_or("never".into(), secs),
    );
    // About half the 2 s request timeout by design; the bound leaves room for a loaded machine
    // and still fails long before the lease (4 s) would be lost.
    assert!(
        failover < ttl * 3 / 4,
        "discovery took {failover:?} to fail over to a live member (lease TTL {ttl:?})"
    );
    assert_eq!(
        errors_after_failover, 0,
        "discovery failed again after the failover"
    );
    assert!(
        y_took < ttl * 3 / 4,
        "a registration during the cut took {y_took:?}"
    );
    // The watch moved to a live member and saw y during the cut.
    let watch_y =
        watch_y.unwrap_or_else(|| panic!("the watch never saw y during the cut: {final_view:?}"));
    assert!(
        watch_y < ttl * 3 / 4,
        "the watch saw y only after {watch_y:?}"
    );
    assert_eq!(empty_served, 0, "an empty list was served");
    assert_eq!(lease_after, Some(lease), "the session lease was lost");
    assert_eq!(rereg, 0, "the manager had to re-register: {status:?}");
    assert!(
        rejoin.is_some(),
        "member 0 did not rejoin with every key within 30 s of the heal (its keys: {:?}):\n{}",
        cluster.local_ids(0, svc).await,
        cluster.logs()
    );
    assert_eq!(final_list, set(&["x", "y"]));
    assert_eq!(
        final_view, final_list,
        "the watcher's view differs from etcd's"
    );

    watch_task.abort();
    manager.shutdown().await;
    drop(cluster);
    drop(net);
    println!(
        "[reliability] partition etcd member cut: test took {}",
        secs(started.elapsed())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cut_off_serves_stale_then_reregisters_and_resyncs() {
    let _g = harness::heavy().await;
    let started = Instant::now();
    let net = Net::new(3);
    let cluster = Cluster::start(&net).await;
    let ttl = Duration::from_secs(3);
    let svc = "part-client";
    let reg = Etcd::connect(config(cluster.client_endpoints.clone(), ttl))
        .await
        .expect("connect");
    // Another client of the fleet, on the path that stays up.
    let writer = Etcd::connect(config(
        cluster.writer_endpoints.clone(),
        Duration::from_secs(30),
    ))
    .await
    .expect("connect writer");
    writer.register(&inst(svc, "w0", 10)).await.expect("w0");
    let manager = ServiceManager::new(Arc::new(reg.clone()));
    manager
        .register_instance(inst(svc, "x", 1))
        .await
        .expect("register x");
    let lease = reg.lease_id().await.expect("a session lease");
    let client = DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(300),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .build(Arc::new(reg.clone()));
    assert_eq!(
        ids(&client.discover(svc).await.expect("discover")),
        set(&["w0", "x"])
    );
    let (seen, watch_task) = follow(&client, svc).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            view_ids(&seen) == set(&["w0", "x"])
        })
        .await
        .is_some(),
        "the watch did not start"
    );
    let resets_before = seen.lock().expect("seen").resets;

    let cut_for = scaled(Duration::from_secs(10), Duration::from_secs(300)).max(3 * ttl);
    net.cut_client();
    let cut = Instant::now();
    let mut lease_lost: Option<Duration> = None;
    let mut w1 = false;
    let mut serves = 0u32;
    let mut stale_serves = 0u32;
    let mut empty = 0u32;
    let mut errors = 0u32;
    while cut.elapsed() < cut_for {
        match tokio::time::timeout(Duration::from_secs(1), client.discover(svc)).await {
            Ok(Ok(snap)) => {
                serves += 1;
                if snap.is_empty() {
                    empty += 1;
                }
                if snap.is_stale() {
                    stale_serves += 1;
                }
            }
            _ => errors += 1,
        }
        if !w1 && cut.elapsed() > Duration::from_secs(1) {
            writer.register(&inst(svc, "w1", 11)).await.expect("w1");
            w1 = true;
        }
        if lease_lost.is_none()
            && let Ok(list) = writer.instances(svc).await
            && !ids(&list).contains("x")
        {
            lease_lost = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view_during = view_ids(&seen);

    net.heal_client();
    let healed = Instant::now();
    let back = eventually(Duration::from_secs(20), || async {
        writer
            .instances(svc)
            .await
            .is_ok_and(|l| ids(&l).contains("x"))
    })
    .await
    .map(|_| healed.elapsed());
    let want = set(&["w0", "w1", "x"]);
    // Times below are from the heal.
    let watch_ok = eventually(Duration::from_secs(20), || async {
        view_ids(&seen) == want
    })
    .await
    .map(|_| healed.elapsed());
    let fresh = eventually(Duration::from_secs(20), || async {
        client
            .cached(svc)
            .is_some_and(|s| !s.is_stale() && ids(&s) == want)
    })
    .await
    .map(|_| healed.elapsed());
    let status = manager.status();
    let rereg: u64 = status
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.reregistrations))
        .sum();
    let lease_after = reg.lease_id().await;
    let resets = seen.lock().expect("seen").resets - resets_before;
    let errors_seen = seen.lock().expect("seen").errors;

    println!(
        "[reliability] partition etcd client cut {} (lease TTL {}): {serves} discoveries \
         served ({stale_serves} stale, {empty} empty, {errors} failed), lease lost after {}, \
         after the heal: re-registered at {}, watch view correct at {}, cache fresh at {}, \
         re-registrations {rereg}, watch resets {resets}, watch errors {errors_seen}",
        secs(cut_for),
        secs(ttl),
        lease_lost.map_or("never".into(), secs),
        back.map_or("never".into(), secs),
        watch_ok.map_or("never".into(), secs),
        fresh.map_or("never".into(), secs),
    );
    assert_eq!(
        errors, 0,
        "discovery failed during the cut (a stale list must be served)"
    );
    assert_eq!(empty, 0, "an empty list was served during the cut");
    assert!(
        stale_serves > 0,
        "the list was never marked stale during the cut"
    );
    assert!(
        view_during.contains("x") && view_during.contains("w0"),
        "the watcher's view lost instances during the cut: {view_during:?}"
    );
    let lost = lease_lost.expect("etcd never expired the cut-off client's lease");
    assert!(
        lost <= ttl + Duration::from_secs(3),
        "the lease expired only after {lost:?} (TTL {ttl:?})"
    );
    assert!(
        back.is_some(),
        "the manager did not register again after the heal"
    );
    assert!(rereg >= 1, "no re-registration recorded: {status:?}");
    assert_ne!(lease_after, Some(lease), "a new session lease was expected");
    assert!(
        watch_ok.is_some(),
        "the watcher's view {:?} never equalled etcd's {want:?}",
        view_ids(&seen)
    );
    assert!(resets >= 1, "the watch resynced without a Reset");
    assert!(
        fresh.is_some(),
        "the cache stayed stale or wrong after the heal"
    );

    watch_task.abort();
    manager.shutdown().await;
    drop(cluster);
    drop(net);
    println!(
        "[reliability] partition etcd client cut: test took {}",
        secs(started.elapsed())
    );
}

#[test]
fn leftover_cleanup_spares_live_runs() {
    // A namespace named after this (live) process survives the cleanup; one of a dead pid does
    // not.
    let pid = std::process::id();
    let live = format!("{PREFIX}{pid}-99-hub");
    // pid 0 is never a user process, and /proc/0 does not exist.
    let dead = format!("{PREFIX}0-99-hub");
    ip(&["netns", "add", &live]);
    ip(&["netns", "add", &dead]);
    clean_leftovers();
    let list = ip_out(&["netns", "list"]);
    let _ = ip_out(&["netns", "del", &live]);
    let _ = ip_out(&["netns", "del", &dead]);
    assert!(
        list.contains(&live),
        "a live run's namespace was removed: {list}"
    );
    assert!(
        !list.contains(&dead),
        "a dead run's namespace was kept: {list}"
    );
}
