//! The restart grace: a registry that comes back with part of its instances (a restarted Consul
//! dev agent, rnacos) and gets the rest registered again one by one. Each scenario runs on both
//! variants: the grace is the server's, whatever the stream speaks.
//!
//! The clock is paused (see the [module docs](super)): the grace ends when the server's own timer
//! says so, and the tests check it ends exactly then, not "some time after".

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::Registry;
use tokio::time::Instant;

use super::server::RECONNECT_MAX;
use super::*;
use crate::xds::resources::Kind;

/// Longer than the quiet spells a scenario holds within it.
const GRACE: Duration = Duration::from_secs(30);

both_variants!(
    a_resync_after_an_outage_removes_nothing_while_the_instances_come_back,
    an_instance_that_does_not_come_back_is_removed_when_the_grace_ends,
    removals_after_an_outage_the_watch_did_not_see_wait_for_the_grace,
);

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

/// Asserts that what `since` started ended when the grace did: not before, and not later than
/// the reconnect that brings the registry's answer back.
fn assert_grace_ended(since: Instant) {
    let after = since.elapsed();
    assert!(
        (GRACE..=GRACE + RECONNECT_MAX).contains(&after),
        "removed {after:?} after the registry answered again; the grace is {GRACE:?}"
    );
}

async fn a_resync_after_an_outage_removes_nothing_while_the_instances_come_back<V: Variant>() {
    let (flaky, f) = three_with_grace().await;
    let mut ads = f.open::<V>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let e1 = ads.take().await;
    assert_eq!(ports(&e1), vec![7001, 7002, 7003]);

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
    let e2 = ads.take().await;
    assert_eq!(ports(&e2), vec![7001, 7002, 7003, 7004]);
    assert!(e2.removed().is_empty(), "{e2:?}");

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
    let removed = Instant::now();
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    let e3 = ads.recv().await;
    assert_eq!(ports(&e3), vec![7002, 7003, 7004]);
    assert_eq!(removed.elapsed(), Duration::ZERO, "at once");
}

async fn an_instance_that_does_not_come_back_is_removed_when_the_grace_ends<V: Variant>() {
    let (flaky, f) = three_with_grace().await;
    let mut ads = f.open::<V>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let r1 = ads.take().await;
    assert_eq!(ports(&r1), vec![7001, 7002, 7003]);

    flaky.set_down(true);
    ads.quiet().await;
    flaky.deregister(SERVICE, "b").await.expect("deregister");
    flaky.deregister(SERVICE, "c").await.expect("deregister");
    flaky.set_down(false);
    let back = Instant::now();
    // The resync with only a: nothing sent; b comes back: nothing sent.
    ads.quiet().await;
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    ads.quiet().await;

    // c never does: removed once the grace is over, not before.
    let r2 = ads.take().await;
    assert_grace_ended(back);
    assert_eq!(r2.kind(), Kind::Endpoints);
    assert_eq!(ports(&r2), vec![7001, 7002]);
    assert!(r2.removed().is_empty(), "{r2:?}");
}

async fn removals_after_an_outage_the_watch_did_not_see_wait_for_the_grace<V: Variant>() {
    let (flaky, f) = three_with_grace().await;
    let mut ads = f.open::<V>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let e1 = ads.take().await;
    assert_eq!(ports(&e1), vec![7001, 7002, 7003]);

    // Down until the probe (every second) has asked and been refused: the watch stays open, and
    // nothing else asks the registry here. Then the server takes the failure in.
    let mut refusals = flaky.refusals();
    flaky.set_down_quietly(true);
    tokio::time::timeout(PATIENCE, refusals.changed())
        .await
        .expect("the probe asks the registry while it is down")
        .expect("the registry lives");
    settle().await;
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
    let e2 = ads.take().await;
    assert_grace_ended(back);
    assert_eq!(ports(&e2), vec![7001, 7002]);

    // After it, a removal goes out at once.
    let removed = Instant::now();
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    let e3 = ads.recv().await;
    assert_eq!(ports(&e3), vec![7002]);
    assert_eq!(removed.elapsed(), Duration::ZERO, "at once");
}
