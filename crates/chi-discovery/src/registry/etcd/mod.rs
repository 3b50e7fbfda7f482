//! etcd v3 registry adapter (feature `etcd`; [`EtcdConfig`] is there in every build).
//!
//! # Key layout
//!
//! Every instance is one key holding the JSON of its [`Instance`]:
//!
//! ```text
//! {prefix}/{service}/{id}  ->  {"id":"...","name":"...","address":"...","port":8080,...}
//! ```
//!
//! with `prefix` defaulting to `/chi/services`. Service names and ids go through
//! `instance::validate_name` (no `/`, no `..`, no control characters), so a name can never reach
//! a key outside its own service's directory, and `{prefix}/{service}/` (with the trailing slash)
//! never matches a service whose name merely starts with the same letters.
//!
//! # Leases
//!
//! etcd has no health checks of its own; liveness is a lease. One [`Etcd`] holds one *session
//! lease* (etcd's `concurrency.Session` idea) with [`EtcdConfig::lease_ttl`], granted on the first
//! registration and shared by every key this registry writes. A process that crashes stops
//! renewing it and etcd deletes all of its keys one TTL later; watchers see the `Remove`.
//!
//! - [`Registry::register`] is one `put` bound to the session lease (plus a `grant` when there is
//!   none yet, or when etcd says the lease is gone).
//! - [`Registry::keep_alive`] renews the lease (one keep-alive round trip) and, concurrently, reads
//!   the key. It answers [`Liveness::Lost`] when the lease is gone (expired, or etcd restarted
//!   without it) or the key is gone (deleted by hand), and the
//!   [`ServiceManager`](crate::ServiceManager) registers again. A changed health is written into
//!   the JSON value, so `healthy_only` filters of other clients see it.
//! - [`Registry::deregister`] deletes the key and revokes its lease once no other key uses it, so
//!   a graceful shutdown does not leave a lease ticking for nothing.
//!
//! # Watches
//!
//! A watch is a prefix `get` (the first [`Change::Reset`](crate::Change::Reset)) followed by a prefix watch that starts
//! at the `get`'s revision + 1: etcd's revisions are a total order, so no event can fall between
//! the two. The watch task remembers the last revision it saw; when the stream breaks (etcd
//! restarted, the member died, the network dropped) it reports the error in line and reopens the
//! watch from that revision, then sends a `Reset` of what it holds so consumers can drop their
//! "stale" mark. It starts over instead (a fresh `get`, a `Reset`, a watch from the new revision)
//! when etcd no longer has that history: a read at the revision is out of range (checked before
//! every reopen: compacted, or a future revision of a wiped store), etcd cancels the watch with a
//! compact revision, or the store's revision or raft term went back (etcd wiped and restarted).
//!
//! # Errors and secrets
//!
//! Every call runs under [`EtcdConfig::request_timeout`] ([`Error::Timeout`]); an unreachable
//! cluster is [`Error::Unavailable`], a failed login is [`Error::Config`] naming the user. The
//! password is a [`Secret`](crate::Secret): it is redacted in `Debug`, and any text coming back from etcd is
//! scrubbed of it before it reaches an error or a log line.

//!
//! # Layout
//!
//! As in every adapter: `config` (the settings and their checks), `convert` (the key layout and
//! stored values), `watch` (the watch task), and this module, the [`Registry`] with the session
//! lease; then the etcd-specific `client` (failover across members, error mapping) and `tls`.

#[cfg(feature = "etcd")]
mod client;
mod config;
#[cfg(feature = "etcd")]
mod convert;
#[cfg(feature = "etcd")]
mod tls;
#[cfg(feature = "etcd")]
mod watch;

#[cfg(feature = "etcd")]
use {
    super::{Liveness, Registry, WatchStream},
    crate::error::{Error, Result},
    crate::instance::{HealthStatus, Instance, validate_name},
    async_trait::async_trait,
    client::{Failure, connect_error, is_lease_gone, retryable},
    config::Settings,
    etcd_client::{
        Client, ConnectOptions, DeleteOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    },
    std::sync::Arc,
    std::sync::atomic::{AtomicUsize, Ordering},
    std::time::Duration,
};

pub use config::{
    DEFAULT_ENDPOINT, DEFAULT_PREFIX, ENV_PASSWORD, ENV_USERNAME, EtcdConfig, EtcdTls, FIELD,
};
#[cfg(feature = "etcd")]
pub use convert::decode_value;

#[cfg(feature = "etcd")]
const BACKEND: &str = "etcd";

/// The etcd v3 registry. Cheap to clone; clones share the connection and the session lease.
#[derive(Clone)]
#[cfg(feature = "etcd")]
pub struct Etcd {
    inner: Arc<Inner>,
}

#[cfg(feature = "etcd")]
impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.settings.prefix)
            .field("lease_ttl", &self.inner.settings.lease_ttl)
            .field("username", &self.inner.settings.username)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "etcd")]
struct Inner {
    /// One client per member, connected on first use. Requests go to one member at a time and
    /// move to the next when it is unreachable or has no leader (etcd's own client pins an
    /// endpoint the same way); a balanced channel would keep sending a share of the requests to
    /// a dead member.
    clients: Vec<tokio::sync::OnceCell<Client>>,
    /// The member requests go to now.
    current: AtomicUsize,
    /// Bumped each time requests move to another member: a watch stream on the old member may be
    /// dead without knowing it (a silent partition), so watches reopen on the new one.
    moved: tokio::sync::watch::Sender<u64>,
    endpoints: Vec<String>,
    /// Connect options, holding the credentials: never printed.
    options: ConnectOptions,
    settings: Settings,
    /// The session lease, granted lazily. An async mutex so that concurrent registrations after
    /// a loss grant one new lease, not one each.
    lease: tokio::sync::Mutex<Option<i64>>,
}

#[cfg(feature = "etcd")]
impl Etcd {
    /// Connects to the cluster.
    ///
    /// Without auth the connection is lazy: an unreachable cluster shows up as
    /// [`Error::Unavailable`] on the first call, and the registry recovers on its own when the
    /// cluster comes back. With auth, etcd-client logs in here, so a wrong password (or a cluster
    /// that is down) fails now, with an error that names the user and never the password.
    pub async fn connect(config: EtcdConfig) -> Result<Etcd> {
        let settings = config.validated()?;
        // HTTP/2 pings find a dead connection under an idle watch; etcd refuses pings more often
        // than every 5 s and pings without an open stream, hence the interval and `while_idle`.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_keep_alive_while_idle(false)
            // A member cut off from the quorum fails requests (and cancels watches) instead of
            // serving an old view, so the client moves to a member that has a leader.
            .with_require_leader(true);
        if let Some(user) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            // Simple tokens die with an etcd restart; refresh them instead of failing.
            options = options
                .with_user(user.clone(), password)
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            options = tls::apply(options, tls)?;
        }
        let endpoints = config.endpoints.clone();
        let clients: Vec<tokio::sync::OnceCell<Client>> = endpoints
            .iter()
            .map(|_| tokio::sync::OnceCell::new())
            .collect();
        let inner = Inner {
            clients,
            current: AtomicUsize::new(0),
            moved: tokio::sync::watch::Sender::new(0),
            endpoints,
            options,
            settings,
            lease: tokio::sync::Mutex::new(None),
        };
        // Without auth a connection is lazy, so this only checks the endpoints' syntax. With
        // auth it logs in: a wrong password fails here, a dead member is skipped (and connected
        // later, when a call gets to it), and only a cluster with no live member fails.
        let wait = config.connect_timeout + inner.settings.request_timeout;
        let mut last = None;
        for i in 0..inner.endpoints.len() {
            match tokio::time::timeout(wait, inner.client(i)).await {
                Ok(Ok(_)) => {
                    last = None;
                    if inner.settings.username.is_some() {
                        inner.current.store(i, Ordering::Relaxed);
                        break;
                    }
                }
                Ok(Err(e)) if retryable(&e) => last = Some(connect_error(&inner.settings, e)),
                Ok(Err(e)) => return Err(connect_error(&inner.settings, e)),
                Err(_) => {
                    last = Some(Error::Timeout {
                        backend: BACKEND.into(),
                        after: wait,
                    })
                }
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(Etcd {
                inner: Arc::new(inner),
            }),
        }
    }

    /// The normalised key prefix (`/chi/services` by default).
    pub fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    /// The key of one instance: `{prefix}/{service}/{id}`.
    pub fn key(&self, service: &str, id: &str) -> Result<String> {
        validate_name("service name", service)?;
        validate_name("instance id", id)?;
        Ok(self.inner.key(service, id))
    }

    /// The id of the current session lease, if one is granted (for tools and tests).
    pub async fn lease_id(&self) -> Option<i64> {
        *self.inner.lease.lock().await
    }
}

#[cfg(feature = "etcd")]
impl Inner {
    /// The session lease, granting one if there is none.
    async fn session_lease(&self) -> Result<i64> {
        let mut slot = self.lease.lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let ttl = self.settings.ttl_secs;
        let resp = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map_err(|f| self.error("lease grant", f))?;
        tracing::debug!(lease = resp.id(), ttl = resp.ttl(), "granted session lease");
        *slot = Some(resp.id());
        Ok(resp.id())
    }

    /// Forgets `lease` if it is still the session lease (it expired or was revoked).
    async fn forget_lease(&self, lease: i64) {
        let mut slot = self.lease.lock().await;
        if *slot == Some(lease) {
            *slot = None;
        }
    }

    async fn current_lease(&self) -> Option<i64> {
        *self.lease.lock().await
    }

    /// Writes `instance` bound to the session lease; grants a new lease once if etcd lost it.
    async fn put(&self, instance: &Instance) -> Result<()> {
        let key = self.key(&instance.name, &instance.id);
        let value = serde_json::to_vec(instance).map_err(|e| Error::registry(BACKEND, e))?;
        let mut retried = false;
        loop {
            let lease = self.session_lease().await?;
            let put = |mut c: Client| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            };
            match self.call(put).await {
                Ok(_) => return Ok(()),
                Err(Failure::Etcd(e)) if is_lease_gone(&e) && !retried => {
                    tracing::info!(lease, "session lease is gone; granting a new one");
                    self.forget_lease(lease).await;
                    retried = true;
                }
                Err(f) => return Err(self.error("put", f)),
            }
        }
    }

    /// The instances of `service`, the revision they are as of, and the raft term that answered.
    async fn list(&self, service: &str) -> Result<(Vec<Instance>, i64, u64)> {
        let dir = self.service_dir(service);
        let resp = self
            .call(|mut c| {
                let dir = dir.clone();
                async move { c.get(dir, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|f| self.error("get", f))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let term = resp.header().map(|h| h.raft_term()).unwrap_or(0);
        let list = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let id = Self::id_in(&dir, kv.key())?;
                self.parse(service, id, kv.value())
            })
            .collect();
        Ok((list, revision, term))
    }
}

#[async_trait]
#[cfg(feature = "etcd")]
impl Registry for Etcd {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        instance.validate()?;
        self.inner.put(instance).await
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let key = self.key(service, id)?;
        let inner = &self.inner;
        let resp = inner
            .call(|mut c| {
                let key = key.clone();
                async move {
                    c.delete(key, Some(DeleteOptions::new().with_prev_key()))
                        .await
                }
            })
            .await
            .map_err(|f| inner.error("delete", f))?;
        let Some(lease) = resp
            .prev_kvs()
            .first()
            .map(|kv| kv.lease())
            .filter(|l| *l != 0)
        else {
            return Ok(());
        };
        // Revoke the lease once nothing else is bound to it. Failing here is harmless: the key
        // is gone, and an unused lease expires on its own after one TTL. A registration racing
        // this revoke can lose its key with the lease; its next keep-alive answers `Lost` and the
        // manager writes it again.
        let ttl = inner
            .call(|mut c| async move {
                c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await;
        if let Ok(ttl) = ttl
            && ttl.ttl() > 0
            && ttl.keys().is_empty()
        {
            inner.forget_lease(lease).await;
            if let Err(f) = inner
                .call(|mut c| async move { c.lease_revoke(lease).await })
                .await
            {
                tracing::debug!(lease, error = %inner.error("lease revoke", f), "revoke failed; the lease will expire");
            }
        }
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let key = self.key(&instance.name, &instance.id)?;
        let inner = &self.inner;
        let Some(lease) = inner.current_lease().await else {
            // This registry holds no lease, so it holds no registration either.
            return Ok(Liveness::Lost);
        };
        let (renewed, current) = futures_util::future::join(
            inner.call(|mut c| async move { c.lease_keep_alive(lease).await }),
            inner.call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            }),
        )
        .await;
        match renewed {
            Ok(_) => {}
            Err(Failure::Etcd(e)) if is_lease_gone(&e) => {
                tracing::info!(lease, id = %instance.id, "session lease expired");
                inner.forget_lease(lease).await;
                return Ok(Liveness::Lost);
            }
            Err(f) => return Err(inner.error("lease keep-alive", f)),
        }
        let current = current.map_err(|f| inner.error("get", f))?;
        let Some(kv) = current.kvs().first() else {
            return Ok(Liveness::Lost);
        };
        if kv.lease() != lease {
            // Written by someone else (or under an old lease): ours is not what etcd holds.
            return Ok(Liveness::Lost);
        }
        let mut wanted = instance.clone();
        wanted.health = health;
        if inner
            .parse(&instance.name, &instance.id, kv.value())
            .as_ref()
            != Some(&wanted)
        {
            inner.put(&wanted).await?;
        }
        Ok(Liveness::Alive)
    }

    fn keep_alive_interval(&self) -> Duration {
        config::keep_alive_every(self.inner.settings.lease_ttl)
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_name("service name", service)?;
        Ok(self.inner.list(service).await?.0)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let inner = &self.inner;
        let root = format!("{}/", inner.settings.prefix);
        let resp = inner
            .call(|mut c| {
                let root = root.clone();
                async move {
                    c.get(root, Some(GetOptions::new().with_prefix().with_keys_only()))
                        .await
                }
            })
            .await
            .map_err(|f| inner.error("get", f))?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = std::str::from_utf8(kv.key()).ok()?.strip_prefix(&root)?;
                let (service, id) = rest.split_once('/')?;
                (validate_name("service name", service).is_ok() && !id.is_empty())
                    .then(|| service.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        validate_name("service name", service)?;
        watch::start(self.inner.clone(), service.to_owned()).await
    }
}

#[cfg(test)]
#[cfg(feature = "etcd")]
mod tests;
