//! Randomness for [`Random`](super::Random) and [`P2c`](super::P2c), injectable like tower's
//! `p2c::Balance::from_rng`, so tests can fix the sequence.
//!
//! The default, [`ThreadRandom`], is a per-thread wyrand generator seeded once per thread from the
//! operating system (through `rand`): a pick touches no shared state, which is what keeps two
//! threads picking at the speed of one. [`SeededRandom`] is a deterministic, lock-free splitmix64
//! over one atomic counter, for tests.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of random `u64`s, shared by the threads that pick.
pub trait RandomSource: Send + Sync + fmt::Debug {
    /// The next random value.
    fn next_u64(&self) -> u64;
}

thread_local! {
    static WYRAND: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// The default source: a per-thread wyrand state, no sharing between threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    #[inline]
    fn next_u64(&self) -> u64 {
        WYRAND.with(|s| {
            let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
            s.set(x);
            let r = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            (r as u64) ^ ((r >> 64) as u64)
        })
    }
}

/// A deterministic source for tests: splitmix64 over an atomic counter. The same seed gives the
/// same sequence (on one thread; threads share the sequence).
#[derive(Debug)]
pub struct SeededRandom(AtomicU64);

impl SeededRandom {
    /// A source starting at `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom(AtomicU64::new(seed))
    }
}

impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
