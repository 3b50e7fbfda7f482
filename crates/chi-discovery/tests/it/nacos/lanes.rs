//! Several instances of one service from one client. A Nacos 2.x server keeps one instance per
//! service per connection and nacos-sdk sends one per service again after a reconnect, so the
//! adapter gives each instance of a service a connection of its own: here every one comes back
//! after the server restarts, sent again by nacos-sdk alone (no service manager), a
//! deregistered one stays gone, and the connection it freed is reused.

use std::time::Duration;

use chi_discovery::{Instance, Registry};
use chi_test_support::eventually;
use chi_test_support::nacos::{NacosServer, connected_ports};

use super::{connect, ids, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_of_a_service_comes_back_after_a_restart_and_a_freed_connection_is_reused() {
    let mut server = NacosServer::start();
    let svc = unique("lanes");
    let other = unique("lanes-other");
    let writer = connect(server.config()).await;
    let reader = connect(server.config()).await;
    let grpc = server.http_port + 1000;
    let connections = || connected_ports().iter().filter(|p| **p == grpc).count();
    let before = connections();

    for (id, port) in [("a", 7401), ("b", 7402), ("c", 7403)] {
        let inst = Instance::new(&svc, "127.0.0.1", port).with_id(id);
        writer.register(&inst).await.expect("register");
    }
    let t = Instance::new(&other, "127.0.0.1", 7409).with_id("t");
    writer.register(&t).await.expect("register t");
    assert_eq!(
        connections(),
        before + 2,
        "three instances of one service take two more connections, one of another service none"
    );
    writer.deregister(&svc, "b").await.expect("deregister b");
    let d = Instance::new(&svc, "127.0.0.1", 7404).with_id("d");
    writer.register(&d).await.expect("register d");
    assert_eq!(connections(), before + 2, "d reuses the connection b freed");

    let want = ["a", "c", "d"].map(String::from).to_vec();
    let listed = |service: String| {
        let reader = reader.clone();
        async move { reader.instances(&service).await.map(|l| ids(&l)) }
    };
    assert_eq!(listed(svc.clone()).await.expect("list"), want);

    server.kill();
    server.restart();
    let back = eventually(Duration::from_secs(20), || async {
        listed(svc.clone()).await.is_ok_and(|l| l == want)
            && listed(other.clone()).await.is_ok_and(|l| l == ["t"])
    })
    .await;
    assert!(
        back.is_some(),
        "not every registration came back after the restart: {svc} {:?}, {other} {:?}",
        listed(svc.clone()).await,
        listed(other.clone()).await
    );
    // And b, deregistered before the restart, is not sent again later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(listed(svc.clone()).await.expect("list"), want);
}
