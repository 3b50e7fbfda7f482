//! Hostile names: service names, ids, tags and meta with `/`, `..`, spaces, unicode, empty
//! strings and 10 KB values, through every backend (memory, and real etcd, Consul and Nacos from
//! the harness). Each case is either accepted and round-trips exactly (register → discover
//! finds the same instance), or rejected with an error that names the field; it never writes
//! outside chi's space (etcd: every key in the server is under the prefix afterwards; Consul and
//! Nacos: the registry lists no service chi did not mean to register). A table of outcomes per
//! backend is printed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::Nacos;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::{Error, Instance};

use chi_test_support::consul::ConsulAgent;
use chi_test_support::etcd::Etcd as EtcdServer;
use chi_test_support::nacos::NacosServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Service,
    Id,
    Tag,
    MetaKey,
    MetaValue,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Service,
        Field::Id,
        Field::Tag,
        Field::MetaKey,
        Field::MetaValue,
    ];

    fn label(self) -> &'static str {
        match self {
            Field::Service => "service name",
            Field::Id => "instance id",
            Field::Tag => "tag",
            Field::MetaKey => "meta key",
            Field::MetaValue => "meta value",
        }
    }

    /// Words one of which an error about this field must contain (lowercased).
    fn words(self) -> &'static [&'static str] {
        match self {
            Field::Service => &["service name"],
            Field::Id => &["instance id"],
            Field::Tag => &["tag"],
            Field::MetaKey | Field::MetaValue => &["meta"],
        }
    }
}

fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("slash", "a/b".into()),
        ("dotdot", "..".into()),
        ("escape", "../../etc".into()),
        ("space", "with space".into()),
        ("unicode", "ünï-名前-🚀".into()),
        ("empty", String::new()),
        ("10KB", "x".repeat(10 * 1024)),
    ]
}

#[derive(Debug)]
enum Outcome {
    /// Registered and discovered unchanged.
    RoundTrip,
    /// Rejected, with an error naming the field.
    Rejected(String),
    /// Anything else: a failure of the test.
    Bad(String),
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Outcome::RoundTrip => "ok".into(),
            Outcome::Rejected(_) => "rejected".into(),
            Outcome::Bad(_) => "BAD".into(),
        }
    }
}

/// The instance of one case; `n` keeps services apart (Nacos keeps one instance per service
/// and connection).
fn case(backend: &str, n: usize, field: Field, value: &str) -> Instance {
    let service = format!("names-{backend}-{n}");
    let mut i = Instance::new(service.clone(), "127.0.0.1", 9000 + n as u16)
        .with_id(format!("{service}-i"))
        .with_tag("plain")
        .with_meta("plain", "v");
    match field {
        Field::Service => {
            i.name = value.to_owned();
            i.id = format!("names-{backend}-{n}-i");
        }
        Field::Id => i.id = value.to_owned(),
        Field::Tag => i.tags.push(value.to_owned()),
        Field::MetaKey => {
            i.meta.insert(value.to_owned(), "v2".into());
        }
        Field::MetaValue => {
            i.meta.insert("hostile".into(), value.to_owned());
        }
    }
    i
}

fn names_field(e: &Error, field: Field) -> bool {
    let shown = e.to_string().to_lowercase();
    field.words().iter().any(|w| shown.contains(w))
}

async fn run_case(reg: &dyn Registry, inst: &Instance, field: Field) -> Outcome {
    if let Err(e) = reg.register(inst).await {
        return if names_field(&e, field) {
            Outcome::Rejected(e.to_string())
        } else {
            Outcome::Bad(format!(
                "rejected without naming the {}: {e}",
                field.label()
            ))
        };
    }
    // Accepted: discovery must give it back unchanged (health aside: the registry decides it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let outcome = loop {
        match reg.instances(&inst.name).await {
            Ok(list) => {
                if let Some(got) = list.iter().find(|i| i.id == inst.id) {
                    let mut want = inst.clone();
                    want.health = got.health;
                    break if *got == want {
                        Outcome::RoundTrip
                    } else {
                        Outcome::Bad(format!(
                            "accepted but changed: sent {:.300}, got {:.300}",
                            format!("{want:?}"),
                            format!("{got:?}")
                        ))
                    };
                }
                if Instant::now() > deadline {
                    break Outcome::Bad(format!(
                        "accepted but not discovered (found {:?})",
                        list.iter().map(|i| &i.id).collect::<Vec<_>>()
                    ));
                }
            }
            Err(e) => {
                if Instant::now() > deadline {
                    break Outcome::Bad(format!("accepted but discovery fails: {e}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Err(e) = reg.deregister(&inst.name, &inst.id).await {
        return Outcome::Bad(format!("registered but cannot be deregistered: {e}"));
    }
    outcome
}

/// Runs every case against `reg`; returns the table rows and the failures, and the services
/// that were accepted.
async fn run_all(
    backend: &str,
    reg: &dyn Registry,
) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    let values = hostile();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut accepted = BTreeSet::new();
    let mut n = 0;
    for field in Field::ALL {
        let mut cells = Vec::new();
        for (label, value) in &values {
            n += 1;
            let inst = case(backend, n, field, value);
            let outcome = run_case(reg, &inst, field).await;
            match &outcome {
                Outcome::Bad(why) => {
                    bad.push(format!("{backend}: {} = {label}: {why}", field.label()))
                }
                Outcome::RoundTrip => {
                    accepted.insert(inst.name.clone());
                }
                Outcome::Rejected(why) => {
                    eprintln!(
                        "{backend}: {} = {label}: rejected: {why:.200}",
                        field.label()
                    );
                }
            }
            cells.push(format!("{label}:{}", outcome.cell()));
        }
        rows.push(format!(
            "[reliability] names {backend:<6} {:<12} {}",
            field.label(),
            cells.join(" ")
        ));
    }
    (rows, bad, accepted)
}

fn report(backend: &str, rows: &[String], bad: &[String], started: Instant) {
    for r in rows {
        println!("{r}");
    }
    println!(
        "[reliability] names {backend}: {} cases in {:.1} s, {} bad",
        Field::ALL.len() * hostile().len(),
        started.elapsed().as_secs_f64(),
        bad.len()
    );
    assert!(bad.is_empty(), "{backend}:\n{}", bad.join("\n"));
}

#[tokio::test]
async fn hostile_names_in_memory() {
    let started = Instant::now();
    let reg = Memory::new();
    let (rows, bad, _) = run_all("memory", &reg).await;
    report("memory", &rows, &bad, started);
}

#[tokio::test]
async fn hostile_names_in_etcd_stay_under_the_prefix() {
    let started = Instant::now();
    let server = EtcdServer::single().await;
    let prefix = "/chi-names/services";
    let reg = Etcd::connect(EtcdConfig {
        endpoints: server.endpoints(),
        prefix: prefix.into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    })
    .await
    .expect("connect etcd");
    // Accepted instances stay registered until the key check below (deregistered in run_case):
    // register them again so the check sees their keys.
    let (rows, mut bad, accepted) = run_all("etcd", &reg).await;
    let mut kept = 0;
    for (n, field) in Field::ALL.iter().enumerate() {
        for (k, (_, value)) in hostile().iter().enumerate() {
            let inst = case("etcd", n * hostile().len() + k + 1, *field, value);
            if reg.register(&inst).await.is_ok() {
                kept += 1;
            }
        }
    }
    let mut client = server.client().await;
    let all = client
        .get(
            "\0",
            Some(
                etcd_client::GetOptions::new()
                    .with_from_key()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("list every key");
    let keys: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    for k in &keys {
        if !k.starts_with(&format!("{prefix}/")) {
            bad.push(format!("etcd: key outside the prefix: {k:.200}"));
        }
    }
    assert!(
        keys.len() >= kept,
        "{kept} instances registered, {} keys",
        keys.len()
    );
    println!(
        "[reliability] names etcd: {} keys in the server after the run, all under {prefix}/ ({} services accepted)",
        keys.len(),
        accepted.len()
    );
    report("etcd", &rows, &bad, started);
}

#[tokio::test]
async fn hostile_names_in_consul() {
    let started = Instant::now();
    let agent = ConsulAgent::start().await;
    let reg = Consul::new(ConsulConfig {
        address: agent.addr(),
        ..ConsulConfig::default()
    })
    .expect("consul config");
    let (rows, mut bad, accepted) = run_all("consul", &reg).await;
    let services = reg.services().await.expect("catalog");
    for s in &services {
        if s != "consul" && !accepted.contains(s) {
            bad.push(format!("consul: a service chi did not accept: {s:.200}"));
        }
    }
    report("consul", &rows, &bad, started);
}

#[tokio::test]
async fn hostile_names_in_nacos() {
    let started = Instant::now();
    let server = NacosServer::start();
    let reg: Arc<dyn Registry> = Arc::new(
        Nacos::connect(server.config())
            .await
            .expect("connect rnacos"),
    );
    let (rows, mut bad, accepted) = run_all("nacos", reg.as_ref()).await;
    let services = reg.services().await.expect("service list");
    for s in &services {
        if !accepted.contains(s) && !s.starts_with("names-nacos-") {
            bad.push(format!("nacos: a service chi did not accept: {s:.200}"));
        }
    }
    report("nacos", &rows, &bad, started);
}
