//! Who is connected and what each stream was told: the book the ADS streams write to at every
//! response, ACK and NACK, read whole by `chi xds`'s console (`/ui` on `--admin`).
//!
//! The shape follows what a Client Status Discovery Service (gRFC A40, `envoy.service.status.v3`)
//! reports per client: its node, and per resource type the version sent and whether the client
//! accepted it (with the NACK's error detail). A CSDS endpoint can read the same book.
//!
//! A stream writes here once per xDS message, never per RPC of its client, under a lock of its
//! own; the console reads a copy ([`Clients::snapshot`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use super::by_kind::ByKind;
use super::resources::{ClientPlace, Kind};
use crate::sync;

/// Resource names kept per response (a wildcard CDS response may name thousands).
const NAMES_KEPT: usize = 64;

/// Every open ADS stream of one server.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    streams: Mutex<BTreeMap<u64, Arc<ClientLog>>>,
    next: AtomicU64,
}

impl Clients {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ClientLog>>> {
        sync::lock(&self.streams)
    }

    /// Opens the log of a new stream of `variant` from `peer`.
    pub(crate) fn open(&self, variant: &'static str, peer: Option<SocketAddr>) -> Arc<ClientLog> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let log = Arc::new(ClientLog {
            id,
            variant,
            peer,
            opened: unix_ms(SystemTime::now()),
            seen: Mutex::new(Seen::default()),
        });
        self.lock().insert(id, log.clone());
        log
    }

    /// Forgets the stream `log` (it ended).
    pub(crate) fn close(&self, log: &ClientLog) {
        self.lock().remove(&log.id);
    }

    /// Every open stream, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<ClientStatus> {
        let logs: Vec<Arc<ClientLog>> = self.lock().values().cloned().collect();
        logs.iter().map(|l| l.status()).collect()
    }
}

/// What one stream's client said of itself and what it was sent; see the module docs.
#[derive(Debug)]
pub(crate) struct ClientLog {
    id: u64,
    variant: &'static str,
    peer: Option<SocketAddr>,
    opened: u64,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    node: String,
    place: Option<ClientPlace>,
    types: ByKind<Exchange>,
}

impl ClientLog {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        sync::lock(&self.seen)
    }

    /// The client's node id and, when it named one, its locality.
    pub(crate) fn heard(&self, node: &str, place: Option<&ClientPlace>) {
        let mut seen = self.lock();
        if seen.node != node {
            seen.node = node.to_owned();
        }
        if let Some(p) = place {
            seen.place = Some(p.clone());
        }
    }

    /// A response of `kind` went out: its version and nonce, the resources it carried and, in
    /// incremental xDS, the ones it removed. Written over the last one in place: a stream
    /// writes here at every response, and its strings keep their room.
    pub(crate) fn sent(
        &self,
        kind: Kind,
        version: &Arc<str>,
        nonce: &Arc<str>,
        resources: &[impl AsRef<str>],
        removed: &[String],
    ) {
        let at = unix_ms(SystemTime::now());
        let mut seen = self.lock();
        let sent = seen
            .types
            .entry(kind)
            .sent
            .get_or_insert_with(Sent::default);
        sent.version = version.clone();
        sent.nonce = nonce.clone();
        sent.count = resources.len();
        keep(&mut sent.resources, resources);
        keep(&mut sent.removed, removed);
        sent.at = at;
    }

    /// The client answered the response `nonce` of `kind`: an ACK (`error: None`, with the
    /// version it now holds when the variant says it) or a NACK with its error detail.
    pub(crate) fn answered(
        &self,
        kind: Kind,
        nonce: &Arc<str>,
        version: Option<&Arc<str>>,
        error: Option<&str>,
    ) {
        let at = unix_ms(SystemTime::now());
        let mut seen = self.lock();
        let answer = seen
            .types
            .entry(kind)
            .answer
            .get_or_insert_with(Answer::default);
        answer.nonce = nonce.clone();
        answer.accepted = error.is_none();
        answer.version = version.filter(|v| !v.is_empty()).cloned();
        answer.error = error.map(str::to_owned);
        answer.at = at;
    }

    fn status(&self) -> ClientStatus {
        let seen = self.lock();
        ClientStatus {
            stream: self.id,
            variant: self.variant,
            peer: self.peer.map(|p| p.to_string()),
            connected_at: self.opened,
            node: seen.node.clone(),
            region: seen.place.as_ref().and_then(|p| p.region.clone()),
            zone: seen.place.as_ref().and_then(|p| p.zone.clone()),
            types: seen
                .types
                .iter()
                .map(|(k, e)| TypeStatus {
                    kind: k.short(),
                    exchange: e.clone(),
                })
                .collect(),
        }
    }
}

/// One connected client, as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientStatus {
    /// The stream's number in this server (counts up from 1).
    pub(crate) stream: u64,
    /// `sotw` or `delta`.
    pub(crate) variant: &'static str,
    pub(crate) peer: Option<String>,
    /// Unix milliseconds.
    pub(crate) connected_at: u64,
    /// The node id of its bootstrap (empty until its first request names it).
    pub(crate) node: String,
    pub(crate) region: Option<String>,
    pub(crate) zone: Option<String>,
    /// Per resource type it asked for, in push order.
    pub(crate) types: Vec<TypeStatus>,
}

/// One resource type of a client.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TypeStatus {
    /// `LDS`, `RDS`, `CDS` or `EDS`.
    pub(crate) kind: &'static str,
    #[serde(flatten)]
    pub(crate) exchange: Exchange,
}

/// The last response of a type and the last answer to one.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Exchange {
    pub(crate) sent: Option<Sent>,
    pub(crate) answer: Option<Answer>,
}

/// A response.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Sent {
    pub(crate) version: Arc<str>,
    pub(crate) nonce: Arc<str>,
    /// Resources it carried (the first [`NAMES_KEPT`] are named).
    pub(crate) count: usize,
    pub(crate) resources: Vec<String>,
    pub(crate) removed: Vec<String>,
    /// Unix milliseconds.
    pub(crate) at: u64,
}

/// An ACK or a NACK.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Answer {
    /// The nonce of the response it answers.
    pub(crate) nonce: Arc<str>,
    pub(crate) accepted: bool,
    /// The version the client says it holds (state-of-the-world only).
    pub(crate) version: Option<Arc<str>>,
    /// A NACK's error detail.
    pub(crate) error: Option<String>,
    /// Unix milliseconds.
    pub(crate) at: u64,
}

/// `to` becomes `value`, in the room it has.
fn overwrite(to: &mut String, value: &str) {
    if to != value {
        to.clear();
        to.push_str(value);
    }
}

/// `to` becomes the first [`NAMES_KEPT`] of `names`, reusing the strings it holds.
fn keep(to: &mut Vec<String>, names: &[impl AsRef<str>]) {
    let names = &names[..names.len().min(NAMES_KEPT)];
    to.truncate(names.len());
    for (i, name) in names.iter().enumerate() {
        match to.get_mut(i) {
            Some(kept) => overwrite(kept, name.as_ref()),
            None => to.push(name.as_ref().to_owned()),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
