//! etcd side of the propagation bench.
//!
//! The floor is what etcd itself costs: a raw etcd-client `put` on one connection until the
//! event arrives on a prefix watch of another connection. chi's path adds a lease (granted once,
//! on the first registration), JSON and the watch task's bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::Registry;
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use etcd_client::{Client, DeleteOptions, WatchOptions};

/// Floor: the raw etcd client's put -> watch notification, `n` times.
pub(crate) async fn floor(addr: &str, n: usize) -> Vec<Duration> {
    let prefix = "/chi-bench/floor/";
    let mut writer = Client::connect([addr], None)
        .await
        .unwrap_or_else(|e| panic!("etcd at {addr}: {e}"));
    let mut reader = Client::connect([addr], None)
        .await
        .unwrap_or_else(|e| panic!("etcd at {addr}: {e}"));
    let mut watch = reader
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    // The `created` answer.
    let _ = watch.message().await.expect("watch created");
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let key = format!("{prefix}{k}");
        let start = Instant::now();
        writer
            .put(key.clone(), b"{}".to_vec(), None)
            .await
            .expect("put");
        'wait: loop {
            let resp = watch.message().await.expect("watch").expect("watch open");
            for ev in resp.events() {
                if ev.kv().is_some_and(|kv| kv.key() == key.as_bytes()) {
                    break 'wait;
                }
            }
        }
        samples.push(start.elapsed());
    }
    let _ = writer
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await;
    samples
}

/// Two independent chi registries on `addr`: one registers, the other watches.
pub(crate) async fn registries(addr: &str) -> (Arc<dyn Registry>, Arc<dyn Registry>) {
    let connect = || async {
        Etcd::connect(EtcdConfig {
            prefix: "/chi-bench/services".into(),
            ..EtcdConfig::new([addr])
        })
        .await
        .unwrap_or_else(|e| panic!("etcd at {addr}: {e}"))
    };
    let writer: Arc<dyn Registry> = Arc::new(connect().await);
    let reader: Arc<dyn Registry> = Arc::new(connect().await);
    (writer, reader)
}
