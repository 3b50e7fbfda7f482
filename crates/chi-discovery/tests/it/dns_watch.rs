//! The DNS adapter's watch and outage families: bind9 with records changed live by `nsupdate`
//! (Added / Removed / Updated within the TTL bound, a long TTL held to `max_refresh`, NXDOMAIN
//! and NODATA honoured), and servers that die, stop answering or answer SERVFAIL (the list is
//! kept, the error is reported, a restart resyncs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::WatchStream;
use chi_discovery::{Change, DiscoveryClient, Error, Instance, Registry, RetryPolicy};
use chi_test_support::dns::{Bind, Dnsmasq, Record};
use futures_util::StreamExt;

use super::dns::{dns_with, fleet, shape};

const SRV: &str = "_{service}._tcp.svc.test";

fn web(target: &str, port: u16, weight: u16) -> Record {
    Record::srv("_web._tcp.svc.test", target, port, 0, weight)
}

/// The next item within `within`; a stream that ends or stays silent fails the test.
async fn next(w: &mut WatchStream, within: Duration) -> chi_discovery::Result<Change> {
    tokio::time::timeout(within, w.next())
        .await
        .unwrap_or_else(|_| panic!("no watch item within {within:?}"))
        .expect("the watch stream ended")
}

/// The next item that is not an error (errors are counted).
async fn next_change(w: &mut WatchStream, within: Duration) -> (Change, usize) {
    let deadline = Instant::now() + within;
    let mut errors = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(w, left).await {
            Ok(c) => return (c, errors),
            Err(_) => errors += 1,
        }
    }
}

fn ids_of(list: &[Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

/// nsupdate → Added / Updated / Removed, each within the records' TTL (1 s) plus a query.
#[tokio::test]
async fn watch_sees_nsupdate_changes_within_the_ttl() {
    let _heavy = chi_test_support::heavy().await;
    let a = [
        web("a.svc.test", 8081, 10),
        Record::addr("a.svc.test", "127.0.0.11"),
    ];
    let zone = Bind::start("svc.test", &a);
    let dns = dns_with(&zone.addr(), SRV, |c| {
        c.min_refresh = Duration::from_millis(100);
        c.max_refresh = Duration::from_secs(5);
    });
    let mut w = dns.watch("web").await.expect("watch");
    match next(&mut w, Duration::from_secs(5)).await.expect("reset") {
        Change::Reset(list) => assert_eq!(ids_of(&list), ["web-127.0.0.11-8081"]),
        other => panic!("expected a Reset first, got {other:?}"),
    }

    // Added: five targets one after the other, each timed from nsupdate to the event.
    let bound = Duration::from_millis(1000 + 1000); // the TTL, plus a query on a loaded machine
    let mut delays = Vec::new();
    for n in 0..5u16 {
        let target = format!("n{n}.svc.test");
        let started = Instant::now();
        zone.add(&[
            web(&target, 9000 + n, 3),
            Record::addr(&target, &format!("127.0.2.{}", n + 1)),
        ]);
        match next(&mut w, bound).await.expect("added") {
            Change::Add(i) => {
                assert_eq!((i.port, i.weight), (9000 + n, 3));
            }
            other => panic!("expected Add, got {other:?}"),
        }
        delays.push(started.elapsed());
    }
    delays.sort();
    eprintln!(
        "dns: nsupdate -> Added, TTL 1 s, 5 changes: min {:?}, median {:?}, max {:?}",
        delays[0], delays[2], delays[4]
    );
    assert!(delays[4] < bound);

    // Updated: a weight changes in one transaction.
    zone.replace(
        &[web("n0.svc.test", 9000, 3)],
        &[web("n0.svc.test", 9000, 7)],
    );
    match next(&mut w, bound).await.expect("updated") {
        Change::Update(i) => assert_eq!((i.port, i.weight), (9000, 7)),
        other => panic!("expected Update, got {other:?}"),
    }

    // Removed.
    zone.delete(&[web("a.svc.test", 8081, 10)]);
    match next(&mut w, bound).await.expect("removed") {
        Change::Remove(i) => assert_eq!(i.id, "web-127.0.0.11-8081"),
        other => panic!("expected Remove, got {other:?}"),
    }

    // NODATA: the name keeps another record but no SRV. NXDOMAIN: the name is gone. Both are
    // "no instances", and no error.
    zone.add(&[Record::txt("_web._tcp.svc.test", "no SRV here")]);
    let all: Vec<Record> = (0..5u16)
        .map(|n| {
            web(
                &format!("n{n}.svc.test"),
                9000 + n,
                if n == 0 { 7 } else { 3 },
            )
        })
        .collect();
    zone.delete(&all);
    let mut removed = 0;
    while removed < 5 {
        match next(&mut w, bound).await.expect("no error on NODATA") {
            Change::Remove(_) => removed += 1,
            other => panic!("expected Remove, got {other:?}"),
        }
    }
    assert!(dns.instances("web").await.expect("nodata").is_empty());
    zone.delete(&[Record::txt("_web._tcp.svc.test", "no SRV here")]);
    assert!(dns.instances("web").await.expect("nxdomain").is_empty());
    zone.add(&[web("a.svc.test", 8081, 10)]);
    match next(&mut w, bound).await.expect("back from NXDOMAIN") {
        Change::Add(i) => assert_eq!(i.id, "web-127.0.0.11-8081"),
        other => panic!("expected Add, got {other:?}"),
    }
}

/// A TTL of an hour is held to `max_refresh`: a removal is seen within it, not an hour later
/// (no cache between chi and the server).
#[tokio::test]
async fn max_refresh_bounds_a_long_ttl() {
    let zone = Bind::start(
        "svc.test",
        &[
            web("a.svc.test", 8081, 1),
            Record::addr("a.svc.test", "127.0.0.11"),
            Record::addr("b.svc.test", "127.0.0.12"),
        ],
    );
    let max = Duration::from_millis(1500);
    let dns = dns_with(&zone.addr(), SRV, |c| {
        c.min_refresh = Duration::from_millis(100);
        c.max_refresh = max;
    });
    let mut w = dns.watch("web").await.expect("watch");
    assert!(matches!(next(&mut w, max).await, Ok(Change::Reset(_))));
    zone.add_with_ttl(3600, &[web("b.svc.test", 8082, 1)]);
    assert!(matches!(
        next(&mut w, max * 2).await,
        Ok(Change::Add(i)) if i.port == 8082
    ));
    let started = Instant::now();
    zone.delete(&[web("a.svc.test", 8081, 1)]);
    assert_eq!(
        ids_of(&dns.instances("web").await.expect("asked at once")),
        ["web-127.0.0.12-8082"],
        "a direct query sees the change at once"
    );
    match next(&mut w, max + Duration::from_secs(1)).await {
        Ok(Change::Remove(i)) => assert_eq!(i.port, 8081),
        other => panic!("expected Remove, got {other:?}"),
    }
    eprintln!(
        "dns: TTL 3600 s, max_refresh {max:?}: removal seen after {:?}",
        started.elapsed()
    );
}

/// Kill -9: queries fail, the discovery client serves its list stale, the watch reports the
/// error and keeps its list; a restart resyncs with a Reset.
#[tokio::test]
async fn a_killed_server_keeps_the_list_and_a_restart_resyncs() {
    let mut server = Dnsmasq::start(&fleet());
    let dns = Arc::new(dns_with(&server.addr(), SRV, |c| {
        c.min_refresh = Duration::from_millis(100);
        c.max_refresh = Duration::from_secs(1);
    }));
    let client = DiscoveryClient::builder()
        .retry(RetryPolicy::none())
        .build(dns.clone());
    let before = client.discover("web").await.expect("discover");
    assert_eq!(before.len(), 3);
    let mut w = dns.watch("web").await.expect("watch");
    let Ok(Change::Reset(first)) = next(&mut w, Duration::from_secs(5)).await else {
        panic!("expected a Reset first");
    };

    server.kill();
    let killed = Instant::now();
    let err = dns.instances("web").await.expect_err("no server");
    let failed_after = killed.elapsed();
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.is_transient(),
        "{err}"
    );
    let snap = client.refresh("web").await.expect("the last list, stale");
    assert!(snap.is_stale());
    assert_eq!(snap.len(), 3);
    // Only errors while it is down: never a Remove.
    let down_until = Instant::now() + Duration::from_secs(2);
    let mut errors = 0;
    let mut first_error = None;
    while Instant::now() < down_until {
        match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
            Ok(Some(Err(_))) => {
                errors += 1;
                first_error.get_or_insert_with(|| killed.elapsed());
            }
            Ok(Some(Ok(change))) => panic!("a change while the server is down: {change:?}"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => {}
        }
    }
    assert!(errors >= 1, "the outage is reported in the stream");

    server.restart_with(&fleet());
    let restarted = Instant::now();
    let (change, _) = next_change(&mut w, Duration::from_secs(5)).await;
    match change {
        Change::Reset(list) => assert_eq!(shape(&list), shape(&first)),
        other => panic!("expected a Reset after the outage, got {other:?}"),
    }
    let resync = restarted.elapsed();
    let snap = client.refresh("web").await.expect("live again");
    assert!(!snap.is_stale());
    eprintln!(
        "[reliability] dns killed (dnsmasq, SIGKILL; timeout 500 ms, 3 tries): a query fails \
         after {failed_after:?}; 3 instances kept, stale; watch errors from {:?} after the kill, \
         {errors} in 2 s, 0 removals; Reset {resync:?} after the restart",
        first_error.unwrap_or_default()
    );
}

/// A server that does not answer (SIGSTOP: queries time out) and one that answers SERVFAIL (a
/// zone it cannot load): the list is kept, the error says which, and the server's return resyncs.
#[tokio::test]
async fn timeouts_and_servfail_keep_the_list() {
    let records = [
        web("a.svc.test", 8081, 1),
        Record::addr("a.svc.test", "127.0.0.11"),
    ];
    let mut zone = Bind::start("svc.test", &records);
    let dns = dns_with(&zone.addr(), SRV, |c| {
        c.timeout = Duration::from_millis(300);
        c.min_refresh = Duration::from_millis(100);
        c.max_refresh = Duration::from_secs(1);
    });
    let mut w = dns.watch("web").await.expect("watch");
    assert!(matches!(
        next(&mut w, Duration::from_secs(5)).await,
        Ok(Change::Reset(_))
    ));

    zone.pause();
    let paused = Instant::now();
    let err = next(&mut w, Duration::from_secs(10))
        .await
        .expect_err("a timeout");
    let timed_out = paused.elapsed();
    let text = err.to_string();
    assert!(
        text.contains("no answer to SRV _web._tcp.svc.test"),
        "{text}"
    );
    zone.resume();
    let (change, _) = next_change(&mut w, Duration::from_secs(10)).await;
    assert!(
        matches!(&change, Change::Reset(l) if l.len() == 1),
        "{change:?}"
    );

    zone.break_zone();
    let broken = Instant::now();
    let err = match next(&mut w, Duration::from_secs(10)).await {
        Err(e) => e,
        Ok(change) => panic!("a change from a zone that failed to load: {change:?}"),
    };
    assert!(err.to_string().contains("SERVFAIL"), "{err}");
    let servfail = broken.elapsed();
    assert!(
        dns.instances("web")
            .await
            .expect_err("servfail")
            .is_transient()
    );

    zone.restart_with(&records);
    let (change, errors) = next_change(&mut w, Duration::from_secs(10)).await;
    assert!(
        matches!(&change, Change::Reset(l) if l.len() == 1),
        "{change:?} after {errors} errors"
    );
    eprintln!(
        "[reliability] dns not answering (named, SIGSTOP; timeout 300 ms, 3 tries): watch error \
         after {timed_out:?}, list kept; SERVFAIL (zone not loaded): error {servfail:?} after \
         the restart began, list kept; a Reset once the zone is back"
    );
}
