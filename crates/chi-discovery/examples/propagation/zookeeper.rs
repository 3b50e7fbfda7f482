//! ZooKeeper side of the propagation bench.
//!
//! The floor is what ZooKeeper itself costs to tell another client about a new node and what it
//! holds: a raw `zookeeper-client` ephemeral `create` on one session, the `NodeCreated` event on
//! a persistent recursive watch of another session, and that session's read of the node (events
//! carry no data, so every ZooKeeper client reads it, as Curator's caches do). chi's path adds
//! Curator's JSON and the watch task's bookkeeping; the one-shot row sets a child and a data watch
//! again after every event, as chi does on servers before 3.6.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::Registry;
use chi_discovery::registry::zookeeper::{WatchMode, Zookeeper, ZookeeperConfig};
use zookeeper_client as zk;

/// Floor: the raw client's ephemeral create -> persistent watch notification -> read, `n` times.
pub(crate) async fn floor(addr: &str, n: usize) -> Vec<Duration> {
    let dir = "/chi-bench-floor";
    let writer = zk::Client::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("zookeeper at {addr}: {e}"));
    let reader = zk::Client::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("zookeeper at {addr}: {e}"));
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let _ = writer.create(dir, b"", &open).await;
    let mut watcher = reader
        .watch(dir, zk::AddWatchMode::PersistentRecursive)
        .await
        .expect("watch");
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let path = format!("{dir}/{k}");
        let start = Instant::now();
        writer
            .create(&path, b"{}", &ephemeral)
            .await
            .expect("create");
        loop {
            let event = watcher.changed().await;
            if event.event_type == zk::EventType::NodeCreated && event.path == path {
                reader.get_data(&path).await.expect("read the new node");
                break;
            }
        }
        samples.push(start.elapsed());
    }
    for k in 0..n {
        let _ = writer.delete(&format!("{dir}/{k}"), None).await;
    }
    samples
}

/// Two independent chi registries (two sessions) on `addr`: one registers, the other watches.
pub(crate) async fn registries(
    addr: &str,
    watch: WatchMode,
) -> (Arc<dyn Registry>, Arc<dyn Registry>) {
    let connect = || async {
        Zookeeper::connect(ZookeeperConfig {
            root: Some("/chi-bench/services".into()),
            watch,
            ..ZookeeperConfig::new([addr])
        })
        .await
        .unwrap_or_else(|e| panic!("zookeeper at {addr}: {e}"))
    };
    let writer: Arc<dyn Registry> = Arc::new(connect().await);
    let reader: Arc<dyn Registry> = Arc::new(connect().await);
    (writer, reader)
}
