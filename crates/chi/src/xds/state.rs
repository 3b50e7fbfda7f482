//! What the ADS streams share and what each one remembers.
//!
//! [`Hub`] follows every service some stream asked for with **one** registry watch (chi's
//! [`DiscoveryClient::watch`], which reconnects by itself and resyncs with a `Reset`) and
//! publishes the service's instances on a `tokio::sync::watch` channel that every interested
//! stream reads. The watch ends when the last stream lets go of the service. A watch error never
//! changes the published list: clients keep the last endpoints they had (stale on error). After
//! an error, the resync's removals wait for the restart grace ([`super::grace`]).
//!
//! [`TypeState`] is one stream's bookkeeping for one resource type, as the xDS protocol wants it
//! (envoyproxy/envoy `api/xds_protocol.rst`, "ACK/NACK and resource type instance version"):
//! the names asked for, the version and nonce of the last response, the last version the client
//! accepted, and what the last response held, so a push happens only on change.

use crate::output::human;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chi_discovery::routing::serves_version;
use chi_discovery::{DiscoveryClient, Instance, Registry};

use envoy_types::pb::google::protobuf::Any;

use super::grace::Served;
use super::resources::{ClientPlace, Kind, versions_of};
use crate::sync;
use tokio::sync::watch;

/// How often the service catalogue is read for wildcard (all-services) subscriptions.
const CATALOG_PERIOD: Duration = Duration::from_secs(5);
/// How often the registry is probed for outages a watch may not see (with a restart grace).
const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// A probe that takes longer counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One service as the streams see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceView {
    /// `None` until the service has had an instance: a name nobody registered yet is not
    /// served (its resources "do not exist"), and is pushed once it appears.
    pub(crate) instances: Option<Arc<Vec<Instance>>>,
    /// The registry answered at least once: `instances: None` then means "does not exist"
    /// rather than "not read yet" (incremental xDS tells a client a resource is gone only then).
    pub(crate) known: bool,
    /// Changes with every change of `instances`; drawn from the hub's counter, so a service
    /// followed again after a pause never repeats a revision of its earlier watch (encoded
    /// resources are cached by revision).
    pub(crate) revision: u64,
    /// Each version some instance has (its `version` field) -> a fingerprint of the instances
    /// serving it, so a per-version cluster's endpoints are pushed only when they change.
    pub(crate) by_version: Arc<BTreeMap<String, u64>>,
}

/// The services followed for the streams of one server.
pub(crate) struct Hub {
    client: DiscoveryClient,
    registry: Arc<dyn Registry>,
    services: Mutex<HashMap<String, watch::Sender<ServiceView>>>,
    /// `None` until the registry listed its services once.
    catalog: watch::Sender<Catalog>,
    catalog_started: AtomicBool,
    /// Revisions of every service view (see [`ServiceView::revision`]).
    revisions: AtomicU64,
    /// How long removals wait after a registry failure (zero: not at all).
    grace: Duration,
    /// Counts the failed probes of the registry; every service's grace starts over on one. A
    /// short outage (a registry restarted between two checks of a watch) can pass unseen by
    /// the watches, whose reconnect then delivers a partial list as ordinary removals.
    outages: watch::Sender<u64>,
    probe_started: AtomicBool,
}

/// Every service name the registry lists; `None` until it answered once, so a wildcard
/// subscription is not told "no services" by a server that has not asked yet.
pub(crate) type Catalog = Option<Arc<BTreeSet<String>>>;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("registry", &self.registry.backend())
            .field("services", &self.lock().len())
            .finish()
    }
}

impl Hub {
    /// Services of `registry`, read through `client`; `grace` is the restart grace.
    pub(crate) fn new(
        client: DiscoveryClient,
        registry: Arc<dyn Registry>,
        grace: Duration,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            client,
            registry,
            services: Mutex::new(HashMap::new()),
            catalog: watch::Sender::new(None),
            catalog_started: AtomicBool::new(false),
            revisions: AtomicU64::new(0),
            grace,
            outages: watch::Sender::new(0),
            probe_started: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<ServiceView>>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation on it is a single insert or remove).
        sync::lock(&self.services)
    }

    /// The channel of `service`, starting its registry watch if no stream follows it yet.
    /// `service` must be a valid chi name.
    pub(crate) fn subscribe(self: &Arc<Self>, service: &str) -> watch::Receiver<ServiceView> {
        let mut services = self.lock();
        if let Some(tx) = services.get(service) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(ServiceView::default());
        services.insert(service.to_owned(), tx.clone());
        drop(services);
        if !self.grace.is_zero() && !self.probe_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(self)));
        }
        tokio::spawn(follow(self.clone(), service.to_owned(), tx));
        rx
    }

    /// True when some stream follows `service` and it has instances.
    pub(crate) fn has_instances(&self, service: &str) -> bool {
        self.lock()
            .get(service)
            .is_some_and(|tx| tx.borrow().instances.is_some())
    }

    /// The catalogue, waiting at most `wait` for the registry's first list.
    pub(crate) async fn catalog_within(self: &Arc<Self>, wait: Duration) -> Catalog {
        let mut rx = self.catalog();
        if rx.borrow().is_none() {
            let _ = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        }
        rx.borrow().clone()
    }

    /// Every service name the registry lists, refreshed every few seconds once asked for.
    pub(crate) fn catalog(self: &Arc<Self>) -> watch::Receiver<Catalog> {
        if !self.catalog_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(poll_catalog(Arc::downgrade(self)));
        }
        self.catalog.subscribe()
    }
}

/// Follows `service` until no stream wants it: applies the registry's changes and publishes
/// the list when it changed. Errors are logged and leave the list as it was; the resync after one
/// holds its removals for the restart grace, and they go out when it ends.
async fn follow(hub: Arc<Hub>, service: String, tx: watch::Sender<ServiceView>) {
    let mut watcher = match hub.client.watch(&service).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(%service, "cannot watch: {e}");
            hub.lock().remove(&service);
            return;
        }
    };
    let mut served = Served::new(hub.grace);
    let mut outages = hub.outages.subscribe();
    loop {
        let deadline = served.deadline();
        tokio::select! {
            item = watcher.next() => match item {
                None => {
                    tracing::warn!(%service, "the registry watch ended; keeping the last endpoints");
                    hub.lock().remove(&service);
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(%service, "registry watch error, serving the last endpoints: {e}");
                    served.failed();
                }
                Some(Ok(change)) => {
                    let held = served.apply(change, tokio::time::Instant::now());
                    if held > 0 {
                        tracing::info!(%service, held, grace = ?hub.grace, "resynced after a registry error; instances not back yet are kept for the restart grace");
                    }
                    publish(&tx, served.list(), &hub.revisions);
                }
            },
            Ok(()) = outages.changed() => served.failed(),
            () = sleep_until(deadline) => {
                if served.expire(tokio::time::Instant::now()) {
                    tracing::info!(%service, "restart grace over: removing the instances that did not come back");
                    publish(&tx, served.list(), &hub.revisions);
                }
            }
            () = tx.closed() => {
                let mut services = hub.lock();
                if tx.receiver_count() == 0 {
                    services.remove(&service);
                    tracing::debug!(%service, "no stream follows the service any more");
                    return;
                }
            }
        }
    }
}

/// Publishes `list` (sorted by id) when it differs from what the channel holds. An empty list
/// is published only for a service that had instances (all of them left); a service never seen
/// stays without instances, but is marked `known` once the registry answered.
fn publish(tx: &watch::Sender<ServiceView>, list: Vec<Instance>, revisions: &AtomicU64) {
    tx.send_if_modified(|current| {
        let same = match &current.instances {
            Some(old) => **old == list,
            None => list.is_empty(),
        };
        if same {
            let first = !current.known;
            current.known = true;
            return first;
        }
        current.known = true;
        current.by_version = Arc::new(fingerprints(&list));
        current.instances = Some(Arc::new(list));
        current.revision = revisions.fetch_add(1, Ordering::Relaxed) + 1;
        true
    });
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Per version (of the `version` fields), a hash of what the endpoints of the instances serving
/// it depend on.
fn fingerprints(list: &[Instance]) -> BTreeMap<String, u64> {
    versions_of(list)
        .into_iter()
        .map(|v| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for i in list.iter().filter(|i| serves_version(i, v)) {
                (&i.id, &i.address, i.port, i.effective_weight()).hash(&mut h);
                (i.health.as_str(), &i.meta, &i.version, &i.tags).hash(&mut h);
            }
            (v.to_owned(), h.finish())
        })
        .collect()
}

/// Lists the registry's services every [`PROBE_PERIOD`] while some service is followed, and
/// counts a failure (or an answer slower than [`PROBE_TIMEOUT`]) as an outage.
async fn probe(hub: std::sync::Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        if !h.lock().is_empty() {
            let failed = match tokio::time::timeout(PROBE_TIMEOUT, h.registry.services()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {}", human(PROBE_TIMEOUT))),
            };
            if let Some(e) = failed {
                tracing::debug!("registry probe failed, removals wait for the restart grace: {e}");
                h.outages.send_modify(|n| *n += 1);
            }
        }
        drop(h);
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

/// Reads the registry's service names every [`CATALOG_PERIOD`] while the hub lives; an error
/// keeps the last list.
async fn poll_catalog(hub: std::sync::Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        match h.registry.services().await {
            Ok(names) => {
                let names: BTreeSet<String> = names.into_iter().collect();
                h.catalog.send_if_modified(|current| {
                    if current.as_deref() == Some(&names) {
                        return false;
                    }
                    *current = Some(Arc::new(names));
                    true
                });
            }
            Err(e) => tracing::warn!("cannot list the services, keeping the last list: {e}"),
        }
        drop(h);
        tokio::time::sleep(CATALOG_PERIOD).await;
    }
}

/// Resources encoded once and shared by every stream that sends the same content: a change to a
/// service followed by a thousand streams is encoded once, not a thousand times.
pub(crate) struct Encoded {
    /// The encoding depends on the client's locality (geo priorities).
    by_place: bool,
    map: Mutex<HashMap<EncodedKey, (Any, u64)>>,
}

/// Kind, resource name, revision, and the client's place when it matters.
type EncodedKey = (Kind, String, u64, Option<ClientPlace>);

/// Entries kept before the cache starts over (old revisions are never asked for again).
const ENCODED_MAX: usize = 8192;

impl Encoded {
    pub(crate) fn new(by_place: bool) -> Encoded {
        Encoded {
            by_place,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The resource `kind` `name` at `revision` for a client at `place`, built by `build` the
    /// first time, with its [`content_hash`] (incremental xDS's per-resource version).
    pub(crate) fn get(
        &self,
        kind: Kind,
        name: &str,
        revision: u64,
        place: &ClientPlace,
        build: impl FnOnce() -> Any,
    ) -> (Any, u64) {
        let place = (self.by_place && kind == Kind::Endpoints).then(|| place.clone());
        let key = (kind, name.to_owned(), revision, place);
        let mut map = sync::lock(&self.map);
        if let Some(built) = map.get(&key) {
            return built.clone();
        }
        drop(map);
        let any = build();
        let hash = content_hash(&any);
        let built = (any, hash);
        map = sync::lock(&self.map);
        if map.len() >= ENCODED_MAX {
            map.clear();
        }
        map.insert(key, built.clone());
        built
    }
}

/// FNV-1a (64 bits) of a packed resource: its type and its bytes. The same content gives the same
/// number in every process and every chi version built from the same resource shapes (unlike
/// std's `DefaultHasher`, whose algorithm may change), so a client reconnecting to a restarted
/// server with `initial_resource_versions` is not sent what it already has. prost encodes the
/// fields in order, and these resources hold no protobuf maps, so equal resources encode alike.
pub(crate) fn content_hash(any: &Any) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    any.type_url
        .bytes()
        .chain([0])
        .chain(any.value.iter().copied())
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("by_place", &self.by_place)
            .finish()
    }
}

/// One stream's state for one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// A request of this type came (the client wants this type at all).
    pub(crate) subscribed: bool,
    /// Every service (LDS, CDS); set by a first request without names, or by `*`.
    pub(crate) wildcard: bool,
    /// The names asked for.
    pub(crate) names: BTreeSet<String>,
    /// Version of the last response of this type (drawn from the server's counter).
    pub(crate) version: u64,
    /// Nonce of the last response; a request echoing another one is stale.
    pub(crate) nonce: String,
    /// The last version the client accepted.
    pub(crate) accepted: Option<String>,
    /// The last response: name -> revision of what was sent; `None` before any response.
    pub(crate) sent: Option<BTreeMap<String, u64>>,
}
