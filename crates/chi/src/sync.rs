//! Locks that ignore poisoning, in one place (the library does the same for its own).
//!
//! The binary's locks guard maps and lists: the proxy's services and the instances each marked
//! for removal, the idle upstream connections, the xDS hub's watched services, its encoded
//! resources and its book of clients, the console's pick windows and registry states. A holder
//! that panicked can leave no worse than a half-done insert or removal, which the next update
//! overwrites; a proxy, an xDS server or a console that stopped serving after one panic elsewhere
//! would be the bigger failure.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, poisoned or not.
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, poisoned or not.
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
