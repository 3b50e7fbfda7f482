//! The registry probe of the outage policy ([`OutagePolicy`]): outages a watch may not see.
//!
//! A registry restarted between two answers of a watch (a Consul agent back within a blocking
//! query's reconnect, an rnacos node back within a second) can pass unseen by the watch, whose
//! next answer then lacks the instances that died with the old process, as if they had left.
//! With a restart grace set, the client asks the registry for its service names every
//! [`OutagePolicy::probe_period`] while one of its watches is open; a failed or late answer
//! counts as a failure for every watch (their graces start over) and every cached list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use super::Inner;
use crate::registry::outage::OutagePolicy;
use crate::util::{AbortOnDrop, lock};

/// The client's failures as the probe saw them, and the watches that want them.
pub(crate) struct Outages {
    /// Counts the failed probes; each watch holds a receiver.
    failures: watch::Sender<u64>,
    /// Watches open with a restart grace; the probe asks only while there is one.
    watching: AtomicUsize,
    /// The probe, started with the first such watch, stopped with the client.
    probe: Mutex<Option<AbortOnDrop>>,
}

impl Outages {
    pub(crate) fn new() -> Outages {
        Outages {
            failures: watch::Sender::new(0),
            watching: AtomicUsize::new(0),
            probe: Mutex::new(None),
        }
    }

    /// Tells of every failure the probe sees from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }
}

/// One open watch with a restart grace: the probe runs while one exists.
pub(crate) struct Watching(Arc<Inner>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.outages.watching.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    /// Counts an open watch with a restart grace, starting the probe with the first one.
    pub(crate) fn watching(self: &Arc<Self>) -> Watching {
        self.outages.watching.fetch_add(1, Ordering::AcqRel);
        let mut probe = lock(&self.outages.probe);
        if probe.is_none() {
            *probe = Some(AbortOnDrop::spawn(run(Arc::downgrade(self), self.outage)));
        }
        Watching(self.clone())
    }
}

/// Asks the registry every period while a watch with a grace is open; a failure or a late
/// answer is counted as an outage.
async fn run(inner: Weak<Inner>, policy: OutagePolicy) {
    loop {
        let Some(client) = inner.upgrade() else {
            return;
        };
        if client.outages.watching.load(Ordering::Acquire) > 0 {
            let timeout = policy.probe_timeout;
            let failed = match tokio::time::timeout(timeout, client.registry.services()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            if let Some(e) = failed {
                tracing::debug!("registry probe failed, removals wait for the restart grace: {e}");
                client.outages.failures.send_modify(|n| *n += 1);
                client.cache.failed_all();
            }
        }
        drop(client);
        tokio::time::sleep(
            policy
                .probe_period
                .max(std::time::Duration::from_millis(10)),
        )
        .await;
    }
}
