//! `chi://host:port`: the registry of a running `chi agent`, through its admin API (feature
//! `chi`; [`AgentConfig`] and the [`wire`] types are there in every build).
//!
//! The embedded [`Memory`](crate::registry::Memory) registry lives in one process. `chi agent`
//! serves its registry (the embedded one, or whichever it was given) under `/v1` on its admin
//! port, and [`Agent`] turns that API back into a [`Registry`], so programs on one machine share
//! one registry with nothing else to run: register and discover through the agent as through any
//! backend, or list it beside others in a [`MultiRegistry`](crate::registry::MultiRegistry). In
//! the config file it is the `service_discovery.registries.chi` block; as a URL (the CLI's
//! `--registry`, [`Registries::from_url`](crate::registry::Registries::from_url)),
//! `chi://host:port`.
//!
//! # Mapping
//!
//! Each [`Registry`] call is one HTTP call of the API ([`wire`] lists them, with their JSON);
//! the agent answers from its own registry. Names travel as percent-encoded path segments, so
//! `?`, `#`, `%`, spaces and unicode arrive unchanged; names every registry refuses are refused
//! before a request is built ([`wire::check_names`], docs/DESIGN.md §9). Keep-alives run every
//! two seconds, well inside the ten seconds after which `chi agent`'s embedded registry lets a
//! registration expire, so a registrant killed without deregistering leaves no ghost. The agent runs no health
//! checks for its registrants: the registering process probes, and reports the verdict with its
//! keep-alives.
//!
//! # Watches
//!
//! A watch is one long-lived response of JSON lines, pushed by the agent as changes happen, with
//! a heartbeat every [`wire::HEARTBEAT`] while nothing does. A connection that ends, or stays
//! silent for three heartbeats, is reported once in the stream and opened again, with jittered
//! backoff from 100 ms to 5 s; every new connection starts with the agent's `Reset`, so a watch
//! across an agent restart resyncs to what the new agent holds.
//!
//! # An agent back empty
//!
//! An agent on the embedded registry loses every registration when it restarts, and answers "no
//! instances" until its registrants find their registrations lost at their next keep-alive and
//! register again. As with Consul and Nacos, the adapter's `EmptyGuard` (the outage policy,
//! `registry::outage`) holds such an answer for a service that had instances: after a failed call
//! or a lost watch, an empty list is believed only once the agent has answered for
//! [`EMPTY_GRACE`] (three keep-alive periods). Until then a read fails (the caller keeps its last
//! list), and a reopened watch sends no empty `Reset`: it opens again, on the retry curve, and
//! resyncs once the list has instances again or the grace is over.
//!
//! # Layout
//!
//! As in every adapter: `config` (the settings and their checks), `convert` (changes and
//! liveness to and from the wire), `watch` (the watch task), and this module, the [`Registry`];
//! then `client` (the HTTP calls and their errors) and [`wire`], the JSON of the API, which the
//! agent's server in the `chi` binary uses too.

mod config;
mod convert;
pub mod wire;

#[cfg(feature = "chi")]
mod client;
#[cfg(feature = "chi")]
mod watch;

pub use config::{AgentConfig, DEFAULT_ADDRESS, FIELD};

#[cfg(feature = "chi")]
use {
    super::outage::EmptyGuard,
    super::{Liveness, Registry, WatchStream},
    crate::error::Error,
    crate::error::Result,
    crate::instance::{HealthStatus, Instance},
    async_trait::async_trait,
    client::Client,
    reqwest::Method,
    std::sync::Arc,
    std::time::Duration,
    wire::{Alive, KeepAlive},
};

#[cfg(feature = "chi")]
const BACKEND: &str = "chi";
/// Keep-alive period asked of managers registering through an agent.
#[cfg(feature = "chi")]
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long an agent back from a failure must have answered before its empty list for a service
/// that had instances is believed: its registrants register again at their next keep-alive
/// (every 2 s, the interval this adapter asks of them); three periods leave room for one missed
/// round.
#[cfg(feature = "chi")]
pub const EMPTY_GRACE: Duration = KEEP_ALIVE.saturating_mul(3);

/// The registry of a running `chi agent`. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
#[cfg(feature = "chi")]
pub struct Agent {
    client: Arc<Client>,
    config: AgentConfig,
    /// The agent's empty answers after a failure (shared by clones and the watches).
    empty: Arc<EmptyGuard>,
}

#[cfg(feature = "chi")]
impl Agent {
    /// A registry on the agent at `config.address`. Checks the config; does not connect.
    pub fn new(config: AgentConfig) -> Result<Agent> {
        Ok(Agent {
            client: Arc::new(Client::new(&config)?),
            config,
            empty: Arc::new(EmptyGuard::new(true)),
        })
    }

    /// Notes whether the agent answered (for the [`EMPTY_GRACE`]) and passes the answer on.
    fn note<T>(&self, answer: Result<T>) -> Result<T> {
        self.empty.note(&answer);
        answer
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }
}

#[cfg(feature = "chi")]
#[async_trait]
impl Registry for Agent {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        let url = self.client.url(&instance.name, Some(&instance.id), None)?;
        let req = self.client.call(Method::PUT, url).json(instance);
        self.note(self.client.send(req).await).map(drop)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let url = self.client.url(service, Some(id), None)?;
        let req = self.client.call(Method::DELETE, url);
        self.note(self.client.send(req).await).map(drop)
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let url = self
            .client
            .url(&instance.name, Some(&instance.id), Some("keepalive"))?;
        let body = KeepAlive {
            instance: instance.clone(),
            health,
        };
        let req = self.client.call(Method::POST, url).json(&body);
        let alive: Alive = self.note(self.client.json(req).await)?;
        Ok(alive.into())
    }

    fn keep_alive_interval(&self) -> Duration {
        KEEP_ALIVE
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let url = self.client.url(service, None, None)?;
        let list: Vec<Instance> =
            self.note(self.client.json(self.client.call(Method::GET, url)).await)?;
        if !self.empty.believe(service, &list, EMPTY_GRACE) {
            return Err(not_believed(&self.client, service));
        }
        Ok(list)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let url = self.client.services_url();
        self.note(self.client.json(self.client.call(Method::GET, url)).await)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        // The first line must come now, so a bad address fails the call, not the stream.
        let opened = self.note(watch::open(&self.client, service).await)?;
        if !self.empty.believe(service, &opened.1, EMPTY_GRACE) {
            return Err(not_believed(&self.client, service));
        }
        Ok(watch::spawn(
            self.client.clone(),
            self.empty.clone(),
            service.to_owned(),
            opened,
        ))
    }
}

/// The error of an empty list not believed yet (see the module docs).
#[cfg(feature = "chi")]
fn not_believed(client: &Client, service: &str) -> Error {
    client.err(format!(
        "no instance of `{service}` from an agent that came back less than {} ago; not \
         believed until its registrants had time to register again",
        humantime::format_duration(EMPTY_GRACE)
    ))
}

#[cfg(all(test, feature = "chi"))]
mod tests;
