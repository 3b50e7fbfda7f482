//! The registry abstraction and its backends.
//!
//! A [`Registry`] is where instances are written and read: the embedded [`Memory`] registry (the
//! zero-setup default), Consul, etcd v3, Nacos, ZooKeeper and a running `chi agent` ([`chi`],
//! `chi://`) behind cargo features, DNS (read-only, feature `dns`), and [`MultiRegistry`], which
//! writes to several at once.
//!
//! The trait is small and object-safe (`Arc<dyn Registry>` is what [`connect()`] builds from the
//! config's [`Registries`]). Keep-alive
//! is one uniform hook, [`Registry::keep_alive`]: each backend maps it onto its own mechanism (an
//! etcd lease keep-alive, a Consul TTL check pass/fail, a Nacos heartbeat, a deadline in `Memory`)
//! and answers [`Liveness::Lost`] when the backend no longer holds the registration, so the
//! [`ServiceManager`](crate::ServiceManager) re-registers it.
//!
//! Watches are streams of [`Change`] in linkerd's resolve shape: the first item is always a
//! [`Change::Reset`] with the full list, and after any reconnect or lost events the stream sends a
//! `Reset` again, so a consumer never misses a change and never applies one twice.
//!
//! The adapters share one layout: `mod.rs` is the [`Registry`], `config.rs` its settings
//! (always compiled, so the config file parses the same way in every build), `convert.rs` the
//! mapping to and from the backend's data, `watch.rs` the watch task, plus what only that backend
//! needs (`api`/`wire`/`tls` for Consul, `client`/`tls` for etcd, `auth` for Nacos,
//! `session`/`nodes` for ZooKeeper, `resolve` for DNS, `client`/`wire` for chi, whose `wire` the
//! agent's server shares). Every watch task runs under the crate's `watch_task` (the task stops
//! when its stream is dropped) and backs off with `retry::Backoff`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::instance::{HealthCheck, HealthStatus, Instance};

mod connect;
pub mod memory;
pub mod multi;
pub mod outage;
mod pending;
// The adapters' watch pump: which of its parts a build uses depends on the adapters it has.
#[cfg_attr(
    not(all(
        feature = "consul",
        feature = "etcd",
        feature = "nacos",
        feature = "zookeeper",
        feature = "chi"
    )),
    allow(dead_code)
)]
pub(crate) mod watch_task;

// Each adapter's config type is always there (the config file is parsed the same way in every
// build); the adapter itself comes with its cargo feature.
pub mod chi;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod nacos;
pub mod zookeeper;

pub use connect::{Registries, connect};
pub use memory::{Memory, MemoryConfig};
pub use multi::MultiRegistry;

/// One change to the instance set of a watched service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The complete current list; replaces whatever the consumer held. Sent first, and again
    /// after every reconnect or gap.
    Reset(Vec<Instance>),
    /// A new instance.
    Add(Instance),
    /// An instance left (the last known copy of it).
    Remove(Instance),
    /// An instance changed (health, weight, tags, meta...): the new copy.
    Update(Instance),
}

impl Change {
    /// Applies the change to a map of instances keyed by id.
    pub fn apply(self, view: &mut HashMap<String, Instance>) {
        match self {
            Change::Reset(all) => {
                view.clear();
                view.extend(all.into_iter().map(|i| (i.id.clone(), i)));
            }
            Change::Add(i) | Change::Update(i) => {
                view.insert(i.id.clone(), i);
            }
            Change::Remove(i) => {
                view.remove(&i.id);
            }
        }
    }
}

/// A stream of changes, with errors in line: an `Err` item reports a problem (the backend is
/// reconnecting); the stream goes on and resyncs with a [`Change::Reset`] once it can.
pub type WatchStream = BoxStream<'static, Result<Change>>;

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The backend holds the registration and its lease / TTL was renewed.
    Alive,
    /// The backend no longer holds the registration (lease expired, agent restarted...): register
    /// it again.
    Lost,
}

/// A service registry backend.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Short backend name used in errors, logs and metrics (`memory`, `etcd`, `consul`, `nacos`).
    fn backend(&self) -> &str;

    /// Registers (or replaces) an instance. Idempotent.
    async fn register(&self, instance: &Instance) -> Result<()>;

    /// Removes an instance. Removing an unknown instance is not an error.
    async fn deregister(&self, service: &str, id: &str) -> Result<()>;

    /// Renews the registration of `instance` and reports its health (Consul TTL pass/fail, Nacos
    /// healthy flag). Answers [`Liveness::Lost`] when the backend no longer holds it.
    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness>;

    /// How often [`Registry::keep_alive`] must be called for a registration to stay alive.
    fn keep_alive_interval(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// The instances of `service`, as the backend has them now. A service without instances is an
    /// empty list, not an error.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>>;

    /// The names of all services that have at least one instance.
    async fn services(&self) -> Result<Vec<String>>;

    /// Watches `service`: first a [`Change::Reset`], then changes as they happen.
    async fn watch(&self, service: &str) -> Result<WatchStream>;

    /// True when this registry runs `check` itself: Consul's agent runs HTTP, TCP and gRPC checks
    /// and holds TTL checks. etcd, Nacos and the embedded registry run none; there chi probes in
    /// the registering process and reports the verdict with its keep-alives.
    fn runs_check(&self, check: &HealthCheck) -> bool {
        let _ = check;
        false
    }

    /// Registers `instance` with `checks` the registry runs itself ([`Registry::runs_check`]);
    /// later registrations of the same id carry them too. With no checks this is
    /// [`Registry::register`]; a check the registry cannot run is an error, never dropped.
    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        if let Some(c) = checks.iter().find(|c| !self.runs_check(c)) {
            return Err(Error::invalid(
                "health check",
                c.target.describe(),
                format!("registry `{}` cannot run health checks", self.backend()),
            ));
        }
        self.register(instance).await
    }

    /// True when this registry only reads (DNS): its writes fail with [`read_only`]'s error, a
    /// [`MultiRegistry`] writes to its other members only, and the
    /// [`ServiceManager`](crate::ServiceManager) leaves it out of registration.
    fn read_only(&self) -> bool {
        false
    }

    /// The backends behind this registry, for per-backend bookkeeping (a [`MultiRegistry`]
    /// answers its members; a plain backend `None`).
    fn members(&self) -> Option<&[std::sync::Arc<dyn Registry>]> {
        None
    }
}

/// The error of a write to a read-only registry (`backend`: its name, or several).
pub fn read_only(backend: &str) -> Error {
    Error::invalid(
        "registry",
        backend,
        "is read-only: it serves discovery only (its records are published by their own \
         server); register in a writable registry: consul, etcd, nacos or memory",
    )
}

/// Turns two full lists into the changes that lead from `old` to `new` (by id; an instance whose
/// fields differ is an `Update`). Order: removals, then additions and updates in `new`'s order.
/// Backends that only see whole lists (Consul blocking queries, Nacos pushes) use this.
pub fn diff(old: &HashMap<String, Instance>, new: &[Instance]) -> Vec<Change> {
    let mut changes = Vec::new();
    let new_ids: std::collections::HashSet<&str> = new.iter().map(|i| i.id.as_str()).collect();
    let mut removed: Vec<&Instance> = old
        .values()
        .filter(|i| !new_ids.contains(i.id.as_str()))
        .collect();
    removed.sort_by(|a, b| a.id.cmp(&b.id));
    changes.extend(removed.into_iter().cloned().map(Change::Remove));
    for i in new {
        match old.get(&i.id) {
            None => changes.push(Change::Add(i.clone())),
            Some(prev) if prev != i => changes.push(Change::Update(i.clone())),
            Some(_) => {}
        }
    }
    changes
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inst(id: &str, w: u32) -> Instance {
        Instance::new("s", "h", 1).with_id(id).with_weight(w)
    }

    #[test]
    fn diff_reports_add_remove_update() {
        let old: HashMap<_, _> = [inst("a", 1), inst("b", 1), inst("c", 1)]
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let new = vec![inst("a", 1), inst("b", 2), inst("d", 1)];
        assert_eq!(
            diff(&old, &new),
            vec![
                Change::Remove(inst("c", 1)),
                Change::Update(inst("b", 2)),
                Change::Add(inst("d", 1)),
            ]
        );
        assert!(diff(&old, &old.values().cloned().collect::<Vec<_>>()).is_empty());
    }

    proptest! {
        /// Applying `diff(old, new)` to `old` gives exactly `new`.
        #[test]
        fn diff_then_apply_is_new(
            old in proptest::collection::btree_map("[a-f]", 0u32..3, 0..6),
            new in proptest::collection::btree_map("[a-f]", 0u32..3, 0..6),
        ) {
            let old: HashMap<String, Instance> = old.iter().map(|(id, w)| (id.clone(), inst(id, *w))).collect();
            let new: Vec<Instance> = new.iter().map(|(id, w)| inst(id, *w)).collect();
            let mut view = old.clone();
            for c in diff(&old, &new) {
                c.apply(&mut view);
            }
            let expected: HashMap<String, Instance> = new.iter().map(|i| (i.id.clone(), i.clone())).collect();
            prop_assert_eq!(view, expected);
        }
    }
}
