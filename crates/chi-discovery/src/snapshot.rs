//! The snapshot: an immutable list of one service's instances, as the registry gave it at one
//! moment. It is the type every layer reads (discovery caches it, balancers and routers build
//! their tables from it), so it sits in a leaf module that depends only on `instance`: a balancer
//! needs the list, not the discovery client that produced it.

use std::ops::Deref;
use std::sync::Arc;

use tokio::time::Instant;

use crate::instance::Instance;

/// An immutable list of a service's instances, as of one moment. Cloning is one `Arc` clone.
#[derive(Debug, Clone)]
pub struct Snapshot(pub(crate) Arc<SnapshotData>);

#[derive(Debug)]
pub(crate) struct SnapshotData {
    instances: Arc<[Instance]>,
    stale: bool,
    revision: u64,
    fetched_at: Instant,
}

impl Snapshot {
    /// A snapshot of `instances`, for a list of your own (discovery makes the others).
    /// `revision` must change whenever the list does (equal revisions mean equal lists) and grow
    /// over time: balancers and routers rebuild their tables only when it moves.
    pub fn new(instances: Vec<Instance>, revision: u64) -> Self {
        Snapshot(Arc::new(SnapshotData {
            instances: instances.into(),
            stale: false,
            revision,
            fetched_at: Instant::now(),
        }))
    }

    pub(crate) fn with_stale(&self, stale: bool) -> Self {
        Snapshot(Arc::new(SnapshotData {
            instances: self.0.instances.clone(),
            stale,
            revision: self.0.revision,
            fetched_at: self.0.fetched_at,
        }))
    }

    /// The instances.
    pub fn instances(&self) -> &[Instance] {
        &self.0.instances
    }

    /// The instances, shared: one `Arc` clone.
    pub(crate) fn shared(&self) -> Arc<[Instance]> {
        self.0.instances.clone()
    }

    /// True when the registry could not be reached at the last refresh (or watch), so this list
    /// may be out of date. It is still the last list the registry gave.
    pub fn is_stale(&self) -> bool {
        self.0.stale
    }

    /// Changes every time the instance list changes; equal revisions mean equal lists. Balancers
    /// rebuild their tables only when it moves.
    pub fn revision(&self) -> u64 {
        self.0.revision
    }

    /// When the registry last confirmed this list.
    pub fn fetched_at(&self) -> Instant {
        self.0.fetched_at
    }
}

impl Deref for Snapshot {
    type Target = [Instance];
    fn deref(&self) -> &[Instance] {
        &self.0.instances
    }
}
