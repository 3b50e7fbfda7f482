//! A follower's side of the outage policy ([`super`]): the restart grace, where instances that
//! were served before a registry outage outlive the resync for a while.
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

use tokio::time::Instant;

use super::Recovery;
use crate::instance::Instance;
use crate::registry::{Change, diff};

/// One service's instances as served: the registry's view plus the ones held by the grace.
///
/// Feed it the registry's changes ([`Grace::apply`]) and failures ([`Grace::failed`]); it answers
/// the changes of what it serves, and [`Grace::expire`] the removals due when the grace ends
/// ([`Grace::deadline`]). With no recovery running (no failure since the last grace ended, or a
/// zero grace), a change passes as it is.
#[derive(Debug)]
pub struct Grace {
    period: Duration,
    recovery: Recovery,
    /// The registry's view, as its changes built it.
    view: HashMap<String, Instance>,
    /// Instances served before the failure that the registry lacks now, kept while it recovers.
    held: HashMap<String, Instance>,
    /// What was served when the registry failed, while it recovers.
    before: HashMap<String, Instance>,
}

impl Grace {
    /// An empty list whose removals after a failure wait for `period` (zero: never).
    pub fn new(period: Duration) -> Grace {
        Grace {
            period,
            recovery: Recovery::Trusted,
            view: HashMap::new(),
            held: HashMap::new(),
            before: HashMap::new(),
        }
    }

    /// The registry failed (a watch error, a failed probe): the grace starts with its next answer.
    pub fn failed(&mut self) {
        if self.period.is_zero() {
            return;
        }
        let served = self.served();
        self.before.extend(served);
        self.recovery.failed();
    }

    /// Applies one change of the registry, which answered at `now`, and answers the changes of
    /// the served list it makes: the change itself outside a recovery; while one runs, a `Reset`
    /// of everything served after a `Reset`, else the difference (held removals left out).
    pub fn apply(&mut self, change: Change, now: Instant) -> Vec<Change> {
        if !self.recovery.is_recovering() {
            change.clone().apply(&mut self.view);
            return vec![change];
        }
        // The registry answers again: the grace runs from its first answer.
        self.recovery.answered(now);
        let served = self.served();
        let reset = matches!(change, Change::Reset(_));
        match change {
            Change::Remove(i) if self.before.contains_key(&i.id) => {
                if let Some(gone) = self.view.remove(&i.id) {
                    self.held.insert(i.id.clone(), gone);
                }
            }
            Change::Reset(list) => {
                Change::Reset(list).apply(&mut self.view);
                for (id, instance) in &self.before {
                    if !self.view.contains_key(id) && !self.held.contains_key(id) {
                        self.held.insert(id.clone(), instance.clone());
                    }
                }
            }
            other => other.apply(&mut self.view),
        }
        let view = &self.view;
        // Back in the registry: served from the view again, no longer held.
        self.held.retain(|id, _| !view.contains_key(id));
        if reset {
            vec![Change::Reset(self.list())]
        } else {
            diff(&served, &self.list())
        }
    }

    /// When the grace ends, while one runs.
    pub fn deadline(&self) -> Option<Instant> {
        self.recovery.ends(self.period)
    }

    /// Ends the grace when it is over at `now`: the held instances are removed, and their
    /// removals answered (by id).
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        if self.deadline().is_none_or(|end| end > now) {
            return Vec::new();
        }
        self.recovery = Recovery::Trusted;
        self.before.clear();
        let mut gone: Vec<Instance> = self.held.drain().map(|(_, i)| i).collect();
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        gone.into_iter().map(Change::Remove).collect()
    }

    /// How many instances the grace holds now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The instances served, by id: the view plus the held ones.
    fn served(&self) -> HashMap<String, Instance> {
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
