use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::file::{self, FileError, TEMP_PREFIX};
use super::*;
use crate::discovery::{CacheConfig, DiscoveryClient};
use crate::error::{Error, Result};
use crate::registry::{Memory, Registry, WatchStream};
use crate::retry::RetryPolicy;

const REGISTRY: &str = "etcd(endpoints=127.0.0.1:2379,prefix=/chi/services)";

fn inst(id: &str) -> Instance {
    Instance::new("svc", "127.0.0.1", 8000).with_id(id)
}

fn ids(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

fn write(dir: &Path, service: &str, registry: &str, list: &[Instance]) -> PathBuf {
    let bytes = file::encode(service, registry, list, SystemTime::now()).expect("encode");
    file::write_atomic(dir, service, &bytes).expect("write")
}

/// Every name in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().expect("dir");
    let list = vec![inst("a").with_meta("zone", "z1").with_tag("v1"), inst("b")];
    write(dir.path(), "svc", REGISTRY, &list);
    let loaded = file::read(dir.path(), "svc", REGISTRY)
        .expect("valid")
        .expect("present");
    assert_eq!(loaded.instances, list);
    assert!(loaded.written_at.ends_with('Z'), "{}", loaded.written_at);
    assert!(
        file::read(dir.path(), "other", REGISTRY)
            .expect("no error")
            .is_none(),
        "no file, no list"
    );
}

#[test]
fn file_names_are_built_never_taken_from_input() {
    for name in [
        "svc",
        ".hidden",
        "a b?c#d%e",
        "ünïcode",
        "Svc",
        "x:y*z<>|\"",
    ] {
        let f = file::file_name(name);
        assert!(f.ends_with(".json") && !f.starts_with('.'), "{f}");
        assert!(
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-%.".contains(&b)),
            "{f}"
        );
    }
    assert_ne!(
        file::file_name("Svc"),
        file::file_name("svc").to_uppercase()
    );
    assert_ne!(
        file::file_name("Svc").to_lowercase(),
        file::file_name("svc"),
        "names that differ in case differ on a case-insensitive file system too"
    );
    let long = "é".repeat(128); // 256 bytes, the longest valid name
    assert!(file::file_name(&long).len() < 128);
    assert_ne!(
        file::file_name(&long),
        file::file_name(&format!("{}a", "é".repeat(127)))
    );
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(file::crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn atomic_write_leaves_no_temporary_file_and_no_partial_file() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "svc", REGISTRY, &[inst("a")]);
    assert_eq!(
        listing(dir.path()),
        vec![file::file_name("svc")],
        "only the file itself"
    );

    // A reader racing a writer that rewrites the file sees one whole version or the other.
    let big: Vec<Instance> = (0..500).map(|i| inst(&format!("i{i}"))).collect();
    let small = vec![inst("a")];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.path().to_owned(), stop.clone());
        let (big, small) = (big.clone(), small.clone());
        std::thread::spawn(move || {
            for round in 0..100 {
                let list = if round % 2 == 0 { &big } else { &small };
                write(&dir, "svc", REGISTRY, list);
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while !stop.load(Ordering::SeqCst) {
        let loaded = file::read(dir.path(), "svc", REGISTRY)
            .expect("never a partial file")
            .expect("never missing");
        assert!(loaded.instances == big || loaded.instances == small);
        reads += 1;
    }
    writer.join().expect("writer");
    assert!(reads > 0);
    assert_eq!(listing(dir.path()), vec![file::file_name("svc")]);

    // A write that cannot complete (here the rename fails: a directory holds the name) leaves the
    // old state and no temporary file.
    std::fs::create_dir(dir.path().join(file::file_name("blocked"))).expect("mkdir");
    let bytes = file::encode("blocked", REGISTRY, &small, SystemTime::now()).expect("encode");
    assert!(file::write_atomic(dir.path(), "blocked", &bytes).is_err());
    assert!(
        !listing(dir.path())
            .iter()
            .any(|n| n.starts_with(TEMP_PREFIX)),
        "{:?}",
        listing(dir.path())
    );
    assert_eq!(
        file::read(dir.path(), "svc", REGISTRY)
            .expect("ok")
            .expect("kept")
            .instances,
        small
    );
    drop(path);
}

/// Every way a file can be wrong: each one is rejected, with a reason that says which.
#[test]
fn bad_files_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "svc", REGISTRY, &[inst("a"), inst("b")]);
    let good = std::fs::read(&path).expect("read");
    let check = |bytes: &[u8]| file::decode(bytes, "svc", REGISTRY);
    assert!(check(&good).is_ok());

    assert!(matches!(check(b"not json"), Err(FileError::Corrupt(_))));
    assert!(matches!(check(b""), Err(FileError::Corrupt(_))));
    let truncated = &good[..good.len() / 2];
    assert!(matches!(check(truncated), Err(FileError::Corrupt(_))));
    assert!(matches!(
        check(br#"{"format":"something-else","version":1}"#),
        Err(FileError::Corrupt(_))
    ));

    // One character of an instance changed: still JSON, but not what was written.
    let text = String::from_utf8(good.clone()).expect("utf-8");
    let tampered = text.replacen("\"a\"", "\"x\"", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        check(tampered.as_bytes()),
        Err(FileError::Checksum { .. })
    ));

    let other_version = text.replacen("\"version\": 1", "\"version\": 2", 1);
    assert!(matches!(
        check(other_version.as_bytes()),
        Err(FileError::Version { found: 2 })
    ));

    let other_registry = file::encode(
        "svc",
        "consul(address=x,datacenter=)",
        &[inst("a")],
        SystemTime::now(),
    )
    .expect("encode");
    assert!(matches!(
        check(&other_registry),
        Err(FileError::OtherRegistry { .. })
    ));

    // A file copied over another service's name.
    let other_service =
        file::encode("other", REGISTRY, &[inst("a")], SystemTime::now()).expect("encode");
    assert!(matches!(
        check(&other_service),
        Err(FileError::OtherService { .. })
    ));
}

/// The store reads through the same checks and turns every rejection into "no list" (and a
/// warning in the log).
#[test]
fn the_store_ignores_rejected_files_with_a_warning() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::new(LastKnownGood::new(dir.path(), REGISTRY));
    let (none, log) = logged(|| store.load("svc"));
    assert!(
        none.is_none() && log.is_empty(),
        "no file: nothing to warn about"
    );
    let path = write(dir.path(), "svc", REGISTRY, &[inst("a")]);
    assert_eq!(store.load("svc").expect("valid").instances, vec![inst("a")]);

    let good = std::fs::read(&path).expect("read");
    std::fs::write(&path, &good[..good.len() - 10]).expect("truncate");
    let (loaded, log) = logged(|| store.load("svc"));
    assert!(loaded.is_none(), "truncated");
    assert!(
        log.contains("WARN") && log.contains("ignoring the last-known-good file"),
        "{log}"
    );
    assert!(log.contains("not a valid last-known-good file"), "{log}");

    write(dir.path(), "svc", "memory", &[inst("a")]);
    let (loaded, log) = logged(|| store.load("svc"));
    assert!(loaded.is_none(), "another registry");
    assert!(
        log.contains("WARN") && log.contains("came from registry"),
        "{log}"
    );
}

/// What `f` logs (at debug and above), as text.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            crate::util::lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&crate::util::lock(&capture.0)).into_owned();
    (out, text)
}

/// A registry that answers from a `Memory` or, while down, fails as an unreachable one does.
#[derive(Clone)]
struct Switch {
    inner: Memory,
    down: Arc<AtomicBool>,
}

impl Switch {
    fn new() -> Self {
        Switch {
            inner: Memory::new(),
            down: Arc::new(AtomicBool::new(false)),
        }
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "switch".into(),
                message: "down".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for Switch {
    fn backend(&self) -> &'static str {
        "switch"
    }
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(
        &self,
        instance: &Instance,
        health: crate::instance::HealthStatus,
    ) -> Result<crate::registry::Liveness> {
        self.inner.keep_alive(instance, health).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        self.check()?;
        self.inner.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> Result<WatchStream> {
        self.check()?;
        self.inner.watch(service).await
    }
}

fn client(reg: &Switch, dir: &Path, registry: &str) -> DiscoveryClient {
    DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(50),
            last_known_good: Some(LastKnownGood::new(dir, registry)),
            ..CacheConfig::default()
        })
        .retry(RetryPolicy::none())
        .build(Arc::new(reg.clone()))
}

/// Polls until the file of `service` holds `want` (the writer is a thread of its own).
async fn file_holds(dir: &Path, service: &str, want: &[&str]) {
    for _ in 0..250 {
        if let Ok(Some(l)) = file::read(dir, service, REGISTRY)
            && ids(&l.instances) == want
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the file of {service} never held {want:?}");
}

#[tokio::test]
async fn a_restart_during_an_outage_serves_the_file_stale_until_a_live_answer() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = Switch::new();
    reg.register(&inst("a")).await.expect("register");
    reg.register(&inst("b")).await.expect("register");
    let first = client(&reg, dir.path(), REGISTRY);
    assert_eq!(ids(&first.discover("svc").await.expect("live")), ["a", "b"]);
    file_holds(dir.path(), "svc", &["a", "b"]).await;
    drop(first);

    // The registry goes down, the process restarts.
    reg.set_down(true);
    let second = client(&reg, dir.path(), REGISTRY);
    let snap = second.discover("svc").await.expect("the file's list");
    assert_eq!(ids(&snap), ["a", "b"]);
    assert!(snap.is_stale(), "a list from the file is served stale");
    assert!(second.cached("svc").expect("cached").is_stale());

    // The registry comes back with another list: the live answer replaces the file's.
    reg.deregister("svc", "b").await.expect("deregister");
    reg.register(&inst("c")).await.expect("register");
    reg.set_down(false);
    let mut live = None;
    for _ in 0..250 {
        let s = second.cached("svc").expect("cached");
        if !s.is_stale() {
            live = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = live.expect("a live answer replaced the file's list");
    assert_eq!(ids(&live), ["a", "c"]);
    file_holds(dir.path(), "svc", &["a", "c"]).await;
}

#[tokio::test]
async fn a_live_answer_wins_over_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "svc", REGISTRY, &[inst("old")]);
    let reg = Switch::new();
    reg.register(&inst("new")).await.expect("register");
    let c = client(&reg, dir.path(), REGISTRY);
    let snap = c.discover("svc").await.expect("live");
    assert_eq!(ids(&snap), ["new"]);
    assert!(!snap.is_stale());
    file_holds(dir.path(), "svc", &["new"]).await;
}

#[tokio::test]
async fn files_of_another_registry_or_corrupt_files_are_not_served() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = Switch::new();
    reg.set_down(true);
    write(
        dir.path(),
        "svc",
        "consul(address=elsewhere:8500,datacenter=)",
        &[inst("a")],
    );
    let err = client(&reg, dir.path(), REGISTRY)
        .discover("svc")
        .await
        .expect_err("another registry's list is not ours");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");

    let path = write(dir.path(), "svc", REGISTRY, &[inst("a")]);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.truncate(bytes.len() - 20);
    std::fs::write(&path, bytes).expect("write");
    assert!(
        client(&reg, dir.path(), REGISTRY)
            .discover("svc")
            .await
            .is_err(),
        "a truncated file is not served"
    );
}

/// A registry that answers "no instances" is honoured, and the file says so too: after a
/// restart in an outage the service has no instances (stale), as it would have had the
/// process kept running.
#[tokio::test]
async fn a_confirmed_empty_answer_is_written() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = Switch::new();
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg, dir.path(), REGISTRY);
    assert_eq!(c.discover("svc").await.expect("live").len(), 1);
    file_holds(dir.path(), "svc", &["a"]).await;
    reg.deregister("svc", "a").await.expect("scale to zero");
    assert!(c.refresh("svc").await.expect("live").is_empty());
    file_holds(dir.path(), "svc", &[]).await;
    drop(c);
    reg.set_down(true);
    let snap = client(&reg, dir.path(), REGISTRY)
        .discover("svc")
        .await
        .expect("the file's (empty) list");
    assert!(snap.is_empty() && snap.is_stale());
}

/// A stale serve never reaches the file, and neither does chi's own health verdict: the file
/// holds what the registry answered.
#[tokio::test]
async fn only_registry_answers_are_written() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = Switch::new();
    reg.register(&inst("a")).await.expect("register");
    let c = client(&reg, dir.path(), REGISTRY);
    c.discover("svc").await.expect("live");
    file_holds(dir.path(), "svc", &["a"]).await;
    let read = || {
        file::read(dir.path(), "svc", REGISTRY)
            .expect("ok")
            .expect("present")
    };
    let first = read();
    // The same answer again: not rewritten (the write time would move).
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.refresh("svc").await.expect("live");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(read(), first, "an unchanged list is not written again");
    c.set_health("svc", "a", Some(crate::instance::HealthStatus::Unhealthy));
    reg.set_down(true);
    let stale = c.refresh("svc").await.expect("stale");
    assert!(stale.is_stale());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        read(),
        first,
        "neither a health verdict nor a stale serve is written"
    );
    assert_eq!(
        listing(dir.path()),
        vec![file::file_name("svc")],
        "no temporary file left behind"
    );
}
