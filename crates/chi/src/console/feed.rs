//! What a process knows beyond its registries: the [`Feed`] each command hands its console.
//!
//! The registries say which instances exist ([`super::collect`]); only the process knows its own
//! probes and their errors, the picks it made, whom it ejected, where its registrations stand and
//! which xDS clients it serves. Each command implements the parts it has; the others default to
//! nothing. A new source (a backend's registration events, the library's pick hook, a token's
//! scope) is one more method here with a default, and one more field in [`super::model`].

use std::collections::HashMap;
use std::sync::Arc;

use chi_discovery::balance::Strategy;
use chi_discovery::{HealthStatus, ServiceManager};

use super::Merged;
use super::model::{Balancing, Registration, Standing};
use crate::xds::clients::ClientStatus;

/// This process's own verdict on an instance, over what the registry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) health: HealthStatus,
    /// Why (a probe's error, an ejection); `None` when there is nothing to say.
    pub(crate) why: Option<String>,
}

/// Verdicts by (service, instance id).
pub(crate) type Verdicts = HashMap<(String, String), Verdict>;

/// What a process tells its console; see the module docs.
pub(crate) trait Feed: Send + Sync + 'static {
    /// The instances this process judges itself (its probes, its ejections).
    fn verdicts(&self) -> Verdicts {
        Verdicts::new()
    }

    /// The balancing it does over `services` (what the registries hold now).
    fn balancing(&self, services: &Merged) -> Balancing {
        let _ = services;
        Balancing::default()
    }

    /// Its own registrations and where each backend holds them.
    fn registrations(&self) -> Vec<Registration> {
        Vec::new()
    }

    /// The xDS clients it serves (`chi xds` only).
    fn xds_clients(&self) -> Option<Vec<ClientStatus>> {
        None
    }
}

/// `chi agent`: its registration (the manager's per-backend status and the probe run here),
/// and no picks.
pub(crate) struct AgentFeed {
    pub(crate) manager: Arc<ServiceManager>,
    pub(crate) strategy: Strategy,
}

impl Feed for AgentFeed {
    fn verdicts(&self) -> Verdicts {
        self.manager
            .status()
            .into_iter()
            .filter(|s| s.probed_here)
            .map(|s| {
                let why = s
                    .probe
                    .as_ref()
                    .and_then(|p| p.last_error.as_ref())
                    .map(|e| format!("probe here: {e}"));
                let key = (s.instance.name, s.instance.id);
                (
                    key,
                    Verdict {
                        health: s.health,
                        why,
                    },
                )
            })
            .collect()
    }

    fn balancing(&self, _: &Merged) -> Balancing {
        Balancing {
            note: Some(format!(
                "chi agent serves the registry and makes no picks itself; the processes that \
                 pick (chi proxy, services built with chi) count theirs on their own consoles. \
                 Configured strategy: {}.",
                self.strategy.as_str()
            )),
            services: Vec::new(),
        }
    }

    fn registrations(&self) -> Vec<Registration> {
        self.manager
            .status()
            .into_iter()
            .map(|s| Registration {
                service: s.instance.name.clone(),
                id: s.instance.id.clone(),
                health: s.health.as_str(),
                probe_error: s
                    .probe
                    .as_ref()
                    .and_then(|p| p.last_error.as_ref())
                    .map(ToString::to_string),
                backends: s
                    .backends
                    .into_iter()
                    .map(|b| Standing {
                        up: b.is_up(),
                        backend: b.backend,
                        registered: b.registered,
                        failures: b.failures,
                        errors: b.errors,
                        last_error: b.last_error,
                        reregistrations: b.reregistrations,
                    })
                    .collect(),
            })
            .collect()
    }
}
