//! The console's sources in this process: the collector over real in-process registries (the
//! embedded one, and a wrapper that fails on demand for an outage), and the live frames, on a
//! paused clock.

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::registry::{Memory, MultiRegistry};
use chi_discovery::{HealthStatus, Instance, Registry};
use chi_test_support::fault::Faulty;

use super::collect::Collector;
use super::feed::{Feed, Verdict, Verdicts};
use super::live::Live;
use super::model::{Process, RegistryState, Writes};

/// Polls `check` on the paused clock for up to a minute of its time.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inst(service: &str, id: &str) -> Instance {
    Instance::new(service, "127.0.0.1", 8080).with_id(id)
}

#[tokio::test(start_paused = true)]
async fn each_instance_carries_the_registries_that_list_it_and_an_outage_keeps_the_list() {
    let first = Arc::new(Memory::new());
    let second = Faulty::new(Memory::new());
    first.register(&inst("web", "a")).await.expect("register");
    second.register(&inst("web", "a")).await.expect("register");
    second.register(&inst("web", "b")).await.expect("register");
    let members: Vec<Arc<dyn Registry>> = vec![first.clone(), Arc::new(second.clone())];
    let multi: Arc<dyn Registry> = Arc::new(MultiRegistry::new(members));
    let c = Collector::start(&multi);
    until("both instances", || {
        c.is_ready() && c.services().get("web").is_some_and(|m| m.len() == 2)
    })
    .await;
    let web = c.services().remove("web").expect("web");
    assert_eq!(web["a"].1, ["memory", "memory"], "a is in both");
    assert_eq!(web["b"].1, ["memory"], "b only in the second");
    let rows = c.registries(|_| false);
    assert!(
        rows.iter().all(|r| r.state == RegistryState::Connected),
        "{rows:?}"
    );

    second.set_outage(true);
    until("the second registry down", || {
        c.registries(|_| false)[1].state == RegistryState::Down
    })
    .await;
    let rows = c.registries(|_| false);
    assert_eq!(rows[0].state, RegistryState::Connected);
    // The listing's error or the watch's, whichever came last.
    let error = rows[1].last_error.as_ref().expect("the outage's error");
    assert!(error.message.contains("simulated outage"), "{error:?}");
    assert!(
        rows[1].since <= error.at,
        "down since the first failed listing"
    );
    assert_eq!(
        c.services()["web"].len(),
        2,
        "an outage never empties the list"
    );

    // A change made during the outage shows once it heals.
    first.register(&inst("web", "c")).await.expect("register");
    second.set_outage(false);
    until("the second registry back", || {
        c.registries(|_| false)[1].state == RegistryState::Connected
    })
    .await;
    until("c", || c.services()["web"].contains_key("c")).await;
    assert!(
        c.registries(|b| b == "memory")[0].state == RegistryState::Degraded,
        "a failing registration there degrades it"
    );
}

/// A feed that judges one instance itself.
struct Judge;

impl Feed for Judge {
    fn verdicts(&self) -> Verdicts {
        let verdict = Verdict {
            health: HealthStatus::Unhealthy,
            why: Some("probe here: connect failed".to_owned()),
        };
        [(("web".to_owned(), "a".to_owned()), verdict)].into()
    }
}

#[tokio::test(start_paused = true)]
async fn frames_follow_instances_as_they_come_and_go() {
    let memory = Arc::new(Memory::new());
    memory
        .register(&inst("web", "a").with_meta("zone", "z1"))
        .await
        .expect("register");
    let process = Process {
        command: "agent",
        version: "0",
        writes: Writes {
            allowed: false,
            why: String::new(),
        },
    };
    let live = Live::new(memory.clone(), Arc::new(Judge), process);
    let mut frames = live.subscribe();
    let first = live.current().await.expect("a first frame");
    let row = &first.status.services[0].instances[0];
    assert_eq!(
        (row.health, row.why.as_deref()),
        ("unhealthy", Some("probe here: connect failed"))
    );
    assert_eq!(row.zone.as_deref(), Some("z1"));
    assert!(
        first.event.contains("data-instance=\\\"web/a\\\""),
        "{}",
        first.event
    );

    memory.register(&inst("web", "b")).await.expect("register");
    let frame = frames
        .wait_for(|f| f.as_ref().is_some_and(|f| f.json.contains("\"id\":\"b\"")))
        .await
        .expect("a frame with b")
        .clone()
        .expect("a frame");
    let b = &frame.status.services[0].instances[1];
    assert_eq!(b.health, "unknown");
    assert_eq!(b.why.as_deref(), Some("no check has reported yet"));

    memory.deregister("web", "a").await.expect("deregister");
    frames
        .wait_for(|f| f.as_ref().is_some_and(|f| !f.json.contains("\"id\":\"a\"")))
        .await
        .expect("a frame without a");
}
