//! The restart grace: one service's instances as a follower serves them, where instances that
//! were there before a registry outage outlive the resync for a while.
//!
//! A Consul dev agent or an rnacos node that restarts comes back without its ephemeral
//! instances, and their owners register them again one by one within their keep-alive period.
//! The watch's `Reset` after the reconnect (or, when the watch itself saw no error, its diff)
//! then lacks part of the list. Served as it is, clients would call fewer backends until the
//! rest is back. So after a failure (the watch's error, or a failed probe of the registry), the
//! grace starts with the registry's first answer, and until it ends the removals of instances
//! served when the failure came (missing from a `Reset`, or a `Remove`) are held, while additions
//! and updates go out at once; an instance that comes back in the meantime is simply kept, and
//! one still missing when the grace ends is removed then (a real removal still happens, only
//! later). Removals outside that window are never held.

use std::collections::HashMap;
use std::time::Duration;

use crate::instance::Instance;
use crate::registry::Change;
use tokio::time::Instant;

/// One service's instances: the registry's view plus the ones held by the grace.
#[derive(Debug)]
pub struct Grace {
    period: Duration,
    /// The registry's view, as the watch's changes built it.
    view: HashMap<String, Instance>,
    /// Instances served before the failure that the registry lacks now, kept until `until`.
    held: HashMap<String, Instance>,
    /// What was served when the registry failed, until the grace after it ends.
    before: Option<HashMap<String, Instance>>,
    /// The end of the grace, set by the registry's first answer after the failure.
    until: Option<Instant>,
}

impl Grace {
    /// An empty list whose removals after a failure wait for `period` (zero: never).
    pub fn new(period: Duration) -> Grace {
        Grace {
            period,
            view: HashMap::new(),
            held: HashMap::new(),
            before: None,
            until: None,
        }
    }

    /// The registry failed (a watch error, a failed probe): the grace starts with its next answer.
    pub fn failed(&mut self) {
        if self.period.is_zero() {
            return;
        }
        let now = self.current();
        self.before.get_or_insert_with(HashMap::new).extend(now);
        self.until = None;
    }

    /// Applies one change of the watch; how many instances it started holding.
    pub fn apply(&mut self, change: Change, now: Instant) -> usize {
        let Some(before) = &self.before else {
            change.apply(&mut self.view);
            return 0;
        };
        // The registry answers again: the grace runs from here.
        self.until.get_or_insert(now + self.period);
        let mut newly = 0;
        match change {
            Change::Remove(i) if before.contains_key(&i.id) => {
                if let Some(gone) = self.view.remove(&i.id) {
                    self.held.insert(i.id.clone(), gone);
                    newly += 1;
                }
            }
            Change::Reset(list) => {
                Change::Reset(list).apply(&mut self.view);
                for (id, instance) in before {
                    if !self.view.contains_key(id) && !self.held.contains_key(id) {
                        self.held.insert(id.clone(), instance.clone());
                        newly += 1;
                    }
                }
            }
            other => other.apply(&mut self.view),
        }
        let view = &self.view;
        // Back in the registry: served from the view again, no longer held.
        self.held.retain(|id, _| !view.contains_key(id));
        newly
    }

    /// When the grace ends, while one runs.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// Ends the grace when it is over: the held instances are removed; whether any was.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.until.is_none_or(|until| until > now) {
            return false;
        }
        self.until = None;
        self.before = None;
        let removed = !self.held.is_empty();
        self.held.clear();
        removed
    }

    /// The instances served: the view plus the held ones.
    fn current(&self) -> HashMap<String, Instance> {
        let mut all = self.view.clone();
        all.extend(self.held.iter().map(|(id, i)| (id.clone(), i.clone())));
        all
    }

    /// The instances to serve, sorted by id.
    pub fn list(&self) -> Vec<Instance> {
        let mut list: Vec<Instance> = self
            .view
            .values()
            .chain(self.held.values())
            .cloned()
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}
