//! The node operations behind the [`Registry`](crate::Registry) calls: list a service's nodes,
//! find the nodes of one instance, write an instance (taking a node of the same id over, as
//! Curator does), withdraw one, delete one, list the services.

use std::collections::BTreeMap;

use zookeeper_client as zk;

use super::convert::{self, parse};
use super::session::Failure;
use super::{Inner, Layout};
use crate::error::{Error, Result};
use crate::instance::{Instance, validate_name};

/// The instances of a service's nodes (node name -> instance), one per id: the first node of
/// each id in node-name order (a Dubbo provider restarted before its old session expired is
/// listed twice for a while).
pub(super) fn by_id<'a>(nodes: impl IntoIterator<Item = &'a Instance>) -> Vec<Instance> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Instance> = nodes
        .into_iter()
        .filter(|i| seen.insert(i.id.clone()))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Milliseconds since the epoch (Curator's `registrationTimeUTC`, Dubbo's `timestamp`).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Inner {
    pub(super) fn dir(&self, service: &str) -> String {
        convert::service_dir(self.settings.layout, &self.settings.root, service)
    }

    /// The children of `path`; none when it does not exist.
    pub(super) async fn children(&self, path: &str) -> Result<Vec<String>> {
        let p = path.to_owned();
        match self
            .try_call("list", path, |c| {
                let p = p.clone();
                async move { c.list_children(&p).await }
            })
            .await
        {
            Ok(children) => Ok(children),
            Err(Failure::Zk(zk::Error::NoNode)) => Ok(Vec::new()),
            Err(f) => Err(self.error("list", path, f)),
        }
    }

    /// The data and stat of `path`; `None` when it does not exist.
    pub(super) async fn data(&self, path: &str) -> Result<Option<(Vec<u8>, zk::Stat)>> {
        let p = path.to_owned();
        match self
            .try_call("get", path, |c| {
                let p = p.clone();
                async move { c.get_data(&p).await }
            })
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(Failure::Zk(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.error("get", path, f)),
        }
    }

    async fn stat(&self, path: &str) -> Result<Option<zk::Stat>> {
        let p = path.to_owned();
        self.call("stat", path, |c| {
            let p = p.clone();
            async move { c.check_stat(&p).await }
        })
        .await
    }

    /// Deletes `path`; a node that is already gone is fine.
    pub(super) async fn delete(&self, path: &str) -> Result<()> {
        let p = path.to_owned();
        match self
            .try_call("delete", path, |c| {
                let p = p.clone();
                async move { c.delete(&p, None).await }
            })
            .await
        {
            Ok(()) | Err(Failure::Zk(zk::Error::NoNode)) => Ok(()),
            Err(f) => Err(self.error("delete", path, f)),
        }
    }

    /// Every node of `service` (node name -> instance); foreign or corrupt nodes are skipped.
    pub(super) async fn list(&self, service: &str) -> Result<BTreeMap<String, Instance>> {
        let dir = self.dir(service);
        let layout = self.settings.layout;
        let children = self.children(&dir).await?;
        if layout == Layout::Dubbo {
            return Ok(children
                .into_iter()
                .filter_map(|c| parse(layout, service, &c, &[]).map(|i| (c, i)))
                .collect());
        }
        let reads = children.iter().map(|c| self.data_of(&dir, c));
        let mut out = BTreeMap::new();
        for (child, read) in children
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            if let Some((data, _)) = read?
                && let Some(i) = parse(layout, service, child, &data)
            {
                out.insert(child.clone(), i);
            }
        }
        Ok(out)
    }

    async fn data_of(&self, dir: &str, child: &str) -> Result<Option<(Vec<u8>, zk::Stat)>> {
        self.data(&format!("{dir}/{child}")).await
    }

    /// The nodes of instance `id` of `service`, with the session that owns each.
    pub(super) async fn nodes_of(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Vec<(String, Instance, i64)>> {
        let dir = self.dir(service);
        let layout = self.settings.layout;
        let candidates: Vec<String> = match layout {
            Layout::Curator => vec![id.to_owned()],
            Layout::Dubbo => self
                .children(&dir)
                .await?
                .into_iter()
                .filter(|c| parse(layout, service, c, &[]).is_some_and(|i| i.id == id))
                .collect(),
        };
        let mut out = Vec::new();
        for child in candidates {
            let Some((data, stat)) = self.data_of(&dir, &child).await? else {
                continue;
            };
            if let Some(i) = parse(layout, service, &child, &data) {
                out.push((child, i, stat.ephemeral_owner));
            }
        }
        Ok(out)
    }

    /// Writes `instance` as an ephemeral node of the current session, creating the parents,
    /// replacing an earlier node of the same id.
    pub(super) async fn put(&self, instance: &Instance) -> Result<()> {
        let layout = self.settings.layout;
        let (child, data) = convert::encode(layout, instance, now_ms())?;
        let dir = self.dir(&instance.name);
        let path = format!("{dir}/{child}");
        let mut stale = Vec::new();
        if layout == Layout::Dubbo {
            let session = self.client().await?.session_id().0;
            let existing = self.nodes_of(&instance.name, &instance.id).await?;
            if existing.len() == 1 && existing[0].2 == session && existing[0].1 == *instance {
                return Ok(());
            }
            // Deleted once the new node is there: watchers see one Update, never a gap.
            stale = existing.into_iter().map(|(c, _, _)| c).collect();
        }
        self.create(&dir, &path, &data).await?;
        for c in stale.iter().filter(|c| **c != child) {
            self.delete(&format!("{dir}/{c}")).await?;
        }
        Ok(())
    }

    /// Creates the ephemeral node `path` in `dir` holding `data`, or takes it over.
    async fn create(&self, dir: &str, path: &str, data: &[u8]) -> Result<()> {
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&self.acls));
        // A few rounds: the parent may be reaped (an empty container) or a node taken over
        // between two calls.
        for _ in 0..5 {
            let created = self
                .try_call("create", path, |c| {
                    let (p, d, o) = (path, data, &ephemeral);
                    async move { c.create(p, d, o).await.map(|_| ()) }
                })
                .await;
            match created {
                Ok(()) => return Ok(()),
                Err(Failure::Zk(zk::Error::NoNode)) => self.mkdir(dir).await?,
                Err(Failure::Zk(zk::Error::NodeExists)) => {
                    let session = self.client().await?.session_id().0;
                    match self.data(path).await? {
                        Some((_, stat)) if stat.ephemeral_owner == session => {
                            let (p, d) = (path, data);
                            return self
                                .call("set", path, |c| async move {
                                    c.set_data(p, d, None).await.map(|_| ())
                                })
                                .await;
                        }
                        // Another session's node of this id: take it over, as Curator does
                        // ("must delete then re-create so that watchers fire").
                        Some(_) => self.delete(path).await?,
                        None => {}
                    }
                }
                Err(f) => return Err(self.error("create", path, f)),
            }
        }
        Err(Error::Unavailable {
            backend: super::BACKEND.into(),
            message: format!("create `{}`: the node kept changing", path.escape_debug()),
        })
    }

    /// Creates `dir` and its parents: containers in the Curator layout (as Curator's
    /// `creatingParentContainersIfNeeded`), persistent nodes in Dubbo's.
    async fn mkdir(&self, dir: &str) -> Result<()> {
        let mode = match self.settings.layout {
            Layout::Curator => zk::CreateMode::Container,
            Layout::Dubbo => zk::CreateMode::Persistent,
        };
        let options = mode.with_acls(zk::Acls::new(&self.acls));
        self.call("mkdir", dir, |c| {
            let o = &options;
            async move { c.mkdir(dir, o).await }
        })
        .await
    }

    /// Dubbo layout: deletes the nodes of `instance` and remembers it as withdrawn.
    pub(super) async fn withdraw(&self, instance: &Instance) -> Result<()> {
        crate::instance::validate_name("instance id", &instance.id)?;
        convert::validate_node_name("service name", &instance.name)?;
        self.set_withdrawn(instance, true);
        let dir = self.dir(&instance.name);
        for (child, _, _) in self.nodes_of(&instance.name, &instance.id).await? {
            self.delete(&format!("{dir}/{child}")).await?;
        }
        Ok(())
    }

    pub(super) fn set_withdrawn(&self, instance: &Instance, withdrawn: bool) {
        if let Ok(mut w) = self.withdrawn.lock() {
            let key = (instance.name.clone(), instance.id.clone());
            if withdrawn {
                w.insert(key);
            } else {
                w.remove(&key);
            }
        }
    }

    pub(super) fn is_withdrawn(&self, instance: &Instance) -> bool {
        self.withdrawn
            .lock()
            .is_ok_and(|w| w.contains(&(instance.name.clone(), instance.id.clone())))
    }

    /// The services under the root with at least one node.
    pub(super) async fn services(&self) -> Result<Vec<String>> {
        let names: Vec<String> = self
            .children(&self.settings.root)
            .await?
            .into_iter()
            .filter(|n| validate_name("service name", n).is_ok())
            .collect();
        let stats = names.iter().map(|n| async move {
            let dir = self.dir(n);
            self.stat(&dir).await
        });
        let mut out = Vec::new();
        for (name, stat) in names
            .iter()
            .zip(futures_util::future::join_all(stats).await)
        {
            if stat?.is_some_and(|s| s.num_children > 0) {
                out.push(name.clone());
            }
        }
        out.sort();
        Ok(out)
    }
}
