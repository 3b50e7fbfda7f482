//! `chi proxy`'s picks: every one counts `load_balancer_selections_total` on the admin port's
//! `/metrics` (by instance, or summed per service with `metrics.per_instance_labels: false`),
//! and the hash key comes from the header `load_balancer.hash_key_header` names.

use std::collections::BTreeMap;

use crate::proxy::{client, fleet, proxy_config, spread, start_proxy_config, wait_ready};
use crate::support::http_get;

/// `name{labels} value` lines of `metric` for service `web` in a scrape: value by the labels
/// after `service`.
fn series(metrics: &str, metric: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{metric}{{service=\"web\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The proxy's requests so far (its own counter) and the library's selections, from a scrape.
fn counts(admin: &str) -> (u64, BTreeMap<String, u64>, String) {
    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let requests = series(&metrics, "chi_proxy_requests_total").values().sum();
    let selections = series(&metrics, "load_balancer_selections_total");
    (requests, selections, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxied_request_counts_one_selection_by_instance() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1), ("b2", "v1", "us-east-1", 1)]).await;
    let proxy = start_proxy_config(&proxy_config("round_robin"), &f.host.url(), &[]);
    let c = client();
    wait_ready(&c, &proxy.addr, 2).await;
    spread(&c, &proxy.addr, 20, &[]).await;
    let (requests, selections, metrics) = counts(&proxy.admin);
    let mut ids: Vec<String> = f
        .backends
        .iter()
        .map(|b| {
            format!(
                ",instance=\"web-127.0.0.1-{}\",strategy=\"round_robin\"}}",
                b.port
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        selections.keys().collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>(),
        "one series per instance:\n{metrics}"
    );
    assert_eq!(
        selections.values().sum::<u64>(),
        requests,
        "one pick per request (no retries here):\n{metrics}"
    );
    assert!(requests >= 20, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_labels_false_sums_the_selections_per_service() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1), ("b2", "v1", "us-east-1", 1)]).await;
    let config = format!(
        "{}  metrics:\n    per_instance_labels: false\n",
        proxy_config("round_robin")
    );
    let proxy = start_proxy_config(&config, &f.host.url(), &[]);
    let c = client();
    wait_ready(&c, &proxy.addr, 2).await;
    spread(&c, &proxy.addr, 20, &[]).await;
    let (requests, selections, metrics) = counts(&proxy.admin);
    assert_eq!(
        selections,
        BTreeMap::from([(",strategy=\"round_robin\"}".to_owned(), requests)]),
        "no instance label:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_key_comes_from_the_configured_header() {
    let f = fleet(&[
        ("b1", "v1", "us-east-1", 1),
        ("b2", "v1", "us-east-1", 1),
        ("b3", "v1", "us-east-1", 1),
    ])
    .await;
    let config = proxy_config("consistent_hash").replace(
        "  load_balancer:\n",
        "  load_balancer:\n    hash_key_header: \"X-User\"\n",
    );
    let proxy = start_proxy_config(&config, &f.host.url(), &[]);
    let c = client();
    wait_ready(&c, &proxy.addr, 3).await;
    for k in 0..6 {
        let key = format!("user-{k}");
        let sticky = spread(&c, &proxy.addr, 10, &[("x-user", key.as_str())]).await;
        assert_eq!(sticky.len(), 1, "X-User {key} sticks: {sticky:?}");
    }
    let loose = spread(&c, &proxy.addr, 40, &[("x-hash-key", "user-1")]).await;
    assert!(
        loose.len() >= 2,
        "X-Hash-Key is no key with hash_key_header: X-User: {loose:?}"
    );
}
