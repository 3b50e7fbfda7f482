//! etcd v3 registry adapter (feature `etcd`).
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
//! [`validate_name`] (no `/`, no `..`, no control characters), so a name can never reach a key
//! outside its own service's directory, and `{prefix}/{service}/` (with the trailing slash) never
//! matches a service whose name merely starts with the same letters.
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
//! password is a [`Secret`]: it is redacted in `Debug`, and any text coming back from etcd is
//! scrubbed of it before it reaches an error or a log line.

mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, DeleteOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions,
};

use super::{Liveness, Registry, WatchStream};
use crate::error::{Error, Result};
use crate::instance::{HealthStatus, Instance, validate_name};
use crate::secret::Secret;

const BACKEND: &str = "etcd";
/// YAML path of the etcd block, for config errors.
const FIELD: &str = "service_discovery.registries.etcd";

/// Environment variable read by [`EtcdConfig::with_env_credentials`] for the user name.
pub const ENV_USERNAME: &str = "CHI_ETCD_USERNAME";
/// Environment variable read by [`EtcdConfig::with_env_credentials`] for the password.
pub const ENV_PASSWORD: &str = "CHI_ETCD_PASSWORD";

/// How to reach etcd and how to lay out the keys.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Client URLs of the cluster members (`127.0.0.1:2379`, `http://10.0.0.1:2379`,
    /// `https://...`). Requests go to one member and move to the next when it is unreachable or
    /// has no leader.
    pub endpoints: Vec<String>,
    /// User name when etcd has auth enabled.
    pub username: Option<String>,
    /// Password of `username` (never printed).
    pub password: Option<Secret>,
    /// Key prefix of the registry; instances live at `{prefix}/{service}/{id}`.
    pub prefix: String,
    /// TTL of the session lease: how long after its last keep-alive a crashed registrant
    /// disappears. Whole seconds (rounded up); etcd raises very small TTLs to its minimum (2 s
    /// with default settings).
    pub lease_ttl: Duration,
    /// Deadline for establishing a connection to a member.
    pub connect_timeout: Duration,
    /// Deadline of every request.
    pub request_timeout: Duration,
    /// TLS settings, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

impl Default for EtcdConfig {
    /// `127.0.0.1:2379`, no auth, prefix `/chi/services`, lease TTL 10 s, timeouts 5 s.
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            username: None,
            password: None,
            prefix: "/chi/services".into(),
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// TLS files for `https://` endpoints (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate that signed the members' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub key: Option<PathBuf>,
    /// Name to verify the members' certificates against (default: the endpoint's host).
    pub domain: Option<String>,
}

impl EtcdConfig {
    /// A config for `endpoints`, everything else default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Fills `username` and `password` from `CHI_ETCD_USERNAME` / `CHI_ETCD_PASSWORD` when the
    /// config leaves them empty, so the password need not sit in a file.
    pub fn with_env_credentials(mut self) -> Self {
        if self.username.as_deref().is_none_or(str::is_empty)
            && let Ok(user) = std::env::var(ENV_USERNAME)
        {
            self.username = Some(user);
        }
        if self.password.as_ref().is_none_or(Secret::is_empty)
            && let Ok(pass) = std::env::var(ENV_PASSWORD)
        {
            self.password = Some(Secret::new(pass));
        }
        self
    }

    /// Checks the values and normalises the prefix (leading `/`, no trailing `/`).
    fn validated(&self) -> Result<Settings> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config(
                format!("{FIELD}.endpoints"),
                "must list at least one endpoint, none of them empty",
            ));
        }
        let trimmed = self.prefix.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(Error::config(
                format!("{FIELD}.prefix"),
                "must not be empty or `/`: chi's keys would mix with everything else in etcd",
            ));
        }
        for part in trimmed.trim_start_matches('/').split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(Error::config(
                    format!("{FIELD}.prefix"),
                    format!("`{}` has an empty, `.` or `..` segment", self.prefix),
                ));
            }
        }
        let prefix = if trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Error::config(
                format!("{FIELD}.lease_ttl"),
                format!("must be at least 1s, got {:?}", self.lease_ttl),
            ));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!("{FIELD}.{name}"), "must be > 0"));
            }
        }
        let username = self.username.clone().filter(|u| !u.is_empty());
        let password = self.password.clone().filter(|p| !p.is_empty());
        if password.is_some() && username.is_none() {
            return Err(Error::config(
                format!("{FIELD}.username"),
                "a password is set but no username",
            ));
        }
        Ok(Settings {
            prefix,
            ttl_secs: self.lease_ttl.as_secs() as i64
                + i64::from(self.lease_ttl.subsec_nanos() > 0),
            lease_ttl: self.lease_ttl,
            request_timeout: self.request_timeout,
            username,
            password,
        })
    }
}

/// The validated settings an [`Etcd`] runs with.
#[derive(Debug)]
struct Settings {
    prefix: String,
    ttl_secs: i64,
    lease_ttl: Duration,
    request_timeout: Duration,
    username: Option<String>,
    password: Option<Secret>,
}

/// The etcd v3 registry. Cheap to clone; clones share the connection and the session lease.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

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

fn connect_error(settings: &Settings, e: etcd_client::Error) -> Error {
    let message = scrub(settings, &describe(&e));
    if let (Some(user), true) = (&settings.username, is_auth_error(&e)) {
        return Error::config(
            format!("{FIELD}.password"),
            format!(
                "etcd refused the login of user `{user}` ({message}); check the username and password"
            ),
        );
    }
    match e {
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
            Error::config(format!("{FIELD}.endpoints"), message)
        }
        _ => Error::Unavailable {
            backend: BACKEND.into(),
            message: format!("cannot connect: {message}"),
        },
    }
}

fn is_auth_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) || s.message().contains("authentication failed")
                || s.message().contains("invalid auth token")
                || s.message().contains("user name is empty")
        }
        _ => false,
    }
}

/// The short text of an etcd-client error (the gRPC message, not the whole `Status` dump).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            if s.message().is_empty() {
                format!("{:?}", s.code())
            } else {
                format!("{:?}: {}", s.code(), s.message())
            }
        }
        other => other.to_string(),
    }
}

/// Removes the password from text that came back from the server or the transport.
fn scrub(settings: &Settings, text: &str) -> String {
    match &settings.password {
        Some(p) if !p.is_empty() => text.replace(p.expose(), "***"),
        _ => text.to_owned(),
    }
}

/// True when etcd answered that the lease does not exist (expired, revoked, or lost in a
/// restart without its data).
fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// True for failures another member may not have: unreachable, or no leader.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// Why a call failed: etcd said no, or the deadline passed.
enum Failure {
    Etcd(etcd_client::Error),
    Timeout,
}

impl Inner {
    fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.settings.prefix)
    }

    /// `{prefix}/{service}/`: the directory of one service, with the slash that keeps `svc` from
    /// matching `svc2`.
    fn service_dir(&self, service: &str) -> String {
        format!("{}/{service}/", self.settings.prefix)
    }

    /// The client of member `i`, connecting it on first use.
    async fn client(&self, i: usize) -> std::result::Result<Client, etcd_client::Error> {
        self.clients[i]
            .get_or_try_init(|| {
                Client::connect([self.endpoints[i].as_str()], Some(self.options.clone()))
            })
            .await
            .cloned()
    }

    /// Runs one request under the request timeout, on the current member; when that member is
    /// unreachable, has no leader or does not answer in time, on the next one (every operation
    /// of this adapter is idempotent, so a retry is safe), going round the members twice at most.
    ///
    /// With several members, an attempt that is not the last gets half of what is left of the
    /// request timeout: a member cut off by a partition drops packets silently, and without this
    /// every request would wait for the whole timeout on it and never move on (the HTTP/2 ping
    /// notices the dead connection only after its own interval).
    async fn call<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut attempt = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % n;
            let last = n == 1 || attempt + 1 >= 2 * n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            let budget = if last { left } else { left / 2 };
            let result = tokio::time::timeout(budget, async {
                match self.client(i).await {
                    Ok(client) => op(client).await,
                    Err(e) => Err(e),
                }
            })
            .await;
            let failure = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retryable(&e) && !last => Failure::Etcd(e),
                Ok(Err(e)) => return Err(Failure::Etcd(e)),
                Err(_) if !last => Failure::Timeout,
                Err(_) => return Err(Failure::Timeout),
            };
            if let Failure::Etcd(e) = &failure {
                tracing::debug!(member = %self.endpoints[i], error = %describe(e), "etcd member failed; trying the next");
            } else {
                tracing::debug!(member = %self.endpoints[i], "etcd member did not answer in time; trying the next");
            }
            attempt += 1;
            // Move on, unless a concurrent call already did; tell the watches, whose streams on
            // the old member may be dead without knowing it.
            if self
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.moved.send_modify(|m| *m = m.wrapping_add(1));
            }
            if attempt % n == 0 {
                // A full round failed: give an election a moment.
                tokio::time::sleep(Duration::from_millis(100).min(left / 4)).await;
            }
        }
    }

    /// Turns a failure of `what` into chi's error, without the password.
    fn error(&self, what: &str, failure: Failure) -> Error {
        let e = match failure {
            Failure::Timeout => {
                return Error::Timeout {
                    backend: BACKEND.into(),
                    after: self.settings.request_timeout,
                };
            }
            Failure::Etcd(e) => e,
        };
        let message = scrub(&self.settings, &format!("{what}: {}", describe(&e)));
        if is_auth_error(&e) {
            let user = self.settings.username.as_deref().unwrap_or("(none)");
            return Error::registry(
                BACKEND,
                format!(
                    "{message} (user `{user}`; is auth enabled and are the credentials right?)"
                ),
            );
        }
        let unavailable = match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        };
        if unavailable {
            Error::Unavailable {
                backend: BACKEND.into(),
                message,
            }
        } else {
            Error::registry(BACKEND, message)
        }
    }

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

    /// Parses one stored value; `None` (with a warning) when it is not an instance of `service`
    /// with id `id`: foreign or corrupt data under the prefix is skipped, never trusted.
    fn parse(&self, service: &str, id: &str, value: &[u8]) -> Option<Instance> {
        match decode_value(service, id, value) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(service = %service.escape_debug(), id = %id.escape_debug(), error = %e, "etcd value is not a usable instance; skipped");
                None
            }
        }
    }

    /// The id of a key inside `dir`, if the key is directly in it.
    fn id_in<'k>(dir: &str, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key.strip_prefix(dir)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
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

/// Decodes the value stored at `{prefix}/{service}/{id}`, exactly as discovery and watches do:
/// the JSON of an [`Instance`] whose name and id match its key and which passes
/// [`Instance::validate`]. Anything else is an [`Error::Registry`] saying why (discovery skips
/// such values with a warning). Public for fuzzing and for tools that read raw keys.
pub fn decode_value(service: &str, id: &str, value: &[u8]) -> Result<Instance> {
    let bad = |m: String| Error::registry(BACKEND, format!("value of `{service}/{id}`: {m}"));
    let i: Instance =
        serde_json::from_slice(value).map_err(|e| bad(format!("not an instance: {e}")))?;
    if i.name != service || i.id != id {
        return Err(bad(format!(
            "holds instance `{}/{}`, which does not match its key",
            i.name.escape_debug(),
            i.id.escape_debug()
        )));
    }
    i.validate().map_err(|e| bad(e.to_string()))?;
    Ok(i)
}

#[async_trait]
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
        (self.inner.settings.lease_ttl / 3).max(Duration::from_millis(300))
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

/// TLS for `https://` endpoints: rustls with the configured CA (etcd clusters sign their
/// members with a private CA, so there is no fallback to system roots), and a client certificate
/// for `--client-cert-auth` clusters.
mod tls {
    use std::path::Path;

    use super::{EtcdTls, FIELD};
    use crate::error::{Error, Result};
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

    fn read(path: &Path, field: &str) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| {
            Error::config(
                format!("{FIELD}.tls.{field}"),
                format!("cannot read `{}`: {e}", path.display()),
            )
        })
    }

    pub(super) fn apply(options: ConnectOptions, tls: &EtcdTls) -> Result<ConnectOptions> {
        let Some(ca) = &tls.ca else {
            return Err(Error::config(
                format!("{FIELD}.tls.ca"),
                "the CA certificate that signed the etcd members is required",
            ));
        };
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "ca")?));
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config =
                    config.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::config(
                    format!("{FIELD}.tls"),
                    "`cert` and `key` go together: give both or neither",
                ));
            }
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(options.with_tls(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_prefix_normalisation() {
        let s = EtcdConfig::default().validated().expect("default is valid");
        assert_eq!(s.prefix, "/chi/services");
        assert_eq!(s.ttl_secs, 10);
        let s = EtcdConfig {
            prefix: "app/reg/".into(),
            lease_ttl: Duration::from_millis(2500),
            ..EtcdConfig::default()
        }
        .validated()
        .expect("valid");
        assert_eq!(s.prefix, "/app/reg");
        assert_eq!(s.ttl_secs, 3, "TTL rounds up to whole seconds");
    }

    #[test]
    fn config_rejects_bad_values() {
        for (cfg, field) in [
            (
                EtcdConfig {
                    prefix: "/".into(),
                    ..EtcdConfig::default()
                },
                "prefix",
            ),
            (
                EtcdConfig {
                    prefix: "/a/../b".into(),
                    ..EtcdConfig::default()
                },
                "prefix",
            ),
            (
                EtcdConfig {
                    endpoints: vec![],
                    ..EtcdConfig::default()
                },
                "endpoints",
            ),
            (
                EtcdConfig {
                    lease_ttl: Duration::from_millis(500),
                    ..EtcdConfig::default()
                },
                "lease_ttl",
            ),
            (
                EtcdConfig {
                    password: Some("pw".into()),
                    ..EtcdConfig::default()
                },
                "username",
            ),
        ] {
            let err = cfg.validated().expect_err("must be rejected");
            assert!(
                err.to_string()
                    .starts_with(&format!("service_discovery.registries.etcd.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let cfg = EtcdConfig {
            username: Some("root".into()),
            password: Some("hunter2".into()),
            ..EtcdConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let s = cfg.validated().expect("valid");
        assert_eq!(
            scrub(&s, "bad password hunter2 given"),
            "bad password *** given"
        );
    }

    #[test]
    fn ids_are_taken_only_from_direct_children() {
        assert_eq!(Inner::id_in("/p/s/", b"/p/s/a"), Some("a"));
        assert_eq!(Inner::id_in("/p/s/", b"/p/s/a/b"), None);
        assert_eq!(Inner::id_in("/p/s/", b"/p/s/"), None);
        assert_eq!(Inner::id_in("/p/s/", b"/p/s2/a"), None);
        assert_eq!(
            Inner::id_in("/p/s/", &[0x2f, 0x70, 0x2f, 0x73, 0x2f, 0xff]),
            None
        );
    }

    #[test]
    fn stored_values_decode_only_into_valid_instances_of_their_key() {
        let good = br#"{"id":"svc-1","name":"svc","address":"10.0.0.1","port":8080}"#;
        let i = decode_value("svc", "svc-1", good).expect("a valid value");
        assert_eq!((i.name.as_str(), i.port), ("svc", 8080));
        for (value, says) in [
            (&b"{"[..], "not an instance"),
            (
                br#"{"id":"svc-2","name":"svc","address":"a","port":1}"#,
                "does not match its key",
            ),
            (
                br#"{"id":"svc-1","name":"svc","address":" ","port":1}"#,
                "address",
            ),
            (
                br#"{"id":"svc-1","name":"svc","address":"a","port":0}"#,
                "port",
            ),
        ] {
            let e = decode_value("svc", "svc-1", value).expect_err("rejected");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
