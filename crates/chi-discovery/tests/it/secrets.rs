//! Secrets never print: with every tracing event of the process captured at TRACE (a global
//! subscriber: nacos-sdk logs from its own runtime's threads, which a thread-local subscriber
//! would miss), chi connects to real etcd with auth, Consul with ACLs and Nacos with auth, first
//! with a wrong secret and then the right one, through the same `Config` / `--registry` path
//! the CLI uses, with the secrets coming from `CHI_*` environment variables. The captured logs,
//! every error's Display and Debug, and the Debug of configs, registries and clients must hold
//! none of the secret strings.
//!
//! Extends `config::tests::secrets_come_from_the_environment_and_never_print` (Debug of a parsed
//! config) and `consul::acl_default_deny_needs_the_right_token_and_never_leaks_it` (Consul
//! errors only) to all three backends, their SDKs' own logs and the env → config →
//! connect path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chi_discovery::config::{Config, Registries};
use chi_discovery::registry::Registry;
use chi_discovery::{DiscoveryClient, Instance, RetryPolicy, ServiceManager};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use chi_test_support::consul::ConsulAgent;
use chi_test_support::etcd::Etcd as EtcdServer;
use chi_test_support::eventually;
use chi_test_support::nacos::NacosServer;

/// Everything logged while a secrets test captures.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static CAPTURING: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<bool> = OnceLock::new();
/// One secrets test at a time: they share the capture.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Logged at TRACE from another thread at the start of each capture; `check` looks for it.
const CANARY: &str = "secrets-capture-canary-from-another-thread";

#[derive(Clone, Copy)]
struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide TRACE subscriber (once); it records only while `CAPTURING`.
fn install() {
    let ok = *INSTALLED.get_or_init(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(|| Sink)
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                CAPTURING.load(Ordering::Relaxed)
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber).is_ok()
    });
    assert!(
        ok,
        "another global tracing subscriber is installed: the secrets tests cannot capture"
    );
}

/// What one test collected, checked at the end.
struct Evidence {
    secrets: Vec<&'static str>,
    texts: Vec<String>,
}

impl Evidence {
    fn new(secrets: &[&'static str]) -> Self {
        Evidence {
            secrets: secrets.to_vec(),
            texts: Vec::new(),
        }
    }

    fn error(&mut self, e: &chi_discovery::Error) {
        self.texts.push(e.to_string());
        self.texts.push(format!("{e:?}"));
    }

    fn debug(&mut self, what: &dyn std::fmt::Debug) {
        self.texts.push(format!("{what:?}"));
        self.texts.push(format!("{what:#?}"));
    }

    /// Stops capturing and asserts: the logs are not empty (the capture works), and no secret
    /// is anywhere.
    fn check(self, name: &str, must_log: &[&str]) {
        CAPTURING.store(false, Ordering::SeqCst);
        let logs =
            String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        for m in must_log {
            assert!(
                logs.contains(m),
                "{name}: the captured logs lack `{m}`: the capture does not see what it should \
                 ({} bytes captured)",
                logs.len()
            );
        }
        let lines = logs.lines().count();
        let mut hits = Vec::new();
        for s in &self.secrets {
            for l in logs.lines().filter(|l| l.contains(s)) {
                hits.push(format!("log: {l:.300}"));
            }
            for t in self.texts.iter().filter(|t| t.contains(s)) {
                hits.push(format!("text: {t:.300}"));
            }
        }
        println!(
            "[reliability] secrets {name}: {lines} TRACE log lines ({} KiB), {} errors/Debug texts, {} secret hits",
            logs.len() / 1024,
            self.texts.len(),
            hits.len()
        );
        assert!(
            hits.is_empty(),
            "{name}: secrets printed:\n{}",
            hits.join("\n")
        );
    }
}

/// Capturing, for as long as it lives (a failed test stops it too).
struct Capture {
    _one: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.store(false, Ordering::SeqCst);
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

async fn begin() -> Capture {
    let one = ONE.lock().await;
    install();
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    CAPTURING.store(true, Ordering::SeqCst);
    // The capture must see events of other threads (nacos-sdk's runtime, tokio workers).
    std::thread::spawn(|| tracing::trace!(target: "chi_secrets_test", "{CANARY}"))
        .join()
        .expect("canary thread");
    Capture { _one: one }
}

fn env_of(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let pairs = pairs.to_vec();
    move |k: &str| {
        pairs
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A discovery client and a manager on `reg` exercise the logging paths (refresh failures,
/// registration retries) when the credentials are wrong.
async fn exercise(reg: Arc<dyn Registry>, svc: &str, ev: &mut Evidence) {
    let client = DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .request_timeout(Duration::from_secs(5))
        .build(reg.clone());
    if let Err(e) = client.discover(svc).await {
        ev.error(&e);
    }
    ev.debug(&client);
    let manager = ServiceManager::new(reg.clone());
    if let Err(e) = manager
        .register_instance(Instance::new(svc, "127.0.0.1", 7311).with_id(format!("{svc}-1")))
        .await
    {
        ev.error(&e);
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_password_never_prints() {
    const RIGHT: &str = "etcd-R1ght-pa55-7c1e";
    const WRONG: &str = "etcd-Wr0ng-pa55-91ab";
    let _one = begin().await;
    let server = EtcdServer::single().await;
    server.enable_auth(RIGHT).await;
    let url = format!("etcd://{}", server.endpoints().join(","));
    let mut ev = Evidence::new(&[RIGHT, WRONG]);

    let wrong = Registries::from_url(
        &url,
        &env_of(&[("CHI_ETCD_USERNAME", "root"), ("CHI_ETCD_PASSWORD", WRONG)]),
    )
    .expect("a registry url");
    ev.debug(&wrong);
    match wrong.connect().await {
        Ok(reg) => {
            // (a lazy client fails on first use instead)
            let e = reg.instances("sec").await.expect_err("a wrong password");
            ev.error(&e);
        }
        Err(e) => {
            assert!(e.to_string().contains("authentication failed"), "{e}");
            ev.error(&e);
        }
    }

    let right = Registries::from_url(
        &url,
        &env_of(&[("CHI_ETCD_USERNAME", "root"), ("CHI_ETCD_PASSWORD", RIGHT)]),
    )
    .expect("a registry url");
    ev.debug(&right);
    let reg = right.connect().await.expect("the right password");
    let inst = Instance::new("sec", "127.0.0.1", 7310).with_id("sec-1");
    reg.register(&inst).await.expect("register with auth");
    assert_eq!(reg.instances("sec").await.expect("list"), vec![inst]);
    exercise(reg, "sec", &mut ev).await;
    ev.check("etcd (wrong then right password)", &["etcd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_token_never_prints_through_config_and_env() {
    const MASTER: &str = "5e1f0c2a-chi-master-token-d00d";
    const WRONG: &str = "0bad0bad-chi-wrong-token-f00d";
    let _one = begin().await;
    let agent = ConsulAgent::start_with_acl(MASTER).await;
    let yaml = |enabled_address: &str| {
        format!(
            "service_discovery:\n  registries:\n    consul:\n      enabled: true\n      address: \"{enabled_address}\"\n      token: \"\"\n"
        )
    };
    let mut ev = Evidence::new(&[MASTER, WRONG]);

    let wrong =
        Config::from_yaml_with_env(&yaml(&agent.addr()), env_of(&[("CHI_CONSUL_TOKEN", WRONG)]))
            .expect("config");
    ev.debug(&wrong);
    let reg = wrong
        .registries
        .connect()
        .await
        .expect("consul connects lazily");
    let e = reg
        .register(&Instance::new("sec", "127.0.0.1", 7320))
        .await
        .expect_err("a wrong token");
    assert!(e.to_string().contains("403"), "{e}");
    ev.error(&e);
    exercise(reg, "sec", &mut ev).await;

    let right = Config::from_yaml_with_env(
        &yaml(&agent.addr()),
        env_of(&[("CHI_CONSUL_TOKEN", MASTER)]),
    )
    .expect("config");
    ev.debug(&right);
    let reg = right.registries.connect().await.expect("connect");
    let inst = Instance::new("sec", "127.0.0.1", 7321).with_id("sec-1");
    reg.register(&inst).await.expect("register with the token");
    let got = reg.instances("sec").await.expect("list with the token");
    assert_eq!(got.len(), 1);
    exercise(reg, "sec", &mut ev).await;
    ev.check(
        "consul (wrong then right ACL token, from CHI_CONSUL_TOKEN)",
        &["consul"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_password_never_prints() {
    const RIGHT: &str = "nacos-R1ght-pa55-3e7d";
    const WRONG: &str = "nacos-Wr0ng-pa55-a1b2";
    let _one = begin().await;
    let server = NacosServer::start_with_auth("chi-admin", RIGHT, &[]);
    let url = format!("nacos://{}", server.addr());
    let mut ev = Evidence::new(&[RIGHT, WRONG]);
    let settings = |pw: &'static str| {
        Registries::from_url(
            &url,
            &env_of(&[
                ("CHI_NACOS_USERNAME", "chi-admin"),
                ("CHI_NACOS_PASSWORD", pw),
            ]),
        )
        .expect("a registry url")
    };

    // rnacos creates its admin user a moment after it listens: wait until the right one works.
    let right = settings(RIGHT);
    ev.debug(&right);
    let reg: Arc<Mutex<Option<Arc<dyn Registry>>>> = Arc::default();
    let ready = eventually(Duration::from_secs(15), || {
        let right = right.clone();
        let reg = reg.clone();
        async move {
            match right.connect().await {
                Ok(r) => {
                    *reg.lock().expect("slot") = Some(r);
                    true
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    false
                }
            }
        }
    })
    .await;
    assert!(ready.is_some(), "the right password never worked");
    let reg = reg.lock().expect("slot").take().expect("connected");

    let wrong = settings(WRONG);
    ev.debug(&wrong);
    let e = wrong.connect().await.err().expect("a wrong password");
    assert!(e.to_string().contains("403"), "{e}");
    ev.error(&e);

    let inst = Instance::new("sec", "127.0.0.1", 7330).with_id("sec-1");
    reg.register(&inst).await.expect("register with auth");
    exercise(reg, "sec", &mut ev).await;
    ev.check("nacos (wrong then right password)", &["nacos"]);
}

/// Agent-run checks stay on the instance's own address: a registration whose HTTP check points
/// elsewhere is refused before Consul sees it, and the "elsewhere" (a listener of the test)
/// gets no probe. With `allow_other_check_hosts` the same registration goes through and the
/// agent does probe the listener, which shows that the listener would have seen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_agent_checks_stay_on_the_instances_address() {
    use chi_discovery::HealthCheck;
    use chi_discovery::registry::consul::{Consul, ConsulConfig};
    use std::sync::atomic::AtomicUsize;

    let agent = ConsulAgent::start().await;
    let foreign = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let foreign_port = foreign.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = tokio::spawn(async move {
        while let Ok((_sock, _)) = foreign.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let check = HealthCheck {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        ..HealthCheck::http(format!("http://127.0.0.1:{foreign_port}/latest/meta-data/"))
    };
    // The instance is on another port of the same host: only the port differs.
    let inst = Instance::new("sec-checks", "127.0.0.1", 7340).with_id("sec-checks-1");

    let strict = Consul::new(ConsulConfig {
        address: agent.addr(),
        ..ConsulConfig::default()
    })
    .expect("config");
    let e = strict
        .register_with_checks(&inst, std::slice::from_ref(&check))
        .await
        .expect_err("a check on another port must be refused");
    let text = e.to_string();
    assert!(
        text.contains("health check target") && text.contains("allow_other_check_hosts"),
        "{text}"
    );
    assert!(
        strict
            .instances("sec-checks")
            .await
            .expect("list")
            .is_empty(),
        "nothing was registered"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_hits = hits.load(Ordering::SeqCst);
    assert_eq!(refused_hits, 0, "the agent probed the foreign address");

    let lax = Consul::new(ConsulConfig {
        address: agent.addr(),
        allow_other_check_hosts: true,
        ..ConsulConfig::default()
    })
    .expect("config");
    lax.register_with_checks(&inst, &[check])
        .await
        .expect("explicitly allowed");
    let probed = eventually(Duration::from_secs(10), || async {
        hits.load(Ordering::SeqCst) > 0
    })
    .await;
    listener.abort();
    assert!(
        probed.is_some(),
        "with the opt-in the agent should probe the listener (the control of this test)"
    );
    println!(
        "[reliability] consul check targets: foreign URL refused ({text:.120}...), 0 agent probes in 3 s; with allow_other_check_hosts the agent probed it after {:.1} s",
        probed.map(|d| d.as_secs_f64()).unwrap_or_default()
    );
}
