//! Real DNS servers on loopback, on free ports, for one test: dnsmasq and bind9's `named`.
//!
//! - [`Dnsmasq`] serves the records it was started with (it rereads nothing on SIGHUP): a change
//!   of records is a restart ([`Dnsmasq::restart_with`]). Names under `.test` it does not know
//!   are NXDOMAIN (`--local=/test/`), as from an authoritative server.
//! - [`Bind`] serves one primary zone that takes dynamic updates from 127.0.0.1 (RFC 2136):
//!   [`Bind::add`] and [`Bind::delete`] change records live with `nsupdate`, the way a zone is
//!   changed in production. [`Bind::break_zone`] restarts it with a zone file it cannot load, so
//!   it answers SERVFAIL.
//!
//! Both can be killed and restarted on the same port, and paused (SIGSTOP: a server that does not
//! answer, so queries time out). Every record has TTL 1 and the zone's negative TTL is 1, so a
//! client that follows TTLs sees a change within about a second.
//!
//! The binaries come from `CHI_DNSMASQ_BIN`, `CHI_NAMED_BIN`, `CHI_NSUPDATE_BIN`, else the PATH
//! and `/usr/sbin` (Debian's `dnsmasq-base`, `bind9` and `bind9-utils`; `scripts/registry install
//! dns` installs them). A missing binary is a test failure with that hint, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, free_port};

/// One record a test serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `NAME SRV PRIORITY WEIGHT PORT TARGET`.
    Srv {
        /// The owner name, e.g. `_web._tcp.svc.test`.
        name: String,
        /// The target host; `.` for "the service is decidedly not available" (RFC 2782).
        target: String,
        /// The port.
        port: u16,
        /// RFC 2782 priority.
        priority: u16,
        /// RFC 2782 weight.
        weight: u16,
    },
    /// `NAME TXT "TEXT"`: a record of another type at a name (NODATA for SRV and A there).
    Txt {
        /// The owner name.
        name: String,
        /// The text.
        text: String,
    },
    /// `NAME A ADDRESS` (or AAAA for an IPv6 address).
    Addr {
        /// The owner name.
        name: String,
        /// The address.
        ip: std::net::IpAddr,
    },
}

impl Record {
    /// An SRV record.
    pub fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Record {
        Record::Srv {
            name: name.to_owned(),
            target: target.to_owned(),
            port,
            priority,
            weight,
        }
    }

    /// A TXT record.
    pub fn txt(name: &str, text: &str) -> Record {
        Record::Txt {
            name: name.to_owned(),
            text: text.to_owned(),
        }
    }

    /// An A (or AAAA) record.
    pub fn addr(name: &str, ip: &str) -> Record {
        Record::Addr {
            name: name.to_owned(),
            ip: ip.parse().expect("an IP address"),
        }
    }

    /// The record in zone-file / nsupdate syntax, with TTL 1.
    pub fn zone_line(&self) -> String {
        self.zone_line_with(1)
    }

    /// The record in zone-file / nsupdate syntax, with TTL `ttl`.
    pub fn zone_line_with(&self, ttl: u32) -> String {
        match self {
            Record::Srv {
                name,
                target,
                port,
                priority,
                weight,
            } => {
                let target = if target == "." {
                    ".".to_owned()
                } else {
                    format!("{target}.")
                };
                format!("{name}. {ttl} IN SRV {priority} {weight} {port} {target}")
            }
            Record::Txt { name, text } => format!("{name}. {ttl} IN TXT \"{text}\""),
            Record::Addr { name, ip } => {
                let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
                format!("{name}. {ttl} IN {kind} {ip}")
            }
        }
    }
}

/// Path of a DNS server binary. Panics with the fix when it is missing.
pub fn dns_binary(name: &str) -> PathBuf {
    let env = format!("CHI_{}_BIN", name.to_uppercase());
    if let Ok(p) = std::env::var(&env) {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found on the PATH, in /usr/sbin, nor in ${env}; run `scripts/registry \
             install dns` (Debian's dnsmasq-base, bind9 and bind9-utils)"
        )
    })
}

/// Sends `signal` (`STOP`, `CONT`) to `proc`.
fn signal(proc: &Proc, signal: &str) {
    let pid = proc.pid().expect("the server runs");
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid} failed");
}

/// A running dnsmasq serving fixed records on a loopback address.
pub struct Dnsmasq {
    /// The process.
    pub proc: Proc,
    /// The loopback address it listens on (127.0.0.1 unless [`Dnsmasq::start_at`] said).
    pub ip: std::net::Ipv4Addr,
    /// The DNS port (UDP and TCP).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// dnsmasq on 127.0.0.1 and a free port, serving `records`, ready to answer.
    pub fn start(records: &[Record]) -> Dnsmasq {
        Self::start_at(std::net::Ipv4Addr::LOCALHOST, free_port(), records)
    }

    /// dnsmasq on `ip:port` (any address of 127.0.0.0/8; port 53, which a `resolv.conf` can
    /// only name, needs root), serving `records`, ready to answer.
    pub fn start_at(ip: std::net::Ipv4Addr, port: u16, records: &[Record]) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = Self::spawn(&dir, ip, port, records);
        let mut d = Dnsmasq {
            proc,
            ip,
            port,
            dir,
        };
        d.wait_ready();
        d
    }

    fn spawn(
        dir: &tempfile::TempDir,
        ip: std::net::Ipv4Addr,
        port: u16,
        records: &[Record],
    ) -> Proc {
        let mut args: Vec<String> = [
            "-k",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/test/",
            "--local-ttl=1",
            "--neg-ttl=1",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={ip}"));
        args.push(format!("--port={port}"));
        for r in records {
            args.push(match r {
                Record::Srv { name, target, .. } if target == "." => format!("--srv-host={name}"),
                Record::Srv {
                    name,
                    target,
                    port,
                    priority,
                    weight,
                } => format!("--srv-host={name},{target},{port},{priority},{weight}"),
                Record::Txt { name, text } => format!("--txt-record={name},{text}"),
                Record::Addr { name, ip } => format!("--host-record={name},{ip}"),
            });
        }
        // A fresh log per start: "started" in it is this start's.
        let log = dir.path().join("dnsmasq.log");
        let _ = std::fs::remove_file(&log);
        Proc::spawn("dnsmasq", &dns_binary("dnsmasq"), &args, log)
    }

    /// `IP:PORT`, the server of a `dns://` URL.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Kill -9: the server is gone, queries are refused.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port with `records` (dnsmasq rereads nothing while it runs).
    pub fn restart_with(&mut self, records: &[Record]) {
        self.proc.kill();
        self.proc = Self::spawn(&self.dir, self.ip, self.port, records);
        self.wait_ready();
    }

    /// SIGSTOP: the server holds its port and answers nothing (queries time out).
    pub fn pause(&self) {
        signal(&self.proc, "STOP");
    }

    /// SIGCONT after [`Dnsmasq::pause`].
    pub fn resume(&self) {
        signal(&self.proc, "CONT");
    }

    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            // Running, and serving: a dnsmasq that could not bind exits, and something else
            // that took the port in the meantime must not pass for it.
            assert!(
                self.proc.is_running(),
                "dnsmasq on {} exited; log:\n{}",
                self.addr(),
                self.proc.log()
            );
            // dnsmasq logs "started" once its sockets are bound.
            let started = self.proc.log().contains("started, version");
            if started && std::net::TcpStream::connect((self.ip, self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "dnsmasq on {} not ready within 10 s; log:\n{}",
            self.addr(),
            self.proc.log()
        );
    }
}

/// A running bind9 `named` serving one zone with dynamic updates from 127.0.0.1.
pub struct Bind {
    /// The process.
    pub proc: Proc,
    /// The DNS port (UDP and TCP).
    pub port: u16,
    /// The zone, e.g. `svc.test`.
    pub zone: String,
    dir: tempfile::TempDir,
}

impl Bind {
    /// `named` on a free port, primary for `zone` with `records`, ready to answer.
    pub fn start(zone: &str, records: &[Record]) -> Bind {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"options {{
  directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
zone "{zone}" {{ type primary; file "{d}/zone.db"; allow-update {{ 127.0.0.1; }}; }};
"#
        );
        std::fs::write(dir.path().join("named.conf"), conf).expect("named.conf");
        write_zone(dir.path(), zone, records);
        let bind = Bind {
            proc: spawn_named(dir.path()),
            port,
            zone: zone.to_owned(),
            dir,
        };
        bind.wait_ready();
        bind
    }

    /// `127.0.0.1:PORT`, the server of a `dns://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Adds records live (`nsupdate`), with TTL 1.
    pub fn add(&self, records: &[Record]) {
        self.update(&[], records, 1);
    }

    /// Adds records live with TTL `ttl`. bind gives a whole RRset one TTL: the records already
    /// at the name and type take this one too.
    pub fn add_with_ttl(&self, ttl: u32, records: &[Record]) {
        self.update(&[], records, ttl);
    }

    /// Deletes records live (`nsupdate`): exactly these records, others at the name stay.
    pub fn delete(&self, records: &[Record]) {
        self.update(records, &[], 1);
    }

    /// Deletes `old` and adds `new` in one update (one transaction: no answer sees neither).
    pub fn replace(&self, old: &[Record], new: &[Record]) {
        self.update(old, new, 1);
    }

    fn update(&self, delete: &[Record], add: &[Record], ttl: u32) {
        let mut script = format!("server 127.0.0.1 {}\nzone {}\n", self.port, self.zone);
        for r in delete {
            // `update delete NAME [TTL] CLASS TYPE RDATA`: the TTL is ignored there.
            script.push_str(&format!("update delete {}\n", r.zone_line()));
        }
        for r in add {
            script.push_str(&format!("update add {}\n", r.zone_line_with(ttl)));
        }
        script.push_str("send\n");
        let mut child = Command::new(dns_binary("nsupdate"))
            .arg("-v")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsupdate");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(script.as_bytes()).expect("nsupdate script");
        }
        let out = child.wait_with_output().expect("nsupdate");
        assert!(
            out.status.success(),
            "nsupdate failed: {}\n{}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kill -9: the server is gone, queries are refused.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port, with the zone as it was (updates included: named
    /// replays its journal).
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = spawn_named(self.dir.path());
        self.wait_ready();
    }

    /// Restarts it with a zone file it cannot load: it answers SERVFAIL for the zone.
    pub fn break_zone(&mut self) {
        self.proc.kill();
        std::fs::write(self.dir.path().join("zone.db"), "this is { not a zone\n").expect("zone");
        let _ = std::fs::remove_file(self.dir.path().join("zone.db.jnl"));
        self.proc = spawn_named(self.dir.path());
        self.wait_ready();
    }

    /// Restarts it with `records` as the whole zone (after [`Bind::break_zone`]).
    pub fn restart_with(&mut self, records: &[Record]) {
        self.proc.kill();
        write_zone(self.dir.path(), &self.zone, records);
        self.proc = spawn_named(self.dir.path());
        self.wait_ready();
    }

    /// SIGSTOP: the server holds its port and answers nothing (queries time out).
    pub fn pause(&self) {
        signal(&self.proc, "STOP");
    }

    /// SIGCONT after [`Bind::pause`].
    pub fn resume(&self) {
        signal(&self.proc, "CONT");
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            // Each start logs to a fresh file: "running" is this start's.
            let running = self.proc.log().lines().any(|l| l.ends_with(" running"));
            if running && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "named on port {} not ready within 15 s; log:\n{}",
            self.port,
            self.proc.log()
        );
    }
}

/// The zone file: SOA (negative TTL 1), NS, then `records`; a previous journal is dropped.
fn write_zone(dir: &Path, zone: &str, records: &[Record]) {
    let mut text = format!(
        "$TTL 1\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 1\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
    );
    for r in records {
        text.push_str(&r.zone_line());
        text.push('\n');
    }
    std::fs::write(dir.join("zone.db"), text).expect("zone file");
    let _ = std::fs::remove_file(dir.join("zone.db.jnl"));
}

/// `named -g` (foreground, as the user running the tests) with the config in `dir`, logging to
/// a fresh file.
fn spawn_named(dir: &Path) -> Proc {
    let log = dir.join("named.log");
    let _ = std::fs::remove_file(&log);
    let conf = dir.join("named.conf").display().to_string();
    Proc::spawn(
        "named",
        &dns_binary("named"),
        &["-g".into(), "-c".into(), conf],
        log,
    )
}
