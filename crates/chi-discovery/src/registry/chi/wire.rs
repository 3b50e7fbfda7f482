//! The JSON of a `chi agent`'s registry API: what the [`Agent`](super::Agent) client sends and
//! reads, and what the agent's admin port (in the `chi` binary) answers. Both ends use these
//! types, so the two cannot drift apart.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/services` | | names of the services with instances (JSON array of strings) |
//! | `GET /v1/services/{name}` | | its instances (JSON array of [`Instance`]) |
//! | `GET /v1/services/{name}/watch` | | its changes as they happen: [`Event`]s as JSON lines, a `reset` first, a `heartbeat` every [`HEARTBEAT`] while nothing changes |
//! | `PUT /v1/services/{name}/instances/{id}` | an [`Instance`] | 204 |
//! | `DELETE /v1/services/{name}/instances/{id}` | | 204 |
//! | `POST /v1/services/{name}/instances/{id}/keepalive` | [`KeepAlive`] | [`Alive`] |
//!
//! `{name}` and `{id}` are one percent-encoded path segment each, and must pass [`check_names`]
//! (the rule every registry applies, docs/DESIGN.md §9): the client refuses other names before it
//! sends anything, the agent answers 400 naming the field. A failed call is a status other than
//! 2xx with the reason as a plain-text body.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::instance::{HealthStatus, Instance, validate_name};

/// How often the agent writes a heartbeat line on a watch while nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Body of `POST /v1/services/{name}/instances/{id}/keepalive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// The instance to keep alive (its name and id match the path).
    pub instance: Instance,
    /// Its health, as the registrant's own check found it.
    pub health: HealthStatus,
}

/// Answer of the keep-alive call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// False when the registry no longer holds the registration: register it again.
    pub alive: bool,
}

/// One line of `GET /v1/services/{name}/watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// The whole list: the first line, and again after the agent's own watch recovered.
    Reset {
        /// Every instance of the service.
        instances: Vec<Instance>,
    },
    /// A new instance.
    Added {
        /// The instance.
        instance: Instance,
    },
    /// An instance left.
    Removed {
        /// The last known copy of it.
        instance: Instance,
    },
    /// An instance changed.
    Updated {
        /// The new copy.
        instance: Instance,
    },
    /// The agent's watch of its registry failed; a `Reset` follows once it recovers.
    Error {
        /// What failed.
        message: String,
    },
    /// Nothing happened; the connection is alive.
    Heartbeat,
}

/// Checks the service name and instance id of a path: the client before it sends, the agent
/// before it answers. The error names the field (`service name`, `instance id`).
pub fn check_names(service: &str, id: Option<&str>) -> Result<()> {
    validate_name("service name", service)?;
    id.map_or(Ok(()), |id| validate_name("instance id", id))
}
