//! Several registries behind one: writes go to all of them, reads merge them.
//!
//! One registry over several (consul, etcd, nacos). Writes fan out concurrently and
//! one failing backend never stops the others: a registration some members took and others
//! did not is [`Error::PartialRegistration`] (naming both), a write that failed everywhere
//! [`Error::Backends`]; and the [`ServiceManager`](crate::ServiceManager), which sees the
//! members through [`Registry::members`], keeps retrying only the backends that failed.
//!
//! A read-only member (DNS, [`Registry::read_only`]) takes no writes: registrations, keep-alives
//! and deregistrations go to the other members, and a multi-registry of read-only members only is
//! read-only itself.
//!
//! Reads return the union of the members' lists with duplicates merged by instance id (the first
//! member listed wins, so list the registry you trust most first). A member that fails a read
//! contributes its last good list, so one backend's outage never shrinks the union; only when every
//! member fails does the read fail. Watches merge the members' streams the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::stream::{self, SelectAll};
use futures_util::{Stream, StreamExt};

use super::{Change, Liveness, Registry, WatchStream, diff};
use crate::error::{Error, Result};
use crate::instance::{HealthCheck, HealthStatus, Instance};

/// A registry that writes to all its members and reads their union.
pub struct MultiRegistry {
    members: Vec<Arc<dyn Registry>>,
    /// Last good list per (member index, service), served when that member fails a read.
    last_good: Mutex<HashMap<(usize, String), Vec<Instance>>>,
}

impl std::fmt::Debug for MultiRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|m| m.backend()).collect();
        f.debug_struct("MultiRegistry")
            .field("members", &names)
            .finish()
    }
}

impl MultiRegistry {
    /// A multi-registry over `members` (first = highest priority when merging).
    pub fn new(members: Vec<Arc<dyn Registry>>) -> Self {
        MultiRegistry {
            members,
            last_good: Mutex::new(HashMap::new()),
        }
    }

    fn collect_failures<T>(&self, results: Vec<Result<T>>) -> Split<T> {
        self.collect_from(0..self.members.len(), results)
    }

    /// [`MultiRegistry::collect_failures`] of the members `indices` (in the order of `results`).
    fn collect_from<T>(
        &self,
        indices: impl IntoIterator<Item = usize>,
        results: Vec<Result<T>>,
    ) -> Split<T> {
        let mut ok = Vec::new();
        let mut failures = Vec::new();
        for (idx, r) in indices.into_iter().zip(results) {
            match r {
                Ok(v) => ok.push((idx, v)),
                Err(e) => failures.push((self.members[idx].backend().to_owned(), e)),
            }
        }
        (ok, failures)
    }

    /// The indices of the members that take writes; none is the read-only error.
    fn writers(&self) -> Result<Vec<usize>> {
        let writers: Vec<usize> = (0..self.members.len())
            .filter(|&i| !self.members[i].read_only())
            .collect();
        if writers.is_empty() {
            let names: Vec<&str> = self.members.iter().map(|m| m.backend()).collect();
            return Err(super::read_only(&names.join(", ")));
        }
        Ok(writers)
    }

    /// `Ok` when every writer took `instance`, else which did and which did not.
    fn registered_or_report(
        &self,
        instance: &Instance,
        writers: &[usize],
        results: Vec<Result<()>>,
    ) -> Result<()> {
        let (ok, failures) = self.collect_from(writers.iter().copied(), results);
        match (ok.is_empty(), failures.is_empty()) {
            (_, true) => Ok(()),
            (true, false) => Err(Error::Backends { failures }),
            (false, false) => Err(Error::PartialRegistration {
                id: instance.id.clone(),
                registered: ok
                    .into_iter()
                    .map(|(idx, ())| self.members[idx].backend().to_owned())
                    .collect(),
                failures,
            }),
        }
    }

    fn all_or_report(&self, writers: &[usize], results: Vec<Result<()>>) -> Result<()> {
        let (_, failures) = self.collect_from(writers.iter().copied(), results);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Backends { failures })
        }
    }
}

/// Successes by member index, and failures by backend name.
type Split<T> = (Vec<(usize, T)>, Vec<(String, Error)>);

/// The backends of `registry` (its members, or itself) that take writes, and the names of those
/// that do not (`"dns"`), for the [`ServiceManager`](crate::ServiceManager).
pub(crate) fn split_writers(registry: &Arc<dyn Registry>) -> (Vec<Arc<dyn Registry>>, String) {
    let all = registry
        .members()
        .map_or_else(|| vec![registry.clone()], <[_]>::to_vec);
    let (read_only, writers): (Vec<_>, Vec<_>) = all.into_iter().partition(|b| b.read_only());
    let names: Vec<&str> = read_only.iter().map(|b| b.backend()).collect();
    (writers, names.join(", "))
}

/// Union by id, first list wins.
fn merge<'a>(lists: impl IntoIterator<Item = &'a [Instance]>) -> Vec<Instance> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for list in lists {
        for i in list {
            if seen.insert(i.id.clone()) {
                out.push(i.clone());
            }
        }
    }
    out
}

#[async_trait]
impl Registry for MultiRegistry {
    fn backend(&self) -> &str {
        "multi"
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        instance.validate_registration()?;
        let writers = self.writers()?;
        let results = join_all(writers.iter().map(|&i| self.members[i].register(instance))).await;
        self.registered_or_report(instance, &writers, results)
    }

    /// Only when every member that takes writes runs it.
    fn runs_check(&self, check: &HealthCheck) -> bool {
        self.members
            .iter()
            .filter(|m| !m.read_only())
            .all(|m| m.runs_check(check))
    }

    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        instance.validate_registration()?;
        let writers = self.writers()?;
        let results = join_all(
            writers
                .iter()
                .map(|&i| self.members[i].register_with_checks(instance, checks)),
        )
        .await;
        self.registered_or_report(instance, &writers, results)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let writers = self.writers()?;
        let results = join_all(
            writers
                .iter()
                .map(|&i| self.members[i].deregister(service, id)),
        )
        .await;
        self.all_or_report(&writers, results)
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let writers = self.writers()?;
        let results = join_all(
            writers
                .iter()
                .map(|&i| self.members[i].keep_alive(instance, health)),
        )
        .await;
        let (ok, failures) = self.collect_from(writers, results);
        if ok.iter().any(|(_, l)| *l == Liveness::Lost) {
            return Ok(Liveness::Lost);
        }
        if failures.is_empty() {
            Ok(Liveness::Alive)
        } else {
            Err(Error::Backends { failures })
        }
    }

    fn keep_alive_interval(&self) -> std::time::Duration {
        self.members
            .iter()
            .filter(|m| !m.read_only())
            .map(|m| m.keep_alive_interval())
            .min()
            .unwrap_or(std::time::Duration::from_secs(5))
    }

    fn read_only(&self) -> bool {
        self.members.iter().all(|m| m.read_only())
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let results = join_all(self.members.iter().map(|m| m.instances(service))).await;
        let (ok, failures) = self.collect_failures(results);
        if ok.is_empty() {
            return Err(Error::Backends { failures });
        }
        let mut last_good = crate::util::lock(&self.last_good);
        let mut lists: Vec<Vec<Instance>> = vec![Vec::new(); self.members.len()];
        for (idx, list) in ok {
            last_good.insert((idx, service.to_owned()), list.clone());
            lists[idx] = list;
        }
        for (backend, err) in &failures {
            tracing::warn!(%backend, %service, error = %err, "member failed; serving its last good list");
        }
        for (idx, slot) in lists.iter_mut().enumerate() {
            if slot.is_empty()
                && let Some(prev) = last_good.get(&(idx, service.to_owned()))
            {
                slot.clone_from(prev);
            }
        }
        Ok(merge(lists.iter().map(Vec::as_slice)))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let results = join_all(self.members.iter().map(|m| m.services())).await;
        let (ok, failures) = self.collect_failures(results);
        if ok.is_empty() {
            return Err(Error::Backends { failures });
        }
        let mut names: Vec<String> = ok.into_iter().flat_map(|(_, v)| v).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        let results = join_all(self.members.iter().map(|m| m.watch(service))).await;
        let (ok, failures) = self.collect_failures(results);
        if ok.is_empty() {
            return Err(Error::Backends { failures });
        }
        let mut streams: SelectAll<_> = SelectAll::new();
        let mut waiting = vec![false; self.members.len()];
        for (idx, s) in ok {
            waiting[idx] = true;
            streams.push(tag(idx, s));
        }
        let early_errors: Vec<Result<Change>> = failures
            .into_iter()
            .map(|(backend, e)| Err(Error::registry(backend, e)))
            .collect();
        let st = MergeState {
            streams,
            views: vec![HashMap::new(); self.members.len()],
            merged: HashMap::new(),
            waiting,
            started: false,
            out: early_errors.into(),
        };
        Ok(stream::unfold(st, next_merged).boxed())
    }

    fn members(&self) -> Option<&[Arc<dyn Registry>]> {
        Some(&self.members)
    }
}

fn tag(idx: usize, s: WatchStream) -> impl Stream<Item = (usize, Result<Change>)> + Send + Unpin {
    s.map(move |item| (idx, item))
}

struct MergeState<S> {
    streams: SelectAll<S>,
    views: Vec<HashMap<String, Instance>>,
    merged: HashMap<String, Instance>,
    /// Members whose first item has not arrived yet.
    waiting: Vec<bool>,
    started: bool,
    out: std::collections::VecDeque<Result<Change>>,
}

impl<S> MergeState<S> {
    fn merged_list(&self) -> Vec<Instance> {
        let lists: Vec<Vec<Instance>> = self
            .views
            .iter()
            .map(|v| {
                let mut l: Vec<Instance> = v.values().cloned().collect();
                l.sort_by(|a, b| a.id.cmp(&b.id));
                l
            })
            .collect();
        merge(lists.iter().map(Vec::as_slice))
    }
}

async fn next_merged<S>(mut st: MergeState<S>) -> Option<(Result<Change>, MergeState<S>)>
where
    S: Stream<Item = (usize, Result<Change>)> + Unpin,
{
    loop {
        if let Some(item) = st.out.pop_front() {
            return Some((item, st));
        }
        let (idx, item) = st.streams.next().await?;
        st.waiting[idx] = false;
        let was_reset = matches!(item, Ok(Change::Reset(_)));
        match item {
            Ok(change) => change.apply(&mut st.views[idx]),
            Err(e) => st.out.push_back(Err(e)),
        }
        if !st.started {
            if st.waiting.iter().any(|w| *w) {
                continue;
            }
            st.started = true;
        } else if !was_reset {
            let list = st.merged_list();
            let changes = diff(&st.merged, &list);
            st.merged = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
            st.out.extend(changes.into_iter().map(Ok));
            continue;
        }
        // First complete view, or a member resynced: the consumer resyncs too.
        let list = st.merged_list();
        st.merged = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
        st.out.push_back(Ok(Change::Reset(list)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Memory;
    use crate::registry::testing::ReadOnly;

    fn inst(id: &str) -> Instance {
        Instance::new("svc", "127.0.0.1", 8000).with_id(id)
    }

    fn pair() -> (Memory, Memory, MultiRegistry) {
        let a = Memory::new();
        let b = Memory::new();
        let multi = MultiRegistry::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
        (a, b, multi)
    }

    #[tokio::test]
    async fn a_read_only_member_serves_reads_and_takes_no_writes() {
        let dns = Memory::new();
        dns.register(&inst("from-dns")).await.expect("seed");
        let writable = Memory::new();
        let multi = MultiRegistry::new(vec![
            Arc::new(ReadOnly(dns.clone())),
            Arc::new(writable.clone()),
        ]);
        assert!(!multi.read_only());
        multi
            .register(&inst("mine"))
            .await
            .expect("the writable member takes it");
        assert_eq!(
            multi
                .keep_alive(&inst("mine"), HealthStatus::Healthy)
                .await
                .expect("alive"),
            Liveness::Alive
        );
        let mut ids: Vec<String> = multi
            .instances("svc")
            .await
            .expect("read")
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["from-dns", "mine"]);
        multi.deregister("svc", "mine").await.expect("deregister");
        assert!(writable.instances("svc").await.expect("read").is_empty());

        let only_dns = MultiRegistry::new(vec![Arc::new(ReadOnly(dns))]);
        assert!(only_dns.read_only());
        let err = only_dns.register(&inst("x")).await.unwrap_err().to_string();
        assert!(err.contains("`dns`") && err.contains("read-only"), "{err}");
    }

    #[tokio::test]
    async fn watch_merges_members() {
        let (a, b, multi) = pair();
        a.register(&inst("x")).await.expect("a");
        let mut w = multi.watch("svc").await.expect("watch");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Reset(vec![inst("x")])
        );
        b.register(&inst("y")).await.expect("b");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Add(inst("y"))
        );
        // Same id in the second member: already known, no event; removing from `a` keeps b's copy.
        b.register(&inst("x")).await.expect("b");
        a.deregister("svc", "x").await.expect("a");
        b.deregister("svc", "y").await.expect("b");
        assert_eq!(
            w.next().await.expect("item").expect("ok"),
            Change::Remove(inst("y"))
        );
    }
}
