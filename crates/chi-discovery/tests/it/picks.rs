//! A [`Chi`] stack's picks end to end, against real servers on loopback (axum over HTTP, tonic's
//! health service over gRPC) registered in the embedded registry: through `Chi::http`, through
//! the tower service `Chi::balance` and through tonic's transport `Chi::grpc`,
//!
//! - the hash key (the `X-Hash-Key` header, or the header `load_balancer.hash_key_header`
//!   names, or an explicit key) sends a key to one instance, the same one on every path;
//! - `load_balancer.health_check_enabled` decides whether an unhealthy instance is called, on
//!   the tower paths too (`Chi::balance`, `Chi::grpc`, `Chi::discover`), with no call of theirs;
//! - every pick counts `load_balancer_selections_total` in the scrape of `Chi::metrics`, by
//!   instance unless `metrics.per_instance_labels: false`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use chi_discovery::config::Config;
use chi_discovery::integration::{Balance, HashKey};
use chi_discovery::registry::Memory;
use chi_discovery::{Chi, HealthStatus, Instance, Registry};
use chi_test_support::grpc::HealthServer;
use futures_util::StreamExt;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

const SERVICE: &str = "web";

/// An HTTP server answering every path with `name`; stops when the handle drops.
struct Backend {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &'static str) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new().fallback(get(move || async move { name }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Backend { port, task }
}

/// `names` served and registered as `web` with the given health; the registry and the servers.
async fn fleet(names: &[(&'static str, HealthStatus)]) -> (Arc<Memory>, Vec<Backend>) {
    let memory = Arc::new(Memory::new());
    let mut backends = Vec::new();
    for (name, health) in names {
        let b = backend(name).await;
        memory
            .register(
                &Instance::new(SERVICE, "127.0.0.1", b.port)
                    .with_id(*name)
                    .with_health(*health),
            )
            .await
            .expect("register");
        backends.push(b);
    }
    (memory, backends)
}

fn healthy(names: &[&'static str]) -> Vec<(&'static str, HealthStatus)> {
    names.iter().map(|n| (*n, HealthStatus::Healthy)).collect()
}

fn stack(yaml: &str, memory: &Arc<Memory>) -> Chi {
    let config = Config::from_yaml_with_env(yaml, |_| None).expect("config");
    Chi::over(config, memory.clone()).expect("stack")
}

fn lb(lines: &str) -> String {
    format!("service_discovery:\n  load_balancer:\n{lines}")
}

/// A tower service calling one instance over HTTP (reqwest): the path of the request, the
/// body of the answer.
type Call = tower::util::BoxCloneSyncService<http::Request<()>, String, reqwest::Error>;

fn http_call(i: &Instance) -> Result<Call, Infallible> {
    let base = format!("http://{}", i.authority());
    let client = reqwest::Client::new();
    Ok(tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<()>| {
            let (client, url) = (client.clone(), format!("{base}{}", req.uri().path()));
            async move { client.get(url).send().await?.text().await }
        },
    )))
}

/// Who answers `GET /` through the tower service, with `headers`.
async fn via_tower(svc: &Balance<Call>, headers: &[(&str, &str)], key: Option<&str>) -> String {
    let mut request = http::Request::builder().uri("/");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut request = request.body(()).expect("request");
    if let Some(key) = key {
        request
            .extensions_mut()
            .insert(HashKey(key.as_bytes().to_vec()));
    }
    svc.clone().oneshot(request).await.expect("an answer")
}

/// Who answers `GET http://web/` through `Chi::http`, with `headers`.
async fn via_http(chi: &Chi, headers: &[(&str, &str)], key: Option<&str>) -> String {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let http = chi.http();
    let response = match key {
        Some(key) => http.get_with_key("http://web/", &map, key.as_bytes()).await,
        None => http.get("http://web/", &map).await,
    };
    response.expect("an answer").text().await.expect("a body")
}

/// For each hashing strategy: a key always reaches one instance, the same through `Chi::http`
/// and the tower service, whether it comes in `X-Hash-Key` or as an explicit key; keys spread
/// over the instances; without a key the picks are spread too (no stickiness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reaches_the_same_instance_through_http_and_tower() {
    let (memory, _backends) = fleet(&healthy(&["a", "b", "c", "d"])).await;
    for strategy in ["consistent_hash", "ring_hash", "maglev"] {
        let chi = stack(&lb(&format!("    strategy: {strategy}\n")), &memory);
        let svc = chi.balance(SERVICE, http_call).expect("balance");
        let mut owners = BTreeMap::new();
        for k in 0..24 {
            let key = format!("user-{k}");
            let header = [("x-hash-key", key.as_str())];
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                seen.insert(via_http(&chi, &header, None).await);
                seen.insert(via_http(&chi, &[], Some(&key)).await);
                seen.insert(via_tower(&svc, &header, None).await);
                seen.insert(via_tower(&svc, &[], Some(&key)).await);
            }
            assert_eq!(seen.len(), 1, "{strategy}: key {key} went to {seen:?}");
            owners.insert(key, seen.into_iter().next().unwrap_or_default());
        }
        let used: BTreeSet<&String> = owners.values().collect();
        assert!(used.len() >= 3, "{strategy}: 24 keys on {used:?}");
        let mut keyless = BTreeSet::new();
        for _ in 0..40 {
            keyless.insert(via_http(&chi, &[], None).await);
            keyless.insert(via_tower(&svc, &[], None).await);
        }
        assert!(
            keyless.len() >= 3,
            "{strategy}: without a key the picks spread: {keyless:?}"
        );
    }
}

/// `load_balancer.hash_key_header: X-User`: that header is the key on both paths, and
/// `X-Hash-Key` is no key any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_key_header_is_the_configured_one() {
    let (memory, _backends) = fleet(&healthy(&["a", "b", "c", "d"])).await;
    let chi = stack(
        &lb("    strategy: consistent_hash\n    hash_key_header: X-User\n"),
        &memory,
    );
    let svc = chi.balance(SERVICE, http_call).expect("balance");
    for k in 0..8 {
        let key = format!("user-{k}");
        let header = [("x-user", key.as_str())];
        let mut seen = BTreeSet::new();
        for _ in 0..5 {
            seen.insert(via_http(&chi, &header, None).await);
            seen.insert(via_tower(&svc, &header, None).await);
        }
        assert_eq!(seen.len(), 1, "key {key} went to {seen:?}");
    }
    let mut spread = BTreeSet::new();
    for _ in 0..40 {
        spread.insert(via_http(&chi, &[("x-hash-key", "user-1")], None).await);
        spread.insert(via_tower(&svc, &[("x-hash-key", "user-1")], None).await);
    }
    assert!(spread.len() >= 3, "X-Hash-Key is no key here: {spread:?}");
}

/// `health_check_enabled` reaches the tower paths of the stack: an instance the registry holds
/// unhealthy (while it serves) is called only when it is `false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_paths_follow_health_check_enabled() {
    let (memory, _backends) = fleet(&[
        ("up", HealthStatus::Healthy),
        ("down", HealthStatus::Unhealthy),
    ])
    .await;
    for (enabled, want) in [(true, vec!["up"]), (false, vec!["down", "up"])] {
        let chi = stack(
            &lb(&format!(
                "    strategy: round_robin\n    health_check_enabled: {enabled}\n"
            )),
            &memory,
        );
        let svc = chi.balance(SERVICE, http_call).expect("balance");
        let mut called = BTreeSet::new();
        for _ in 0..10 {
            called.insert(via_tower(&svc, &[], None).await);
        }
        assert_eq!(
            called.iter().map(String::as_str).collect::<Vec<_>>(),
            want,
            "Chi::balance, health_check_enabled: {enabled}"
        );

        let mut discover = chi
            .discover(SERVICE, |i: &Instance| Ok::<_, Infallible>(i.id.clone()))
            .await
            .expect("discover");
        let mut inserted = Vec::new();
        while inserted.len() < want.len() {
            match tokio::time::timeout(std::time::Duration::from_secs(5), discover.next()).await {
                Ok(Some(Ok(tower::discover::Change::Insert(id, _)))) => inserted.push(id),
                other => panic!("an insert, got {:?}", other.map(|o| o.is_some())),
            }
        }
        inserted.sort();
        assert_eq!(
            inserted, want,
            "Chi::discover, health_check_enabled: {enabled}"
        );
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), discover.next())
                .await
                .is_err(),
            "nothing else is handed to tower"
        );
    }
}

/// Which of two tonic health servers answered: server `a` serves the health of service `a`
/// only, so a check of `a` succeeds there and is NOT_FOUND on `b`.
async fn grpc_who(
    client: &mut HealthClient<Balance<tonic::transport::Channel>>,
    key: &str,
) -> &'static str {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "a".to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-hash-key", key.parse().expect("metadata"));
    match client.check(request).await {
        Ok(_) => "a",
        Err(status) if status.code() == tonic::Code::NotFound => "b",
        Err(status) => panic!("the call failed: {status}"),
    }
}

/// tonic through `Chi::grpc`: the stack picks every call (a key sticks to one server), an
/// unhealthy server is called only with `health_check_enabled: false`, and the picks count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_through_chi_grpc() {
    let a = HealthServer::start(&[("a", ServingStatus::Serving)]).await;
    let b = HealthServer::start(&[("b", ServingStatus::Serving)]).await;
    let memory = Arc::new(Memory::new());
    for (id, port, health) in [
        ("a", a.port, HealthStatus::Healthy),
        ("b", b.port, HealthStatus::Unhealthy),
    ] {
        memory
            .register(
                &Instance::new("grpc-svc", "127.0.0.1", port)
                    .with_id(id)
                    .with_health(health),
            )
            .await
            .expect("register");
    }
    for (enabled, want) in [(true, vec!["a"]), (false, vec!["a", "b"])] {
        let chi = stack(
            &lb(&format!(
                "    strategy: maglev\n    health_check_enabled: {enabled}\n"
            )),
            &memory,
        );
        let mut registry = prometheus_client::registry::Registry::default();
        let _metrics = chi.metrics(&mut registry);
        let mut client = HealthClient::new(chi.grpc("grpc-svc").expect("grpc"));
        let mut reached = BTreeSet::new();
        for k in 0..16 {
            let key = format!("user-{k}");
            let first = grpc_who(&mut client, &key).await;
            for _ in 0..3 {
                assert_eq!(grpc_who(&mut client, &key).await, first, "key {key} sticks");
            }
            reached.insert(first);
        }
        assert_eq!(
            reached.into_iter().collect::<Vec<_>>(),
            want,
            "Chi::grpc, health_check_enabled: {enabled}"
        );
        let text = scrape(&registry);
        assert_eq!(
            selections(&text, "grpc-svc").values().sum::<u64>(),
            64,
            "16 keys x 4 calls, each one pick:\n{text}"
        );
    }
}

fn scrape(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text
}

/// `load_balancer_selections_total` of `service` in a scrape: count by label set (the labels
/// after `service`).
fn selections(text: &str, service: &str) -> BTreeMap<String, u64> {
    let prefix = format!("load_balancer_selections_total{{service=\"{service}\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Every pick of `Chi::http` and of the tower service counts in the scrape of `Chi::metrics`:
/// by instance by default, summed per service with `metrics.per_instance_labels: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pick_counts_in_the_scrape() {
    let (memory, _backends) = fleet(&healthy(&["a", "b"])).await;

    let chi = stack(&lb("    strategy: round_robin\n"), &memory);
    let mut registry = prometheus_client::registry::Registry::default();
    let _metrics = chi.metrics(&mut registry);
    let svc = chi.balance(SERVICE, http_call).expect("balance");
    for _ in 0..6 {
        via_http(&chi, &[], None).await;
    }
    for _ in 0..4 {
        via_tower(&svc, &[], None).await;
    }
    let text = scrape(&registry);
    let by_instance = selections(&text, SERVICE);
    assert_eq!(
        by_instance,
        BTreeMap::from([
            (",instance=\"a\",strategy=\"round_robin\"}".to_owned(), 5),
            (",instance=\"b\",strategy=\"round_robin\"}".to_owned(), 5),
        ]),
        "{text}"
    );
    assert!(
        text.contains("chi_routing_decisions_total{service=\"web\""),
        "the routing decisions count too:\n{text}"
    );

    let chi = stack(
        "service_discovery:\n  load_balancer:\n    strategy: round_robin\n  metrics:\n    per_instance_labels: false\n",
        &memory,
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let _metrics = chi.metrics(&mut registry);
    let svc = chi.balance(SERVICE, http_call).expect("balance");
    for _ in 0..3 {
        via_http(&chi, &[], None).await;
        via_tower(&svc, &[], None).await;
    }
    let text = scrape(&registry);
    assert_eq!(
        selections(&text, SERVICE),
        BTreeMap::from([(",strategy=\"round_robin\"}".to_owned(), 6)]),
        "no instance label:\n{text}"
    );
}
