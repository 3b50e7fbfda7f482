//! Small helpers shared across the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, poisoned or not. chi's mutexes guard maps and counters that a panicking holder
/// cannot leave in a state worse than losing them (a half-done update is overwritten by the next
/// refresh or round), and a cache or a manager that stopped working after one panic elsewhere
/// would be the bigger failure, so poisoning is ignored in one place instead of at every lock.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
