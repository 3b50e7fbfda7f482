//! The cache's side of the outage policy: a failed refresh, watch or probe marks lists stale
//! and, with a restart grace, starts the grace of each service ([`Grace`]): instances the
//! registry lacks when it answers again stay served until the grace is over.

use tokio::time::Instant;

use super::Cache;
use crate::instance::Instance;
use crate::registry::Change;
use crate::registry::outage::Grace;
use crate::util::lock;

impl Cache {
    /// The list `change` leaves served, through the grace of `service`.
    pub(super) fn through_grace(&self, service: &str, change: Change) -> Vec<Instance> {
        let now = Instant::now();
        let mut graces = lock(&self.graces);
        let grace = graces
            .entry(service.to_owned())
            .or_insert_with(|| Grace::new(self.grace));
        grace.expire(now);
        grace.apply(change, now);
        grace.list()
    }

    /// A refresh or a watch of `service` failed: its list is marked stale (and stays), and its
    /// grace starts with the next answer.
    pub(crate) fn failed(&self, service: &str) {
        self.mark_stale(service);
        if !self.grace.is_zero()
            && let Some(grace) = lock(&self.graces).get_mut(service)
        {
            grace.failed();
        }
    }

    /// The registry failed for every service (a failed probe): every grace starts over.
    pub(crate) fn failed_all(&self) {
        if self.grace.is_zero() {
            return;
        }
        for grace in lock(&self.graces).values_mut() {
            grace.failed();
        }
    }

    /// Ends the graces that are over at `now`: the instances they held leave the lists.
    pub(crate) fn settle(&self, now: Instant) {
        if self.grace.is_zero() {
            return;
        }
        let over: Vec<(String, Vec<Instance>)> = lock(&self.graces)
            .iter_mut()
            .filter_map(|(name, grace)| {
                (!grace.expire(now).is_empty()).then(|| (name.clone(), grace.list()))
            })
            .collect();
        for (name, list) in over {
            if let Some(entry) = self.entry(&name) {
                let stale = entry.load().is_stale();
                self.save(&name, list);
                if stale {
                    self.mark_stale(&name);
                }
            }
        }
    }
}
