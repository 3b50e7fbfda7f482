//! The console's status model: what one process sees, as plain data. `GET /ui/api/state`
//! serves it as JSON, the page is rendered from it ([`super::render`]), and every source fills
//! its own part: the registries ([`super::collect`]), the process's [`Feed`](super::Feed)
//! (its own probes, picks, ejections, registrations, xDS clients).
//!
//! Times are Unix milliseconds. Fields are added, never renamed: a field a newer source fills
//! (a backend's registration state, a token's scope) is a new field here and a new column there.

use serde::Serialize;

use crate::xds::clients::ClientStatus;

/// Everything the console shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub(crate) process: Process,
    /// Every service the registries list, by name.
    pub(crate) services: Vec<ServiceRow>,
    /// One row per registry behind the process (a multi-registry's members one by one).
    pub(crate) registries: Vec<RegistryRow>,
    /// The process's own registrations (`chi agent`) and where each backend holds them.
    pub(crate) registrations: Vec<Registration>,
    pub(crate) balancing: Balancing,
    /// `chi xds`: the connected clients; `None` for the other commands.
    pub(crate) xds: Option<Vec<ClientStatus>>,
    /// When this status was taken.
    pub(crate) at: u64,
}

/// The process itself.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Process {
    /// `agent`, `proxy` or `xds`.
    pub(crate) command: &'static str,
    pub(crate) version: &'static str,
    /// Whether the console accepts writes, and how to change that.
    pub(crate) writes: Writes,
}

/// The console's write actions (deregister an instance).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Writes {
    pub(crate) allowed: bool,
    /// Why not, or who may.
    pub(crate) why: String,
}

/// One service and its instances.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceRow {
    pub(crate) name: String,
    pub(crate) instances: Vec<InstanceRow>,
}

impl ServiceRow {
    /// Instances not known to be unhealthy (what `chi discover --healthy` lists).
    pub(crate) fn usable(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.health != "unhealthy")
            .count()
    }
}

/// One instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InstanceRow {
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) port: u16,
    /// `healthy`, `unhealthy` or `unknown`: this process's verdict where it has one, else the
    /// registry's.
    pub(crate) health: &'static str,
    /// Why: the last probe's error, an ejection, or who reported the health.
    pub(crate) why: Option<String>,
    pub(crate) version: String,
    pub(crate) region: Option<String>,
    pub(crate) zone: Option<String>,
    pub(crate) weight: u32,
    /// The registries that list it (the first one's copy is shown, as a multi-registry reads).
    pub(crate) origins: Vec<String>,
}

/// How a registry behind the process is doing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegistryRow {
    /// `memory`, `consul`, `etcd`, `nacos`, `chi`...
    pub(crate) backend: String,
    pub(crate) state: RegistryState,
    /// Since when it is in that state (as far as this console has watched).
    pub(crate) since: u64,
    pub(crate) last_error: Option<Stamped>,
    /// Services it lists.
    pub(crate) services: usize,
}

/// A registry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RegistryState {
    /// Lists its services and every watch works.
    Connected,
    /// Answers, but a watch or a registration on it fails.
    Degraded,
    /// Does not answer.
    Down,
}

impl RegistryState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RegistryState::Connected => "connected",
            RegistryState::Degraded => "degraded",
            RegistryState::Down => "down",
        }
    }
}

/// A message and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Stamped {
    pub(crate) message: String,
    pub(crate) at: u64,
}

/// One of the process's own registrations.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Registration {
    pub(crate) service: String,
    pub(crate) id: String,
    pub(crate) health: &'static str,
    /// The last probe's error, when chi probes it here.
    pub(crate) probe_error: Option<String>,
    pub(crate) backends: Vec<Standing>,
}

/// Where one registration stands on one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Standing {
    pub(crate) backend: String,
    pub(crate) registered: bool,
    /// It holds the registration and its last call worked.
    pub(crate) up: bool,
    /// Failed calls in a row.
    pub(crate) failures: u32,
    /// Failed registration and keep-alive calls since the registration.
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) reregistrations: u64,
}

/// The balancing the process does.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Balancing {
    /// Said when the process makes no picks of its own (the agent, `chi xds`).
    pub(crate) note: Option<String>,
    pub(crate) services: Vec<ServiceBalance>,
}

/// One service's balancing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceBalance {
    pub(crate) service: String,
    pub(crate) strategy: String,
    /// The span the picks are counted over, in seconds.
    pub(crate) window: u64,
    /// Picks per instance over the window, by id.
    pub(crate) picks: Vec<Share>,
    /// Instances ejected by outlier detection now.
    pub(crate) ejections: Vec<Ejection>,
    pub(crate) breaker: Option<BreakerRow>,
    /// Instances ramping up under slow start now.
    pub(crate) ramps: Vec<RampRow>,
}

/// Picks of one instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Share {
    pub(crate) id: String,
    pub(crate) picks: u64,
}

/// An ejected instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ejection {
    pub(crate) id: String,
    /// Milliseconds until it is back.
    pub(crate) remaining_ms: u64,
    /// How many times in a row it was ejected (the ejection time grows with it).
    pub(crate) times: u32,
}

/// The per-instance circuit breaker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BreakerRow {
    pub(crate) max_requests: u32,
    /// Requests refused since the start because every instance they could go to was full.
    pub(crate) refusals: u64,
    /// Requests in flight by instance (the busy ones).
    pub(crate) in_flight: Vec<(String, u32)>,
}

/// An instance ramping up.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RampRow {
    pub(crate) id: String,
    /// Its share of its full weight now, in percent.
    pub(crate) percent: u32,
    pub(crate) remaining_ms: u64,
}
