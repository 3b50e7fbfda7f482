//! Picks per instance over the last minute, counted on the pick path without a lock.
//!
//! Each instance has a [`Window`]: a ring of one-second slots, each an `AtomicU64` holding the
//! second it counts (high 32 bits) and its count (low 32 bits). A pick reads the coarse clock
//! (one relaxed load of a second counter a timer task advances) and adds one to its slot; a
//! slot that still holds an older second is taken over with one compare-and-swap. Reading sums
//! the slots of the last [`WINDOW`] seconds. No allocation, no lock, no clock call per pick.
//!
//! A process hands each instance's [`Counter`] to its pick path once (`chi proxy` keeps it with
//! the instance's other per-instance handles); a library stack can feed the same counters from
//! its pick hook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::sync;

/// Seconds the console counts picks over.
pub(crate) const WINDOW: u64 = 60;
/// Slots in a ring: more than [`WINDOW`], so the slot being filled is never one being read.
const SLOTS: usize = 64;
/// How often the coarse clock is advanced.
const TICK: Duration = Duration::from_millis(250);

/// One instance's picks, second by second; see the module docs.
#[derive(Debug)]
pub(crate) struct Window {
    slots: [AtomicU64; SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Window {
    /// Counts one pick in second `now`.
    #[inline]
    pub(crate) fn record_at(&self, now: u32) {
        let slot = &self.slots[now as usize % SLOTS];
        let stamp = u64::from(now) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            if current & !u64::from(u32::MAX) == stamp {
                slot.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The slot still counts a second a lap ago: start it over for `now`.
            match slot.compare_exchange_weak(
                current,
                stamp | 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Picks in the [`WINDOW`] seconds up to and including `now`.
    pub(crate) fn sum_at(&self, now: u32) -> u64 {
        let oldest = u64::from(now).saturating_sub(WINDOW - 1);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| (oldest..=u64::from(now)).contains(&(v >> 32)))
            .map(|v| v & u64::from(u32::MAX))
            .sum()
    }
}

/// Seconds since the clock started, advanced by a timer task while someone holds the clock.
#[derive(Debug)]
struct Clock {
    secs: AtomicU64,
}

impl Clock {
    #[inline]
    fn now(&self) -> u32 {
        u32::try_from(self.secs.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }
}

/// One instance's counter, as the pick path holds it.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    window: Arc<Window>,
    clock: Arc<Clock>,
}

impl Counter {
    /// Counts one pick.
    #[inline]
    pub(crate) fn record(&self) {
        self.window.record_at(self.clock.now());
    }
}

/// The windows of every instance of every service a process picks from.
#[derive(Debug)]
pub(crate) struct Picks {
    clock: Arc<Clock>,
    windows: Mutex<HashMap<(String, String), Arc<Window>>>,
}

impl Picks {
    /// Empty windows, and the task advancing their clock (it ends with the last counter).
    /// Must be called inside a tokio runtime.
    pub(crate) fn start() -> Arc<Picks> {
        let clock = Arc::new(Clock {
            secs: AtomicU64::new(0),
        });
        tokio::spawn(tick(Arc::downgrade(&clock)));
        Arc::new(Picks {
            clock,
            windows: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Window>>> {
        sync::lock(&self.windows)
    }

    /// The counter of `service`'s instance `id` (the same window for every caller).
    pub(crate) fn counter(&self, service: &str, id: &str) -> Counter {
        let window = self
            .lock()
            .entry((service.to_owned(), id.to_owned()))
            .or_default()
            .clone();
        Counter {
            window,
            clock: self.clock.clone(),
        }
    }

    /// `service`'s picks per instance over the last [`WINDOW`] seconds, by id: the instances in
    /// `present` and any other that was picked in the window. Windows of instances that are
    /// gone and idle are dropped.
    pub(crate) fn shares(&self, service: &str, present: &[&str]) -> Vec<(String, u64)> {
        let now = self.clock.now();
        let mut map = self.lock();
        let mut out = Vec::new();
        map.retain(|(s, id), window| {
            if s != service {
                return true;
            }
            let n = window.sum_at(now);
            let here = present.contains(&id.as_str());
            if here || n > 0 {
                out.push((id.clone(), n));
            }
            here || n > 0 || Arc::strong_count(window) > 1
        });
        for id in present {
            if !out.iter().any(|(i, _)| i == id) {
                out.push(((*id).to_owned(), 0));
            }
        }
        out.sort();
        out
    }
}

/// Advances `clock` every [`TICK`] from the instant it started, until it is dropped.
async fn tick(clock: Weak<Clock>) {
    let start = Instant::now();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let Some(clock) = clock.upgrade() else { return };
        clock
            .secs
            .store(start.elapsed().as_secs(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_minute_only() {
        let w = Window::default();
        for _ in 0..3 {
            w.record_at(10);
        }
        w.record_at(11);
        assert_eq!(w.sum_at(11), 4);
        assert_eq!(w.sum_at(10 + 59), 4, "second 10 is still in the window");
        assert_eq!(w.sum_at(10 + 60), 1, "second 10 left, 11 is in");
        assert_eq!(w.sum_at(11 + 60), 0);
    }

    #[test]
    fn a_slot_a_lap_later_starts_over() {
        let w = Window::default();
        w.record_at(5);
        w.record_at(5 + SLOTS as u32);
        assert_eq!(
            w.sum_at(5 + SLOTS as u32),
            1,
            "the old count is not carried over"
        );
    }

    #[test]
    fn concurrent_picks_are_all_counted() {
        let w = Arc::new(Window::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        w.record_at(100 + (i + t) % 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a counting thread");
        }
        assert_eq!(w.sum_at(102), 40_000);
    }

    #[tokio::test(start_paused = true)]
    async fn shares_list_present_and_recent_instances() {
        let picks = Picks::start();
        let a = picks.counter("s", "a");
        a.record();
        a.record();
        picks.counter("s", "gone").record();
        picks.counter("other", "x").record();
        assert_eq!(
            picks.shares("s", &["a", "b"]),
            vec![("a".into(), 2), ("b".into(), 0), ("gone".into(), 1)]
        );
        tokio::time::sleep(Duration::from_secs(61)).await;
        drop(a);
        assert_eq!(
            picks.shares("s", &["b"]),
            vec![("b".into(), 0)],
            "an idle window of an instance that left is dropped"
        );
    }
}
