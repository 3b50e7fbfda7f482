//! The restart grace: a registry that comes back with part of its instances (a restarted Consul
//! dev agent, rnacos) and gets the rest registered again one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::Registry;

use super::delta::{self, Delta};
use super::sotw::{Ads, ports};
use super::{Fixture, Flaky, SERVICE, flaky_with, inst, round_robin, serve_with_grace};
use crate::xds::resources::Kind;

const GRACE: Duration = Duration::from_millis(1500);

/// Instances a, b and c (ports 7001 to 7003) behind a registry that can go down, served with
/// the restart grace.
async fn three_with_grace() -> (Arc<Flaky>, Fixture) {
    let flaky = flaky_with([
        inst("a", 7001, "z1"),
        inst("b", 7002, "z1"),
        inst("c", 7003, "z1"),
    ])
    .await;
    let f = serve_with_grace(flaky.clone(), round_robin(), 8, GRACE).await;
    (flaky, f)
}

#[tokio::test]
async fn a_resync_after_an_outage_removes_nothing_while_the_instances_come_back() {
    let (flaky, f) = three_with_grace().await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let e1 = ads.recv().await;
    assert_eq!(ports(&e1), vec![7001, 7002, 7003]);
    ads.ack(&e1, &[SERVICE]).await;

    // The registry restarts without b and c, and with a new instance d.
    flaky.set_down(true);
    ads.quiet().await;
    flaky.deregister(SERVICE, "b").await.expect("deregister");
    flaky.deregister(SERVICE, "c").await.expect("deregister");
    flaky
        .register(&inst("d", 7004, "z1"))
        .await
        .expect("register");
    flaky.set_down(false);

    // The addition goes out at once; b and c stay.
    let e2 = ads.recv().await;
    assert_eq!(ports(&e2), vec![7001, 7002, 7003, 7004]);
    ads.ack(&e2, &[SERVICE]).await;

    // Their owners register them again: nothing to send.
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    flaky
        .register(&inst("c", 7003, "z1"))
        .await
        .expect("register");
    ads.quiet().await;
    // Nor when the grace ends: nothing is missing.
    tokio::time::sleep(GRACE).await;
    ads.quiet().await;

    // A removal outside a resync goes out at once.
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    let e3 = ads.recv().await;
    assert_eq!(ports(&e3), vec![7002, 7003, 7004]);
}

#[tokio::test]
async fn an_instance_that_does_not_come_back_is_removed_when_the_grace_ends() {
    let (flaky, f) = three_with_grace().await;
    let mut delta = Delta::open(&f).await;
    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    let r1 = delta.take().await;
    assert_eq!(delta::ports(&r1), vec![7001, 7002, 7003]);

    flaky.set_down(true);
    delta.quiet().await;
    flaky.deregister(SERVICE, "b").await.expect("deregister");
    flaky.deregister(SERVICE, "c").await.expect("deregister");
    flaky.set_down(false);
    let back = Instant::now();
    // The resync with only a: nothing sent; b comes back: nothing sent.
    delta.quiet().await;
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    delta.quiet().await;

    // c never does: removed once the grace is over, not before.
    let r2 = delta.take().await;
    assert!(
        back.elapsed() >= GRACE - Duration::from_millis(300),
        "removed after {:?}",
        back.elapsed()
    );
    assert_eq!(delta::kind(&r2), Kind::Endpoints);
    assert_eq!(delta::ports(&r2), vec![7001, 7002]);
    assert!(r2.removed_resources.is_empty());
}

#[tokio::test]
async fn removals_after_an_outage_the_watch_did_not_see_wait_for_the_grace() {
    let (flaky, f) = three_with_grace().await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let e1 = ads.recv().await;
    assert_eq!(ports(&e1), vec![7001, 7002, 7003]);
    ads.ack(&e1, &[SERVICE]).await;

    // Down long enough for the probe (every second) to notice; the watch stays open.
    flaky.set_down_quietly(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    flaky.set_down_quietly(false);
    // Back without b and c: the watch reports them removed; both are held.
    flaky.deregister(SERVICE, "b").await.expect("deregister");
    flaky.deregister(SERVICE, "c").await.expect("deregister");
    let back = Instant::now();
    ads.quiet().await;
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    ads.quiet().await;

    // c is removed when the grace ends.
    let e2 = ads.recv().await;
    assert!(
        back.elapsed() >= GRACE - Duration::from_millis(300),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(ports(&e2), vec![7001, 7002]);
    ads.ack(&e2, &[SERVICE]).await;

    // After it, a removal goes out at once.
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    let e3 = ads.recv().await;
    assert_eq!(ports(&e3), vec![7002]);
}
