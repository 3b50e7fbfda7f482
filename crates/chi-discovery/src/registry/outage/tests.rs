use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::instance::Instance;
use crate::registry::Change;

fn inst(id: &str) -> Instance {
    Instance::new("svc", "127.0.0.1", 80).with_id(id)
}

fn ids(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

const GRACE: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn a_recovery_runs_from_the_first_answer_after_a_failure() {
    let mut r = Recovery::Trusted;
    assert!(r.is_trusted(GRACE, Instant::now()));
    r.answered(Instant::now());
    assert_eq!(r, Recovery::Trusted, "an answer is no recovery by itself");
    r.failed();
    assert!(!r.is_trusted(Duration::ZERO, Instant::now()));
    assert_eq!(r.ends(GRACE), None, "no end while down");
    tokio::time::advance(Duration::from_secs(5)).await;
    let back = Instant::now();
    r.answered(back);
    r.answered(back + Duration::from_secs(1));
    assert_eq!(r.ends(GRACE), Some(back + GRACE), "from the first answer");
    assert!(!r.is_trusted(GRACE, back + GRACE - Duration::from_millis(1)));
    assert!(r.is_trusted(GRACE, back + GRACE));
    // A grace too long to add to an instant never ends, and nothing panics.
    assert!(r.ends(Duration::MAX).is_some_and(|end| end > back + GRACE));
}

/// Instances a, b, c served, then the registry fails.
fn three_then_failed() -> Grace {
    let mut g = Grace::new(GRACE);
    g.apply(
        Change::Reset(vec![inst("a"), inst("b"), inst("c")]),
        Instant::now(),
    );
    g.failed();
    g
}

#[tokio::test(start_paused = true)]
async fn outside_a_recovery_changes_pass_as_they_are() {
    let mut g = Grace::new(GRACE);
    let reset = Change::Reset(vec![inst("a"), inst("b")]);
    assert_eq!(g.apply(reset.clone(), Instant::now()), vec![reset]);
    let remove = Change::Remove(inst("b"));
    assert_eq!(g.apply(remove.clone(), Instant::now()), vec![remove]);
    assert_eq!(ids(&g.list()), vec!["a"]);
    assert_eq!(g.deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_resync_after_a_failure_holds_what_is_missing_until_the_grace_ends() {
    let mut g = three_then_failed();
    tokio::time::advance(Duration::from_secs(3)).await;
    let back = Instant::now();
    // The registry comes back with a and a new d: d goes out at once, b and c stay.
    let out = g.apply(Change::Reset(vec![inst("a"), inst("d")]), back);
    assert_eq!(
        out,
        vec![Change::Reset(vec![
            inst("a"),
            inst("b"),
            inst("c"),
            inst("d")
        ])]
    );
    assert_eq!(g.held(), 2);
    assert_eq!(g.deadline(), Some(back + GRACE));
    // b's owner registers it again: nothing changes for the served list.
    assert_eq!(g.apply(Change::Add(inst("b")), back), vec![]);
    assert_eq!(g.held(), 1);
    // An instance that was not served before the failure leaves at once.
    assert_eq!(
        g.apply(Change::Remove(inst("d")), back),
        vec![Change::Remove(inst("d"))]
    );
    // Not over a millisecond early; c leaves when it is.
    assert_eq!(g.expire(back + GRACE - Duration::from_millis(1)), vec![]);
    assert_eq!(g.expire(back + GRACE), vec![Change::Remove(inst("c"))]);
    assert_eq!(ids(&g.list()), vec!["a", "b"]);
    assert_eq!(g.deadline(), None);
    // After the grace, a removal goes out at once.
    assert_eq!(
        g.apply(Change::Remove(inst("a")), back + GRACE),
        vec![Change::Remove(inst("a"))]
    );
}

#[tokio::test(start_paused = true)]
async fn removals_the_watch_reports_after_a_failure_wait_too() {
    // A failure the watch itself did not see (a failed probe): its diff removes b.
    let mut g = three_then_failed();
    let now = Instant::now();
    assert_eq!(g.apply(Change::Remove(inst("b")), now), vec![]);
    assert_eq!(ids(&g.list()), vec!["a", "b", "c"]);
    assert_eq!(g.expire(now + GRACE), vec![Change::Remove(inst("b"))]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_during_the_grace_starts_it_over() {
    let mut g = three_then_failed();
    let back = Instant::now();
    g.apply(Change::Reset(vec![inst("a")]), back);
    tokio::time::advance(Duration::from_secs(20)).await;
    g.failed();
    assert_eq!(g.deadline(), None, "down again: no end until it answers");
    let again = Instant::now();
    assert_eq!(g.apply(Change::Reset(vec![inst("a")]), again).len(), 1);
    assert_eq!(g.deadline(), Some(again + GRACE));
    assert_eq!(
        g.expire(back + GRACE),
        vec![],
        "the first grace's end is past"
    );
    assert_eq!(ids(&g.list()), vec!["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_never_holds() {
    let mut g = Grace::new(Duration::ZERO);
    g.apply(Change::Reset(vec![inst("a"), inst("b")]), Instant::now());
    g.failed();
    let reset = Change::Reset(vec![inst("a")]);
    assert_eq!(g.apply(reset.clone(), Instant::now()), vec![reset]);
    assert_eq!(g.held(), 0);
    assert_eq!(g.deadline(), None);
}

#[test]
fn the_policy_is_off_by_default() {
    assert!(!OutagePolicy::default().is_on());
    assert!(OutagePolicy::with_restart_grace(GRACE).is_on());
}

#[cfg(any(feature = "consul", feature = "nacos"))]
mod empty {
    use super::*;
    use crate::error::Error;

    fn one() -> Vec<Instance> {
        vec![inst("a")]
    }

    #[test]
    fn an_empty_answer_after_a_failure_is_believed_only_after_the_grace() {
        let guard = EmptyGuard::new(true);
        assert!(guard.believe("svc", &one(), Duration::from_secs(60)));
        guard.note::<()>(&Err(Error::Timeout {
            backend: "x".into(),
            after: Duration::from_secs(1),
        }));
        guard.note(&Ok(()));
        assert!(!guard.believe("svc", &[], Duration::from_secs(60)));
        assert!(guard.believe("svc", &[], Duration::ZERO));
        // Once believed empty, the service had no instances: later empties are believed.
        assert!(guard.believe("svc", &[], Duration::from_secs(60)));
        // A service never seen with instances is believed empty at once.
        assert!(guard.believe("other", &[], Duration::from_secs(60)));
    }

    #[test]
    fn trusted_at_start_or_not() {
        let consul = EmptyGuard::new(true);
        assert!(consul.believe("svc", &one(), Duration::from_secs(60)));
        assert!(consul.believe("svc", &[], Duration::from_secs(60)));
        let nacos = EmptyGuard::new(false);
        assert!(nacos.believe("svc", &one(), Duration::from_secs(60)));
        assert!(!nacos.believe("svc", &[], Duration::from_secs(60)));
    }
}
