//! The admin port's registry API and its token checks, through the library's `chi://` client
//! and raw requests.

use chi_discovery::config::{AgentSettings, WriteScope};
use chi_discovery::registry::Memory;
use chi_discovery::registry::chi::{Agent, AgentConfig};
use chi_discovery::{Change, Error, HealthStatus, Liveness, Secret};

use super::*;

/// The admin API over an embedded registry, and the library's `chi://` client of it.
async fn agent() -> (Arc<Memory>, Agent) {
    let (memory, addr) = guarded(AgentSettings::default(), None).await;
    let remote = Agent::new(AgentConfig::new(addr.to_string())).expect("client");
    (memory, remote)
}

/// The admin API over an embedded registry with `settings`' tokens (writes refused with
/// `writes_off`); its address.
async fn guarded(settings: AgentSettings, writes_off: Option<String>) -> (Arc<Memory>, SocketAddr) {
    let memory = Arc::new(Memory::new());
    let access = Arc::new(Access::new(&settings));
    let metrics_access = access.clone();
    let api = RegistryApi {
        registry: memory.clone(),
        access,
        writes_off,
    };
    let addr = serve(
        "127.0.0.1:0".parse().expect("addr"),
        Some(api),
        (
            Arc::new(|| (true, serde_json::Value::Null)),
            Arc::new(move || {
                let mut registry = prometheus_client::registry::Registry::default();
                metrics_access.register_metrics(&mut registry);
                let mut out = String::new();
                prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
                out
            }),
        ),
        Router::new(),
        (Door::for_tests("agent"), 256 << 10),
        None,
    )
    .await
    .expect("admin");
    (memory, addr)
}

fn tokens() -> AgentSettings {
    AgentSettings {
        read_token: Some(Secret::new("read-token")),
        write_token: Some(Secret::new("write-token")),
        write_scopes: vec![WriteScope {
            token: Secret::new("orders-token"),
            services: vec!["orders-*".into()],
        }],
        forward_writes: false,
        tls: None,
    }
}

fn client(addr: SocketAddr, token: &str) -> Agent {
    Agent::new(AgentConfig::new(addr.to_string()).with_token(token)).expect("client")
}

#[tokio::test]
async fn the_chi_client_with_each_token_does_what_the_token_may() {
    let (memory, addr) = guarded(tokens(), None).await;
    let held = Instance::new("billing", "127.0.0.1", 1).with_id("billing-1");
    memory.register(&held).await.expect("seed");
    let orders = Instance::new("orders-api", "127.0.0.1", 2).with_id("orders-1");

    // No token, a wrong one: 401 on reads and writes, nothing changed.
    for token in ["", "wrong-token"] {
        let c = client(addr, token);
        for e in [
            c.instances("billing").await.expect_err("read"),
            c.register(&orders).await.expect_err("write"),
            c.deregister("billing", "billing-1")
                .await
                .expect_err("write"),
        ] {
            assert!(e.to_string().contains("401"), "{token:?}: {e}");
        }
    }
    // The read token reads, and may not write.
    let reader = client(addr, "read-token");
    assert_eq!(
        ids(&reader.instances("billing").await.expect("read")),
        ["billing-1"]
    );
    let e = reader
        .deregister("billing", "billing-1")
        .await
        .expect_err("403");
    assert!(
        e.to_string().contains("403") && e.to_string().contains("may not write"),
        "{e}"
    );
    // The scoped token writes its services only.
    let scoped = client(addr, "orders-token");
    scoped.register(&orders).await.expect("in scope");
    assert_eq!(
        scoped
            .keep_alive(&orders, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    let e = scoped
        .deregister("billing", "billing-1")
        .await
        .expect_err("out of scope");
    assert!(e.to_string().contains("403"), "{e}");
    // Watches need a token too.
    assert!(client(addr, "").watch("billing").await.is_err());
    let mut w = scoped.watch("billing").await.expect("watch");
    assert!(matches!(
        futures_util::StreamExt::next(&mut w).await,
        Some(Ok(Change::Reset(_)))
    ));
    assert_eq!(
        ids(&memory.instances("billing").await.expect("list")),
        ["billing-1"]
    );
    assert_eq!(
        ids(&memory.instances("orders-api").await.expect("list")),
        ["orders-1"]
    );
    // The write token writes anything.
    client(addr, "write-token")
        .deregister("billing", "billing-1")
        .await
        .expect("write token");
    assert!(memory.instances("billing").await.expect("list").is_empty());

    // The refusals are counted, by reason.
    let http = reqwest::Client::new();
    let scrape = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    for reason in ["missing", "invalid", "scope"] {
        assert!(
            scrape.contains(&format!(
                "chi_agent_auth_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {scrape}"
        );
    }
}

#[tokio::test]
async fn refusals_are_json_and_a_refused_body_is_not_read() {
    let (memory, addr) = guarded(tokens(), None).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/services/orders-api/instances/o-1");
    // A body that is not even JSON: the token check answers first.
    let resp = http.put(&url).body("not json").send().await.expect("put");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Bearer")),
        "{body}"
    );
    let resp = http
        .put(&url)
        .bearer_auth("read-token")
        .json(&Instance::new("orders-api", "127.0.0.1", 1).with_id("o-1"))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], "forbidden");
    assert!(memory.services().await.expect("services").is_empty());
    // With the right token, a bad body is still a clear 4xx.
    let resp = http
        .put(&url)
        .bearer_auth("write-token")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn an_agent_fronting_another_registry_refuses_writes_unless_told() {
    let (memory, addr) = guarded(
        AgentSettings::default(),
        Some("forward_writes is off".into()),
    )
    .await;
    let seeded = Instance::new("web", "127.0.0.1", 1).with_id("web-1");
    memory.register(&seeded).await.expect("seed");
    let c = client(addr, "");
    let e = c
        .register(&Instance::new("web", "127.0.0.1", 2).with_id("web-2"))
        .await;
    assert!(
        e.expect_err("refused")
            .to_string()
            .contains("forward_writes is off")
    );
    let e = c.deregister("web", "web-1").await.expect_err("refused");
    assert!(e.to_string().contains("403"), "{e}");
    assert!(c.keep_alive(&seeded, HealthStatus::Healthy).await.is_err());
    // Reads still go through; nothing changed.
    assert_eq!(ids(&c.instances("web").await.expect("read")), ["web-1"]);
}

fn ids(list: &[Instance]) -> Vec<&str> {
    let mut ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn ids_with_url_characters_reach_the_agent_unchanged() {
    let (memory, remote) = agent().await;
    let hostile = [
        "web?x",
        "web#x",
        "web%2Fx",
        "web%x",
        "with space",
        "ünï-名前-🚀",
        "a;b=c",
    ];
    let plain = Instance::new("web", "127.0.0.1", 8080).with_id("web");
    remote.register(&plain).await.expect("register web");
    for (n, id) in hostile.iter().enumerate() {
        let i = Instance::new("web", "127.0.0.1", 9000 + n as u16).with_id(*id);
        remote.register(&i).await.expect(id);
        assert_eq!(
            remote
                .keep_alive(&i, HealthStatus::Healthy)
                .await
                .expect(id),
            Liveness::Alive,
            "{id}"
        );
    }
    let mut want: Vec<&str> = hostile.to_vec();
    want.push("web");
    want.sort_unstable();
    assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
    assert_eq!(ids(&remote.instances("web").await.expect("list")), want);

    // Removing `web?x` removes it alone (it was once read as `web`).
    remote.deregister("web", "web?x").await.expect("deregister");
    want.retain(|id| *id != "web?x");
    assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
}

#[tokio::test]
async fn service_names_with_url_characters_watch_and_list() {
    let (_memory, remote) = agent().await;
    let name = "svc?a=1#frag %";
    let i = Instance::new(name, "127.0.0.1", 8080).with_id("i-1");
    remote.register(&i).await.expect("register");
    assert_eq!(remote.services().await.expect("services"), [name]);
    let mut watch = remote.watch(name).await.expect("watch");
    match futures_util::StreamExt::next(&mut watch).await {
        Some(Ok(Change::Reset(list))) => assert_eq!(ids(&list), ["i-1"]),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn names_every_registry_refuses_are_refused_before_a_request() {
    let (_memory, remote) = agent().await;
    for (name, id, field) in [
        ("..", "i", "service name"),
        ("web", "..", "instance id"),
        ("web", "a/b", "instance id"),
        ("web", " ", "instance id"),
    ] {
        let e = remote.deregister(name, id).await.expect_err("refused");
        assert!(matches!(e, Error::Invalid { .. }), "{name:?} {id:?}: {e}");
        assert!(e.to_string().contains(field), "{name:?} {id:?}: {e}");
    }
}

#[tokio::test]
async fn the_agent_refuses_names_the_registries_refuse() {
    let (_memory, remote) = agent().await;
    let http = reqwest::Client::new();
    for (path, field) in [
        ("/v1/services/a%2Fb", "service name"),
        ("/v1/services/a..b/watch", "service name"),
        ("/v1/services/web/instances/a%2Fb", "instance id"),
        ("/v1/services/web/instances/%20", "instance id"),
    ] {
        let url = format!("http://{}{path}", remote.config().address);
        let get = http.get(&url).send().await.expect("get");
        let delete = http.delete(&url).send().await.expect("delete");
        let resp = if path.contains("instances") {
            delete
        } else {
            get
        };
        assert_eq!(resp.status(), 400, "{path}");
        let body = resp.text().await.expect("body");
        assert!(body.contains(field), "{path}: {body}");
    }
}
