//! What a registry's answers are worth after an outage: chi's one outage policy
//! (`docs/DESIGN.md` §4).
//!
//! A registry that comes back from an outage may answer without part of its instances for a
//! while: a restarted Consul dev agent or rnacos node lost its ephemeral registrations, a server
//! that knows no leader answers a stale read, and the owners of the lost instances register them
//! again one by one within their keep-alive period. Believed at once, those answers would shrink
//! (or empty) every client's list until the owners are back. So:
//!
//! > After a failure (a call that did not reach the server, a watch error, a failed probe), the
//! > registry **recovers** from its first answer until it has answered for a grace period without
//! > a new failure. While it recovers, an instance that was served when the failure came is not
//! > believed gone; additions and updates are believed at once. Once the grace is over, what the
//! > registry says goes, an empty list included (services do scale to zero).
//!
//! One clock, `Recovery`, tells where a registry stands. Two places apply the rule, each with
//! what it can see:
//!
//! - an adapter, whose every answer is a whole list, holds an *empty* answer for a service that
//!   had instances (`EmptyGuard`, in the Consul, Nacos and chi:// adapters): the caller keeps
//!   its last list. Its grace is the time the backend's registrants take to come back, which the
//!   adapter knows (Consul's `check_ttl`, Nacos' `empty_grace`, three keep-alive periods of a
//!   `chi agent`'s registrants). ZooKeeper, etcd and DNS servers keep their data across a
//!   restart, so their empty answers are believed;
//! - a follower of a service, which knows what it served, holds the *removals* ([`Grace`]): the
//!   discovery client's watches and cache, and the watches shared per service
//!   (`discovery::shared`, which `chi xds` serves), with the grace of [`OutagePolicy`].
//!
//! Neither ever empties a list because of an error: an error only starts the recovery.

#[cfg(any(feature = "consul", feature = "nacos", feature = "chi"))]
mod empty;
pub mod grace;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::time::Instant;

#[cfg(any(feature = "consul", feature = "nacos", feature = "chi"))]
pub(crate) use empty::EmptyGuard;
pub use grace::Grace;

/// The outage policy of a discovery client (`DiscoveryClient::builder().outage(...)`), which its
/// watches, its cache and the shared watches built on it follow; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutagePolicy {
    /// How long instances the registry lacks after a failure are still served, from its first
    /// answer after the failure. Zero (the default) turns the grace off: a resync is served as
    /// the registry gives it.
    pub restart_grace: Duration,
    /// How often the registry is asked for its service names while a watch is open and the grace
    /// is on: a short outage between two answers of a watch (a registry restarted in a second)
    /// would otherwise pass unseen, and its resync would look like ordinary removals.
    pub probe_period: Duration,
    /// A probe answered later than this counts as a failure.
    pub probe_timeout: Duration,
}

impl Default for OutagePolicy {
    /// No restart grace; probes every second, failed after 2 s, once a grace is set.
    fn default() -> Self {
        OutagePolicy {
            restart_grace: Duration::ZERO,
            probe_period: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

impl OutagePolicy {
    /// The default policy with a restart grace of `grace`.
    pub fn with_restart_grace(grace: Duration) -> Self {
        OutagePolicy {
            restart_grace: grace,
            ..OutagePolicy::default()
        }
    }

    /// True when a restart grace is set.
    pub fn is_on(&self) -> bool {
        !self.restart_grace.is_zero()
    }
}

/// Where a registry stands between a failure and the end of the grace after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Answering, and nothing to recover from: its answers are believed.
    Trusted,
    /// Answering again since this instant, after a failure.
    Since(Instant),
    /// Failing: the recovery starts with its next answer.
    Down,
}

impl Recovery {
    /// A failure: the registry is down until it answers.
    pub(crate) fn failed(&mut self) {
        *self = Recovery::Down;
    }

    /// An answer at `now`: the first one after a failure starts the recovery.
    pub(crate) fn answered(&mut self, now: Instant) {
        if *self == Recovery::Down {
            *self = Recovery::Since(now);
        }
    }

    /// True when the registry's answers are believed at `now` with a grace of `grace` (read by
    /// the adapters' `EmptyGuard`, which comes with their features).
    #[cfg_attr(
        not(any(feature = "consul", feature = "nacos", feature = "chi")),
        allow(dead_code)
    )]
    pub(crate) fn is_trusted(&self, grace: Duration, now: Instant) -> bool {
        match self {
            Recovery::Trusted => true,
            Recovery::Since(t) => now.saturating_duration_since(*t) >= grace,
            Recovery::Down => false,
        }
    }

    /// When a running recovery ends (`None` while down or trusted).
    pub(crate) fn ends(&self, grace: Duration) -> Option<Instant> {
        match self {
            Recovery::Since(t) => Some(t.checked_add(grace).unwrap_or_else(far_future)),
            Recovery::Trusted | Recovery::Down => None,
        }
    }

    /// True while a failure has not been recovered from (down, or recovering).
    pub(crate) fn is_recovering(&self) -> bool {
        *self != Recovery::Trusted
    }
}

/// An instant no grace reaches (a grace too long to add to an `Instant` never ends).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
