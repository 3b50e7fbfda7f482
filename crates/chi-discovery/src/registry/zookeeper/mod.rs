//! ZooKeeper registry adapter (feature `zookeeper`; [`ZookeeperConfig`] is there in every build),
//! on the async [`zookeeper-client`](https://docs.rs/zookeeper-client) crate, in the two layouts
//! Java shops use:
//!
//! - **Curator** (default; Curator's service discovery recipe and Spring Cloud Zookeeper): an
//!   ephemeral node `ROOT/NAME/ID` (root `/services`) holding Curator's `ServiceInstance` JSON
//!   ([`convert::curator`] has the JSON and where chi's fields go);
//! - **Dubbo**: providers under `ROOT/INTERFACE/providers/` (root `/dubbo`), one ephemeral node
//!   per provider named by its URL-encoded provider URL ([`convert::dubbo`]).
//!
//! chi reads what those clients write and writes what they read, in both layouts.
//!
//! # Liveness is the session
//!
//! Instances are ephemeral nodes of chi's ZooKeeper session, so a crashed process's instances
//! disappear one session timeout after its last contact, and a graceful stop removes them at once
//! (the session is closed when the last clone of the [`Zookeeper`] is dropped). The client
//! library pings within the session by itself; [`Registry::keep_alive`] checks that the node is
//! still there *and owned by the session in use*, and answers [`Liveness::Lost`] otherwise: after
//! the server expired the session (a partition longer than the timeout, a server that lost its
//! data) the registry opens a new session (`session`), and the
//! [`ServiceManager`](crate::ServiceManager) registers every instance again on it.
//!
//! Registering takes a node over, as Curator does: a node of the same id left by another session
//! (an earlier run of the same service whose session has not expired yet) is deleted and created
//! again. Parent nodes are created as Curator and Dubbo do: containers in the Curator layout
//! (the server removes them once empty), persistent nodes in the Dubbo layout.
//!
//! Health: in the Curator layout a keep-alive that reports another health rewrites the node
//! (`instance_status`, which Spring Cloud Zookeeper's balancer honours). Dubbo's URLs have no
//! place for it and Dubbo consumers call every listed provider, so there an unhealthy instance is
//! *withdrawn* (its node deleted) and written again once it is healthy.
//!
//! # Watches
//!
//! A watch lists the service's directory and follows it with one persistent recursive watch
//! (ZooKeeper 3.6+), or with one-shot child and data watches set again after every event when the
//! server does not implement persistent watches (3.5 and older) or the config asks for them
//! ([`WatchMode`]). A lost connection is an error item in the stream while consumers keep their
//! last list; once the session is back (or replaced) the watch lists again and sends a `Reset`
//! (events during a disconnection can be lost, ZOOKEEPER-4698, so it never trusts replays).
//!
//! # Credentials
//!
//! With a user and password chi authenticates with ZooKeeper's `digest` scheme, and the nodes it
//! creates get the ACL "all for this identity, read for anyone" (readers such as Curator and Dubbo
//! consumers need no credentials); without, nodes are open (`world:anyone`), as Curator and Dubbo
//! create them by default. The password is a [`Secret`](crate::Secret).
//!
//! # Layout
//!
//! `config` (the settings), `convert` (paths and nodes, `curator` and `dubbo`), `session` (the
//! session and the calls on it), `watch` (the watch task), and this module, the [`Registry`].

mod config;
#[cfg(feature = "zookeeper")]
pub mod convert;
#[cfg(feature = "zookeeper")]
mod nodes;
#[cfg(feature = "zookeeper")]
mod session;
#[cfg(feature = "zookeeper")]
mod watch;

pub(crate) use config::{At, from_url, identity};
pub use config::{
    DEFAULT_DUBBO_ROOT, DEFAULT_ROOT, DEFAULT_SERVER, ENV_PASSWORD, ENV_USERNAME, FIELD, Layout,
    RawZookeeper, WatchMode, ZookeeperConfig,
};

#[cfg(feature = "zookeeper")]
use {
    super::{Liveness, Registry, WatchStream},
    crate::error::Result,
    crate::instance::{HealthStatus, Instance},
    async_trait::async_trait,
    config::Settings,
    std::collections::HashSet,
    std::sync::Arc,
    std::sync::atomic::AtomicU64,
    std::time::Duration,
    zookeeper_client as zk,
};

#[cfg(feature = "zookeeper")]
const BACKEND: &str = "zookeeper";

/// The ZooKeeper registry. Cheap to clone; clones share the session.
#[derive(Clone)]
#[cfg(feature = "zookeeper")]
pub struct Zookeeper {
    inner: Arc<Inner>,
}

#[cfg(feature = "zookeeper")]
impl std::fmt::Debug for Zookeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("Zookeeper")
            .field("servers", &s.connect)
            .field("root", &s.root)
            .field("layout", &s.layout)
            .field("username", &s.username)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "zookeeper")]
struct Inner {
    settings: Settings,
    /// The current session's client (see `session`).
    session: tokio::sync::Mutex<Option<zk::Client>>,
    /// Sessions opened so far.
    sessions: AtomicU64,
    /// ACLs of the nodes chi creates.
    acls: Vec<zk::Acl>,
    /// Dubbo layout: `(service, id)` of the instances withdrawn while unhealthy.
    withdrawn: std::sync::Mutex<HashSet<(String, String)>>,
}

#[cfg(feature = "zookeeper")]
impl Zookeeper {
    /// Checks the config and opens a session. A server that cannot be reached now is no error:
    /// the session is opened on first use (an unreachable ensemble then shows up as
    /// [`Error::Unavailable`](crate::Error::Unavailable)), and the registry recovers on its own
    /// when the servers come back.
    pub async fn connect(config: ZookeeperConfig) -> Result<Zookeeper> {
        let settings = config.validated()?;
        let acls = if settings.username.is_some() {
            vec![
                zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
                zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
            ]
        } else {
            vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())]
        };
        let inner = Arc::new(Inner {
            settings,
            session: tokio::sync::Mutex::new(None),
            sessions: AtomicU64::new(0),
            acls,
            withdrawn: std::sync::Mutex::new(HashSet::new()),
        });
        if let Err(e) = inner.client().await {
            tracing::warn!(error = %e, "zookeeper is not reachable yet; the session opens on first use");
        }
        Ok(Zookeeper { inner })
    }

    /// The normalised root (`/services` by default in the Curator layout, `/dubbo` in Dubbo's).
    pub fn root(&self) -> &str {
        &self.inner.settings.root
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.inner.settings.layout
    }

    /// The node holding the instances of `service`.
    pub fn service_dir(&self, service: &str) -> String {
        self.inner.dir(service)
    }

    /// The id of the session in use (`None` before one is open), for tools and tests.
    pub async fn session_id(&self) -> Option<i64> {
        let slot = self.inner.session.lock().await;
        slot.as_ref()
            .filter(|c| !c.state().is_terminated())
            .map(|c| c.session_id().0)
    }

    /// How many sessions this registry has opened (a new one after each expiry).
    pub fn sessions_opened(&self) -> u64 {
        self.inner
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
#[cfg(feature = "zookeeper")]
impl Registry for Zookeeper {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        let inner = &self.inner;
        match inner.settings.layout {
            Layout::Curator => inner.put(instance).await,
            Layout::Dubbo if instance.health == HealthStatus::Unhealthy => {
                inner.withdraw(instance).await
            }
            Layout::Dubbo => {
                inner.put(instance).await?;
                inner.set_withdrawn(instance, false);
                Ok(())
            }
        }
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        convert::validate_node_name("service name", service)?;
        crate::instance::validate_name("instance id", id)?;
        let inner = &self.inner;
        if let Ok(mut w) = inner.withdrawn.lock() {
            w.remove(&(service.to_owned(), id.to_owned()));
        }
        for (child, _, _) in inner.nodes_of(service, id).await? {
            inner
                .delete(&format!("{}/{child}", inner.dir(service)))
                .await?;
        }
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let inner = &self.inner;
        let mut wanted = instance.clone();
        wanted.health = health;
        if inner.settings.layout == Layout::Dubbo {
            if health == HealthStatus::Unhealthy {
                inner.withdraw(&wanted).await?;
                return Ok(Liveness::Alive);
            }
            if inner.is_withdrawn(&wanted) {
                inner.put(&wanted).await?;
                inner.set_withdrawn(&wanted, false);
                return Ok(Liveness::Alive);
            }
        }
        let session = inner.client().await?.session_id().0;
        let ours = inner.nodes_of(&instance.name, &instance.id).await?;
        let Some((_, found, _)) = ours.into_iter().find(|(_, _, owner)| *owner == session) else {
            // Gone, or written by another session (ours expired): register it again.
            return Ok(Liveness::Lost);
        };
        if found != wanted {
            inner.put(&wanted).await?;
        }
        Ok(Liveness::Alive)
    }

    fn keep_alive_interval(&self) -> Duration {
        (self.inner.settings.session_timeout / 3)
            .clamp(Duration::from_millis(300), Duration::from_secs(5))
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        convert::validate_node_name("service name", service)?;
        let nodes = self.inner.list(service).await?;
        Ok(nodes::by_id(nodes.values()))
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.inner.services().await
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        convert::validate_node_name("service name", service)?;
        watch::start(self.inner.clone(), service.to_owned()).await
    }
}

#[cfg(test)]
#[cfg(feature = "zookeeper")]
mod tests;
