use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn every_delay_lies_between_the_floor_and_its_ceiling() {
    for seed in 0..200 {
        let mut backoff = Backoff::new(ms(100), ms(2000)).seeded(seed);
        for n in 1..40u32 {
            let d = backoff.next_delay();
            assert_eq!(backoff.failures(), n);
            assert!(
                d >= ms(100) && d <= backoff.ceiling(n),
                "seed {seed}, delay {n}: {d:?} outside [100ms, {:?}]",
                backoff.ceiling(n)
            );
            assert!(d <= ms(2000), "{d:?} above the cap");
        }
    }
}

#[test]
fn ceilings_grow_by_the_multiplier_up_to_the_cap() {
    let p = RetryPolicy::default();
    let b = p.backoff();
    let ceilings: Vec<Duration> = (1..=6).map(|n| b.ceiling(n)).collect();
    let secs = Duration::from_secs;
    assert_eq!(
        ceilings,
        vec![secs(2), secs(4), secs(8), secs(10), secs(10), secs(10)]
    );
    assert_eq!(b.ceiling(u32::MAX), secs(10));
    // A multiplier of 1 still leaves a range: [initial, 2 x initial].
    let flat = Backoff::new(ms(100), ms(1000)).multiplier(1.0);
    assert_eq!(flat.ceiling(1), ms(200));
    assert_eq!(flat.ceiling(30), ms(200));
    let slow = Backoff::new(ms(100), ms(1000)).multiplier(1.5);
    assert_eq!(slow.ceiling(1), ms(200));
    assert_eq!(slow.ceiling(2), ms(225));
}

/// The n-th delay, averaged over many seeds: the unjittered doubling curve's delay plus half the
/// initial interval (the middle of [initial, initial x 2^n]), until the cap.
#[test]
fn delays_grow_until_the_cap() {
    let seeds = 4000u64;
    let mean = |n: usize| {
        let total: f64 = (0..seeds)
            .map(|seed| {
                let backoff = RetryPolicy::default().backoff().seeded(seed);
                backoff.take(n).last().map_or(0.0, |d| d.as_secs_f64())
            })
            .sum();
        total / seeds as f64
    };
    for (n, expected) in [(1, 1.5), (2, 2.5), (3, 4.5), (4, 5.5), (30, 5.5)] {
        let got = mean(n);
        assert!(
            (got - expected).abs() < expected * 0.05,
            "delay {n}: mean {got:.3} s, expected {expected} s"
        );
    }
}

/// `RetryPolicy::delay` draws on the same curve, for loops that count failures themselves.
#[test]
fn the_policy_draws_on_the_same_curve() {
    let p = RetryPolicy {
        initial_interval: ms(100),
        max_interval: ms(700),
        ..RetryPolicy::default()
    };
    for n in 1..10 {
        for _ in 0..100 {
            let d = p.delay(n);
            assert!(d >= ms(100) && d <= p.backoff().ceiling(n), "{n}: {d:?}");
        }
    }
}

/// The first delay of many clients covers its whole range, evenly: no tenth of [100 ms, 200 ms]
/// holds more than twice its share.
#[test]
fn the_jitter_spreads_over_its_whole_range() {
    let mut tenths = [0u32; 10];
    let n = 10_000u32;
    for seed in 0..u64::from(n) {
        let d = Backoff::new(ms(100), ms(2000)).seeded(seed).next_delay();
        let tenth = ((d - ms(100)).as_secs_f64() / 0.010).floor() as usize;
        tenths[tenth.min(9)] += 1;
    }
    let share = n / 10;
    assert!(
        tenths.iter().all(|&c| c > share / 2 && c < share * 2),
        "{tenths:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_delays() {
    let draw = |seed| -> Vec<Duration> {
        Backoff::new(ms(50), ms(5000))
            .seeded(seed)
            .take(20)
            .collect()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn reset_starts_over() {
    let mut backoff = Backoff::new(ms(100), ms(60_000)).seeded(1);
    for _ in 0..20 {
        backoff.next_delay();
    }
    backoff.reset();
    assert_eq!(backoff.failures(), 0);
    let d = backoff.next_delay();
    assert!(d >= ms(100) && d <= ms(200), "{d:?}");
}

#[test]
fn absurd_settings_neither_panic_nor_leave_the_bounds() {
    let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX).multiplier(1e300);
    for _ in 0..10 {
        assert!(huge.next_delay() >= Duration::from_secs(1));
    }
    let mut nan = Backoff::new(ms(10), ms(20)).multiplier(f64::NAN);
    assert!(nan.next_delay() <= ms(20));
    // A cap below the floor: the floor wins, every time, without jitter.
    let mut fixed = Backoff::new(ms(300), ms(100));
    assert_eq!(fixed.next_delay(), ms(300));
    assert_eq!(fixed.ceiling(3), ms(300));
}

/// Many clients that fail at the same instant retry at instants spread over the window, on the
/// runtime's clock: 500 loops that each fail three times, recorded under paused time.
#[tokio::test(start_paused = true)]
async fn clients_failing_together_retry_apart() {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for seed in 0..500 {
        tasks.push(tokio::spawn(async move {
            let mut backoff = Backoff::new(ms(200), ms(5000)).seeded(seed);
            let mut at = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(backoff.next_delay()).await;
                at.push(start.elapsed());
            }
            at
        }));
    }
    let mut first = Vec::new();
    let mut all = Vec::new();
    for t in tasks {
        let at = t.await.expect("task");
        first.push(at[0]);
        all.extend(at);
    }
    // The first retries: within [200 ms, 400 ms], no 20 ms bucket above twice its share (50).
    assert!(first.iter().all(|d| *d >= ms(200) && *d <= ms(400) + MS));
    let busiest = busiest_window(&first, ms(20));
    assert!(
        busiest <= 100,
        "{busiest} of 500 first retries within 20 ms"
    );
    // Every retry of the three rounds: none of 50 ms holds a fifth of them.
    let busiest = busiest_window(&all, ms(50));
    assert!(busiest < 300, "{busiest} of 1,500 retries within 50 ms");
}

/// The most instants within any window of `width`.
fn busiest_window(instants: &[Duration], width: Duration) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= width {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    most
}

#[tokio::test(start_paused = true)]
async fn retries_transient_errors_up_to_max_attempts() {
    let calls = Arc::new(AtomicU32::new(0));
    let at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let res: Result<()> = RetryPolicy::default()
        .run(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            at.lock().expect("lock").push(started.elapsed());
            async {
                Err(Error::Unavailable {
                    backend: "x".into(),
                    message: "down".into(),
                })
            }
        })
        .await;
    assert!(res.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Two waits: the first in [1 s, 2 s], the second in [1 s, 4 s].
    let at = at.lock().expect("lock").clone();
    let secs = Duration::from_secs;
    let first = at[1] - at[0];
    let second = at[2] - at[1];
    assert!(first >= secs(1) && first <= secs(2), "{first:?}");
    assert!(second >= secs(1) && second <= secs(4), "{second:?}");
    assert_eq!(started.elapsed(), at[2], "no wait after the last attempt");
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_bad_input() {
    let calls = AtomicU32::new(0);
    let res: Result<()> = RetryPolicy::default()
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::invalid("service name", "a/b", "no"))
        })
        .await;
    assert!(res.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
