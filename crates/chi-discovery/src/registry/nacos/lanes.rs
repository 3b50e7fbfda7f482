//! The gRPC connections registrations go out on ("lanes"): one per instance of a service.
//!
//! A Nacos 2.x server binds an ephemeral instance to the connection that registered it, and
//! keeps one instance per service per connection: on Nacos' own server a second registration
//! of a service on one connection replaces the first (the Nacos maintainers' advice is one
//! naming client per instance, alibaba/nacos#7539; batch registration, since 2.1.1, replaces
//! the whole set and cannot take one member out). nacos-sdk agrees: after it reconnects, to the
//! same server or another member of the cluster, it sends each connection's registrations
//! again, one per service, the last one sent. rnacos keeps several instances per connection,
//! but when a cluster member dies its peers drop, 15 s later, every instance its clients had
//! registered there and did not send again from a live connection.
//!
//! So the n-th instance of a service that one [`Nacos`](super::Nacos) holds at a time goes out
//! on its n-th lane: each lane carries at most one instance of a service, and nacos-sdk sends it
//! again after any reconnect. Lane 0 is the connection queries and subscriptions use too; a
//! process with one instance per service never opens another. A lane is opened when an
//! instance first needs it and kept for the next one until the `Nacos` is dropped; an instance
//! keeps its lane from its first registration to its deregistration (nacos-sdk retries a
//! registration that failed on the lane it was sent on).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder};
use nacos_sdk::api::plugin::AuthPlugin;
use nacos_sdk::api::props::ClientProps;
use tokio::sync::OnceCell;

use super::BACKEND;
use super::error::sdk_error;
use crate::error::{Error, Result};
use crate::util::lock;

/// What a new connection is built from: the client properties, the login (when credentials
/// are set), how long building may take, and the servers (HTTP authority, gRPC address).
pub(super) struct Opener {
    pub(super) props: ClientProps,
    pub(super) auth: Option<Arc<dyn AuthPlugin>>,
    pub(super) timeout: Duration,
    pub(super) servers: Vec<(String, String)>,
}

/// How long a server's gRPC port gets to take a TCP connection when a first connect failed.
const PROBE: Duration = Duration::from_secs(1);

impl Opener {
    /// A new nacos-sdk naming client: its own gRPC connection.
    ///
    /// nacos-sdk connects first to a server picked at random from the list and, when that one
    /// is down, fails (after about 4.5 s) instead of trying the next: with one member of three
    /// down, a third of the connections opened meanwhile would fail, and a registration
    /// retried until it took could wait for several in a row. So a first failure is followed
    /// by one more attempt, within the same deadline, naming only the servers whose gRPC port
    /// takes a TCP connection now; that connection moves among those servers only.
    pub(super) async fn open(&self) -> Result<NamingService> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = self.build(self.props.clone(), deadline).await;
        let Err(e) = first else { return first };
        if !matches!(e, Error::Unavailable { .. }) || self.servers.len() < 2 {
            return Err(e);
        }
        let live = self.reachable().await;
        if live.is_empty() || live.len() == self.servers.len() {
            return Err(e);
        }
        tracing::debug!(servers = ?live, "opening a Nacos connection again, to the servers that answer");
        self.build(self.props.clone().server_addr(live.join(",")), deadline)
            .await
    }

    async fn build(
        &self,
        props: ClientProps,
        deadline: tokio::time::Instant,
    ) -> Result<NamingService> {
        let mut builder = NamingServiceBuilder::new(props);
        if let Some(auth) = &self.auth {
            builder = builder.with_auth_plugin(auth.clone());
        }
        match tokio::time::timeout_at(deadline, builder.build()).await {
            Ok(Ok(naming)) => Ok(naming),
            Ok(Err(e)) => Err(sdk_error(e)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND.into(),
                after: self.timeout,
            }),
        }
    }

    /// The HTTP authorities of the servers whose gRPC port takes a TCP connection, asked at
    /// once.
    async fn reachable(&self) -> Vec<String> {
        let probes = self.servers.iter().map(|(http, grpc)| async move {
            let up = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(grpc.as_str()))
                .await
                .is_ok_and(|c| c.is_ok());
            up.then(|| http.clone())
        });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The lanes of one `Nacos` and which `(service, id)` holds which.
pub(super) struct Lanes {
    opener: Opener,
    /// Lane 0, open from the start: the connection of queries and subscriptions too.
    first: NamingService,
    /// Lanes 1, 2, ...; only ever grows. A lane is opened on first use, outside the lock:
    /// opening one while the servers are unreachable waits for its timeout, and must not hold
    /// up registrations on the lanes that are open.
    more: std::sync::Mutex<Vec<Arc<OnceCell<NamingService>>>>,
    held: std::sync::Mutex<HashMap<(String, String), usize>>,
}

impl Lanes {
    /// Opens lane 0 with `opener`, which opens the others when they are needed.
    pub(super) async fn open(opener: Opener) -> Result<Lanes> {
        Ok(Lanes {
            first: opener.open().await?,
            opener,
            more: std::sync::Mutex::new(Vec::new()),
            held: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Lane 0.
    pub(super) fn first(&self) -> &NamingService {
        &self.first
    }

    /// The lane of `key`: the one it holds, else the lowest no other instance of its service
    /// holds (opened now if it is new). The caller holds `key`'s write lock.
    pub(super) async fn take(&self, key: &(String, String)) -> Result<NamingService> {
        let index = assign(&mut lock(&self.held), key);
        let Some(more) = index.checked_sub(1) else {
            return Ok(self.first.clone());
        };
        let cell = {
            let mut open = lock(&self.more);
            while open.len() <= more {
                open.push(Arc::new(OnceCell::new()));
            }
            open[more].clone()
        };
        let naming = cell
            .get_or_try_init(|| async {
                let naming = self.opener.open().await?;
                tracing::debug!(lane = index, service = %key.0, "opened another Nacos connection");
                Ok::<_, Error>(naming)
            })
            .await?;
        Ok(naming.clone())
    }

    /// The lane `key` holds, or lane 0 for an instance this client never registered (or whose
    /// lane never opened).
    pub(super) fn of(&self, key: &(String, String)) -> NamingService {
        let more = lock(&self.held).get(key).and_then(|i| i.checked_sub(1));
        let lane = more.and_then(|i| lock(&self.more).get(i).and_then(|cell| cell.get().cloned()));
        lane.unwrap_or_else(|| self.first.clone())
    }

    /// `key` was deregistered: its lane is free for the next instance of its service.
    pub(super) fn release(&self, key: &(String, String)) {
        lock(&self.held).remove(key);
    }
}

/// The lane of `key` in `held`: the one it holds, else the lowest that no other instance of its
/// service holds, noted as its.
fn assign(held: &mut HashMap<(String, String), usize>, key: &(String, String)) -> usize {
    if let Some(index) = held.get(key) {
        return *index;
    }
    let busy: HashSet<usize> = held
        .iter()
        .filter(|((service, _), _)| *service == key.0)
        .map(|(_, index)| *index)
        .collect();
    let index = (0..busy.len())
        .find(|i| !busy.contains(i))
        .unwrap_or(busy.len());
    held.insert(key.clone(), index);
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str, id: &str) -> (String, String) {
        (service.to_owned(), id.to_owned())
    }

    #[test]
    fn each_instance_of_a_service_its_own_lane_the_lowest_free_one_reused() {
        let mut held = HashMap::new();
        // One instance of each of two services: both on lane 0.
        assert_eq!(assign(&mut held, &key("a", "1")), 0);
        assert_eq!(assign(&mut held, &key("b", "1")), 0);
        // More instances of `a`: one lane each; asked again, an instance keeps its lane.
        assert_eq!(assign(&mut held, &key("a", "2")), 1);
        assert_eq!(assign(&mut held, &key("a", "3")), 2);
        assert_eq!(assign(&mut held, &key("a", "2")), 1);
        // A lane freed (the instance deregistered) is the next one taken.
        held.remove(&key("a", "2"));
        assert_eq!(assign(&mut held, &key("a", "4")), 1);
        assert_eq!(assign(&mut held, &key("a", "5")), 3);
        held.remove(&key("a", "1"));
        assert_eq!(assign(&mut held, &key("a", "6")), 0);
        assert_eq!(assign(&mut held, &key("b", "2")), 1);
    }
}
