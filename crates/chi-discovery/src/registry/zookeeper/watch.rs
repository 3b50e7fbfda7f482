//! The watch task of the ZooKeeper adapter.
//!
//! A watch sets its ZooKeeper watch first and lists the service's directory after, so no change
//! falls between the two (a change seen twice is no event: the task diffs against what the
//! consumer holds). Then, by [`WatchMode`]:
//!
//! - **persistent**: one persistent recursive watch on the directory (ZooKeeper 3.6+, `addWatch`)
//!   reports every node created, changed or deleted below it; a created or changed node is read
//!   (Curator) or decoded from its name (Dubbo);
//! - **one-shot**: a child watch on the directory (an existence watch while it does not exist)
//!   and, in the Curator layout, a data watch on every instance node, each set again when it
//!   fires, as clients of ZooKeeper 3.5 and older do. `Auto` uses this when the server answers
//!   `addWatch` with "unimplemented".
//!
//! The task keeps the nodes (node name -> instance, indexed by id) and the consumer's view (id ->
//! instance) and, after every event, sends the changes of the ids it touched. A lost
//! connection or an ended session is an error item; the task then opens the watch again (on the
//! new session if the old one ended) with [`Backoff`], lists again and sends a `Reset`: events
//! during a disconnection may be lost (ZOOKEEPER-4698), so replays are never trusted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use zookeeper_client as zk;

use super::convert::parse;
use super::nodes::by_id;
use super::session::{Failure, unimplemented};
use super::{BACKEND, Inner, Layout, WatchMode};
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::registry::watch_task::{self, Sender};
use crate::registry::{Change, WatchStream};
use crate::retry::Backoff;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Opens the watch here (so an unreachable ensemble fails the `watch` call itself), then hands
/// the rest to a task.
pub(super) async fn start(inner: Arc<Inner>, service: String) -> Result<WatchStream> {
    let mut task = Task {
        dir: inner.dir(&service),
        mode: inner.settings.watch,
        inner,
        service,
        nodes: Nodes::default(),
        view: HashMap::new(),
    };
    let source = task.open().await?;
    let first = task.settle();
    Ok(watch_task::spawn_watch(move |tx| async move {
        if tx.send(Ok(Change::Reset(first))).await {
            task.run(source, tx).await;
        }
    }))
}

/// What delivers the ZooKeeper events of one opened watch.
enum Source {
    Persistent(zk::PersistentWatcher),
    Oneshot(Oneshot),
}

struct Oneshot {
    client: zk::Client,
    state: zk::StateWatcher,
    /// Every one-shot watch set and not fired yet.
    pending: FuturesUnordered<BoxFuture<'static, zk::WatchedEvent>>,
    /// The nodes with a data watch set (Curator layout).
    watched: HashSet<String>,
}

struct Task {
    inner: Arc<Inner>,
    service: String,
    dir: String,
    /// `Auto` until the first open decides.
    mode: WatchMode,
    /// The nodes, as ZooKeeper has them.
    nodes: Nodes,
    /// Id -> instance: what the consumer holds.
    view: HashMap<String, Instance>,
}

impl Task {
    async fn run(mut self, mut source: Source, tx: Sender<Result<Change>>) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let error = match self.pump(&mut source, &tx).await {
                None => return,
                Some(e) => e,
            };
            tracing::debug!(service = %self.service, error = %error, "zookeeper watch broke; reopening");
            if !tx.send(Err(error)).await {
                return;
            }
            loop {
                if !tx.sleep(backoff.next_delay()).await {
                    return;
                }
                match self.open().await {
                    Ok(s) => {
                        source = s;
                        backoff.reset();
                        if !tx.send(Ok(Change::Reset(self.settle()))).await {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        if !tx.send(Err(e)).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sets the watch and lists the directory into `nodes`.
    async fn open(&mut self) -> Result<Source> {
        let inner = self.inner.clone();
        let client = inner.client().await?;
        if self.mode != WatchMode::Oneshot {
            let dir = &self.dir;
            let added = inner
                .timed(
                    "watch",
                    dir,
                    client.watch(dir, zk::AddWatchMode::PersistentRecursive),
                )
                .await;
            match added {
                Ok(watcher) => {
                    self.mode = WatchMode::Persistent;
                    self.nodes.replace(inner.list(&self.service).await?);
                    return Ok(Source::Persistent(watcher));
                }
                Err(f) if self.mode == WatchMode::Auto && unimplemented(&f) => {
                    tracing::info!(service = %self.service, "zookeeper has no persistent watches (before 3.6); using one-shot watches");
                    self.mode = WatchMode::Oneshot;
                }
                Err(f) => return Err(inner.error("watch", dir, f)),
            }
        }
        let mut oneshot = Oneshot {
            state: client.state_watcher(),
            client,
            pending: FuturesUnordered::new(),
            watched: HashSet::new(),
        };
        self.nodes.clear();
        self.arm_children(&mut oneshot).await?;
        Ok(Source::Oneshot(oneshot))
    }

    /// The consumer's view made equal to the nodes; the full list.
    fn settle(&mut self) -> Vec<Instance> {
        let all = self.nodes.all();
        self.nodes.touched.clear();
        self.view = all.iter().map(|i| (i.id.clone(), i.clone())).collect();
        all
    }

    /// Sends what changed for the ids whose nodes changed since the last call (only those are
    /// looked at: an event costs the same at 10 and 10,000 instances). False when the consumer
    /// left.
    async fn emit(&mut self, tx: &Sender<Result<Change>>) -> bool {
        let mut touched: Vec<String> = self.nodes.touched.drain().collect();
        touched.sort();
        for id in touched {
            let change = match (self.view.get(&id), self.nodes.current(&id)) {
                (None, Some(new)) => Change::Add(new.clone()),
                (Some(old), None) => Change::Remove(old.clone()),
                (Some(old), Some(new)) if old != new => Change::Update(new.clone()),
                _ => continue,
            };
            change.clone().apply(&mut self.view);
            if !tx.send(Ok(change)).await {
                return false;
            }
        }
        true
    }

    fn broken(&self, what: &str) -> Error {
        Error::Unavailable {
            backend: BACKEND.into(),
            message: format!(
                "watch of `{}`: {what}; serving the last list until it is back",
                self.service.escape_debug()
            ),
        }
    }

    /// The node name of `path` when it is directly in the service's directory.
    fn child_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        let child = path.strip_prefix(self.dir.as_str())?.strip_prefix('/')?;
        (!child.is_empty() && !child.contains('/')).then_some(child)
    }

    /// Follows events until the watch breaks (`Some(error)`) or the consumer leaves (`None`).
    async fn pump(&mut self, source: &mut Source, tx: &Sender<Result<Change>>) -> Option<Error> {
        loop {
            let outcome = match source {
                Source::Persistent(watcher) => {
                    let event = tokio::select! {
                        e = watcher.changed() => e,
                        () = tx.closed() => return None,
                    };
                    self.on_persistent(event).await
                }
                Source::Oneshot(o) => {
                    let event = tokio::select! {
                        Some(e) = o.pending.next() => e,
                        s = o.state.changed() => zk::WatchedEvent::new_session(s),
                        () = tx.closed() => return None,
                    };
                    self.on_oneshot(o, event).await
                }
            };
            if let Err(e) = outcome {
                return Some(e);
            }
            if !self.emit(tx).await {
                return None;
            }
        }
    }

    /// A session event: an error when the connection or the session is gone.
    fn on_session(&self, state: zk::SessionState) -> Result<()> {
        match state {
            zk::SessionState::Disconnected => Err(self.broken("connection to ZooKeeper lost")),
            s if s.is_terminated() => Err(self.broken(&format!("ZooKeeper session ended ({s})"))),
            _ => Ok(()),
        }
    }

    async fn on_persistent(&mut self, event: zk::WatchedEvent) -> Result<()> {
        use zk::EventType as E;
        let Some(child) = self.child_of(&event.path).map(str::to_owned) else {
            return match event.event_type {
                E::Session => self.on_session(event.session_state),
                _ => Ok(()),
            };
        };
        match event.event_type {
            E::NodeCreated | E::NodeDataChanged => self.read(&child).await,
            E::NodeDeleted => {
                self.nodes.set(&child, None);
                Ok(())
            }
            E::Session | E::NodeChildrenChanged => Ok(()),
        }
    }

    /// Reads one node into `nodes` (or out of it, when it is gone).
    async fn read(&mut self, child: &str) -> Result<()> {
        let layout = self.inner.settings.layout;
        let found = match layout {
            Layout::Dubbo => parse(layout, &self.service, child, &[]),
            Layout::Curator => {
                let data = self.inner.data(&format!("{}/{child}", self.dir)).await?;
                data.and_then(|(data, _)| parse(layout, &self.service, child, &data))
            }
        };
        self.nodes.set(child, found);
        Ok(())
    }

    async fn on_oneshot(&mut self, o: &mut Oneshot, event: zk::WatchedEvent) -> Result<()> {
        use zk::EventType as E;
        if event.event_type == E::Session {
            return self.on_session(event.session_state);
        }
        if event.path == self.dir {
            return self.arm_children(o).await;
        }
        let Some(child) = self.child_of(&event.path).map(str::to_owned) else {
            return Ok(());
        };
        o.watched.remove(&child);
        match event.event_type {
            E::NodeDeleted => {
                self.nodes.set(&child, None);
                Ok(())
            }
            _ => self.arm_data(o, &child).await,
        }
    }

    /// Lists the directory with a child watch (an existence watch while it is missing), drops
    /// the nodes that left and reads the new ones with a data watch.
    async fn arm_children(&mut self, o: &mut Oneshot) -> Result<()> {
        let inner = self.inner.clone();
        let dir = self.dir.clone();
        loop {
            match inner
                .timed("list", &dir, o.client.list_and_watch_children(&dir))
                .await
            {
                Ok((children, watcher)) => {
                    o.pending.push(Box::pin(watcher.changed()));
                    let now: HashSet<&String> = children.iter().collect();
                    self.nodes.retain(|c| now.contains(c));
                    o.watched.retain(|c| now.contains(c));
                    for child in &children {
                        if !o.watched.contains(child) {
                            self.arm_data(o, child).await?;
                        }
                    }
                    return Ok(());
                }
                Err(Failure::Zk(zk::Error::NoNode)) => {
                    match inner
                        .timed("stat", &dir, o.client.check_and_watch_stat(&dir))
                        .await
                    {
                        Ok((None, watcher)) => {
                            o.pending.push(Box::pin(watcher.changed()));
                            self.nodes.clear();
                            o.watched.clear();
                            return Ok(());
                        }
                        // Created meanwhile: list it.
                        Ok((Some(_), _)) => continue,
                        Err(f) => return Err(inner.error("stat", &dir, f)),
                    }
                }
                Err(f) => return Err(inner.error("list", &dir, f)),
            }
        }
    }

    /// Reads one node with a data watch (Curator), or decodes its name (Dubbo, whose nodes never
    /// change: a changed provider is a new node).
    async fn arm_data(&mut self, o: &mut Oneshot, child: &str) -> Result<()> {
        let layout = self.inner.settings.layout;
        o.watched.insert(child.to_owned());
        if layout == Layout::Dubbo {
            self.nodes
                .set(child, parse(layout, &self.service, child, &[]));
            return Ok(());
        }
        let path = format!("{}/{child}", self.dir);
        let read = self
            .inner
            .timed("get", &path, o.client.get_and_watch_data(&path))
            .await;
        match read {
            Ok((data, _, watcher)) => {
                o.pending.push(Box::pin(watcher.changed()));
                self.nodes
                    .set(child, parse(layout, &self.service, child, &data));
                Ok(())
            }
            Err(Failure::Zk(zk::Error::NoNode)) => {
                o.watched.remove(child);
                self.nodes.set(child, None);
                Ok(())
            }
            Err(f) => Err(self.inner.error("get", &path, f)),
        }
    }
}

/// A service's nodes (node name -> instance) indexed by instance id, and the ids touched since
/// the last [`Task::emit`]. An id's instance is its first node in name order (see
/// `nodes::by_id`).
#[derive(Default)]
struct Nodes {
    map: BTreeMap<String, Instance>,
    ids: HashMap<String, BTreeSet<String>>,
    touched: HashSet<String>,
}

impl Nodes {
    /// Sets (or, with `None`, removes) the node `child`.
    fn set(&mut self, child: &str, instance: Option<Instance>) {
        if let Some(old) = self.map.remove(child) {
            self.unindex(&old.id, child);
            self.touched.insert(old.id);
        }
        if let Some(new) = instance {
            self.ids
                .entry(new.id.clone())
                .or_default()
                .insert(child.to_owned());
            self.touched.insert(new.id.clone());
            self.map.insert(child.to_owned(), new);
        }
    }

    fn unindex(&mut self, id: &str, child: &str) {
        if let Some(children) = self.ids.get_mut(id) {
            children.remove(child);
            if children.is_empty() {
                self.ids.remove(id);
            }
        }
    }

    /// Keeps the nodes whose name passes `keep`.
    fn retain(&mut self, keep: impl Fn(&String) -> bool) {
        let gone: Vec<String> = self.map.keys().filter(|c| !keep(c)).cloned().collect();
        for child in gone {
            self.set(&child, None);
        }
    }

    /// Replaces every node (a fresh listing).
    fn replace(&mut self, map: BTreeMap<String, Instance>) {
        self.clear();
        for (child, instance) in map {
            self.set(&child, Some(instance));
        }
    }

    fn clear(&mut self) {
        self.touched.extend(self.ids.keys().cloned());
        self.map.clear();
        self.ids.clear();
    }

    /// The instance of `id`: its first node in name order.
    fn current(&self, id: &str) -> Option<&Instance> {
        let child = self.ids.get(id)?.first()?;
        self.map.get(child)
    }

    /// One instance per id, sorted by id.
    fn all(&self) -> Vec<Instance> {
        by_id(self.map.values())
    }
}
