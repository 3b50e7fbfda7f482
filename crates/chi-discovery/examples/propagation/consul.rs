//! consul side of the propagation bench.
//!
//! The floor is what raw HTTP achieves on the same agent: one task keeps a blocking query on
//! `/v1/health/service/:name` open (index + wait, as Consul documents), the main task registers
//! with a plain `PUT /v1/agent/service/register` carrying the same TTL check chi registers (so
//! Consul does the same work on both paths), and the sample is the time until an answer lists
//! the new id. chi's path adds its typed client, the mapping to `Instance` and the diff.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::Registry;
use chi_discovery::registry::consul::{Consul, ConsulConfig};
use tokio::sync::mpsc;

const FLOOR_SERVICE: &str = "bench-consul-floor";

fn base(addr: &str) -> String {
    if addr.contains("://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Floor: the raw HTTP register -> blocking-query answer, `n` times.
pub(crate) async fn floor(addr: &str, n: usize) -> Vec<Duration> {
    let base = base(addr);
    let http = reqwest::Client::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let watcher = {
        let http = http.clone();
        let url = format!("{base}/v1/health/service/{FLOOR_SERVICE}");
        tokio::spawn(async move {
            let mut index: u64 = 0;
            let mut seen: HashSet<String> = HashSet::new();
            loop {
                let req = http
                    .get(&url)
                    .query(&[("index", index.to_string()), ("wait", "60s".to_owned())]);
                let Ok(resp) = req.send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let next = resp
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let Ok(entries) = resp.json::<Vec<serde_json::Value>>().await else {
                    continue;
                };
                let at = Instant::now();
                index = if next < index { 0 } else { next.max(1) };
                for e in entries {
                    if let Some(id) = e["Service"]["ID"].as_str()
                        && seen.insert(id.to_owned())
                        && tx.send((id.to_owned(), at)).is_err()
                    {
                        return;
                    }
                }
            }
        })
    };
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let id = format!("{FLOOR_SERVICE}-{k}");
        let body = serde_json::json!({
            "ID": id, "Name": FLOOR_SERVICE, "Address": "127.0.0.1",
            "Port": 10_000 + (k % 50_000) as u16,
            "Checks": [{"CheckID": format!("floor:{id}:ttl"), "Name": "ttl", "TTL": "15s", "Status": "passing"}],
        });
        let start = Instant::now();
        let ok = http
            .put(format!("{base}/v1/agent/service/register"))
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        assert!(ok, "raw register of {id} failed");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((seen, at))) if seen == id => {
                    samples.push(at.saturating_duration_since(start));
                    break;
                }
                Ok(Some(_)) => continue,
                _ => panic!("the raw blocking query never listed {id}"),
            }
        }
    }
    watcher.abort();
    for k in 0..n {
        let _ = http
            .put(format!(
                "{base}/v1/agent/service/deregister/{FLOOR_SERVICE}-{k}"
            ))
            .send()
            .await;
    }
    samples
}

/// Two independent chi registries on `addr`: one registers, the other watches.
pub(crate) async fn registries(addr: &str) -> (Arc<dyn Registry>, Arc<dyn Registry>) {
    let make = || -> Arc<dyn Registry> {
        Arc::new(
            Consul::new(ConsulConfig {
                address: addr.to_owned(),
                ..ConsulConfig::default()
            })
            .unwrap_or_else(|e| panic!("consul config: {e}")),
        )
    };
    (make(), make())
}
