//! One async lock per key, made on first use and forgotten when nobody holds or waits for it.
//!
//! Writers of one registration (a keep-alive, a re-registration, a deregistration) must not
//! overtake each other, or an older copy lands after a newer one; writers of different
//! registrations must not wait for each other. A lock per key gives both.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::util::lock;

/// Async locks by key.
pub(crate) struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub(crate) fn new() -> Self {
        KeyedLocks {
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<tokio::sync::Mutex<()>>>> {
        lock(&self.locks)
    }

    /// Waits for the lock of `key`; held until the guard is dropped.
    pub(crate) async fn lock(&self, key: &K) -> KeyGuard<'_, K> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        KeyGuard {
            owner: self,
            key: key.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Keys with a lock held or awaited (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// The lock of one key, held.
pub(crate) struct KeyGuard<'a, K: Eq + Hash + Clone> {
    owner: &'a KeyedLocks<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.owner.map();
        // Only the map holds it: nobody holds or waits for this key any more.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_waits_other_keys_do_not_and_locks_are_forgotten() {
        let locks = Arc::new(KeyedLocks::new());
        let a = locks.lock(&"a").await;
        // Another key is free.
        let b = tokio::time::timeout(Duration::from_millis(100), locks.lock(&"b")).await;
        assert!(b.is_ok());
        drop(b);
        // The same key waits until the holder lets go.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(&"a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.expect("waiter");
        assert_eq!(locks.len(), 0, "no lock is kept once nobody holds it");
    }
}
