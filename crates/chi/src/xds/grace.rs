//! The restart grace: one service's instances as `chi xds` serves them, where endpoints that
//! were there before a registry outage outlive the resync for a while.
//!
//! A Consul dev agent or an rnacos node that restarts comes back without its ephemeral
//! instances, and their owners register them again one by one within their keep-alive period.
//! The watch's `Reset` after the reconnect then holds only part of the list. Served as it is,
//! clients would call fewer backends until the rest is back. So after a watch error, the
//! removals the resync implies (instances served when the watch failed that the `Reset` lacks)
//! are held for the grace period, while additions and updates go out at once; an instance that
//! comes back in the meantime is simply kept, and one still missing when the grace ends is
//! removed then (a real removal still happens, only later). Removals outside a resync are never
//! held.

use std::collections::HashMap;
use std::time::Duration;

use chi_discovery::{Change, Instance};
use tokio::time::Instant;

/// One service's instances: the registry's view plus the ones held by the grace.
#[derive(Debug)]
pub(crate) struct Served {
    period: Duration,
    /// The registry's view, as the watch's changes built it.
    view: HashMap<String, Instance>,
    /// Instances missing from the view since a resync, kept until their deadline.
    held: HashMap<String, (Instance, Instant)>,
    /// What was served when the watch failed, until the resync that ends the outage.
    outage: Option<HashMap<String, Instance>>,
}

impl Served {
    /// An empty list whose resyncs after an error hold removals for `period` (zero: never).
    pub(crate) fn new(period: Duration) -> Served {
        Served {
            period,
            view: HashMap::new(),
            held: HashMap::new(),
            outage: None,
        }
    }

    /// The watch reported an error: the next `Reset` is a resync after an outage.
    pub(crate) fn failed(&mut self) {
        if self.outage.is_none() && !self.period.is_zero() {
            self.outage = Some(self.current());
        }
    }

    /// Applies one change of the watch; how many instances it started holding.
    pub(crate) fn apply(&mut self, change: Change, now: Instant) -> usize {
        let resync = matches!(change, Change::Reset(_));
        change.apply(&mut self.view);
        let view = &self.view;
        // Back in the registry: served from the view again, no longer held.
        self.held.retain(|id, _| !view.contains_key(id));
        if !resync {
            return 0;
        }
        let Some(before) = self.outage.take() else {
            return 0;
        };
        let until = now + self.period;
        let mut newly = 0;
        for (id, instance) in before {
            if !self.view.contains_key(&id) && !self.held.contains_key(&id) {
                self.held.insert(id, (instance, until));
                newly += 1;
            }
        }
        newly
    }

    /// When the next held instance is due for removal.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.held.values().map(|(_, until)| *until).min()
    }

    /// Removes the held instances whose grace is over; whether any was.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.held.len();
        self.held.retain(|_, (_, until)| *until > now);
        before != self.held.len()
    }

    /// The instances to serve: the view plus the held ones.
    fn current(&self) -> HashMap<String, Instance> {
        let mut all = self.view.clone();
        for (id, (instance, _)) in &self.held {
            all.entry(id.clone()).or_insert_with(|| instance.clone());
        }
        all
    }

    /// The instances to serve, sorted by id.
    pub(crate) fn list(&self) -> Vec<Instance> {
        let mut list: Vec<Instance> = self
            .view
            .values()
            .chain(self.held.values().map(|(i, _)| i))
            .cloned()
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}
