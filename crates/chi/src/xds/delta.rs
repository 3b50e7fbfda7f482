//! Incremental ADS (`DeltaAggregatedResources`), which Envoy speaks with
//! `ads_config.api_type: DELTA_GRPC`.
//!
//! The rules kept here are those of "Incremental xDS" in the xDS protocol (envoyproxy/envoy
//! `api/xds_protocol.rst`); envoyproxy/go-control-plane's `pkg/server/delta` is the reference
//! server of the same protocol. Where they differ from state-of-the-world:
//!
//! - A request changes the subscription instead of restating it: `resource_names_subscribe` adds
//!   names, `resource_names_unsubscribe` drops them (unknown ones are ignored). `*` is the
//!   wildcard (every service, for LDS and CDS), and so is a first LDS or CDS request that
//!   subscribes to nothing ("legacy wildcard"); unsubscribing `*` ends it.
//! - Every resource has its own version: a hash of its encoded bytes, so equal content has equal
//!   versions across streams and across restarts of the server. A response carries only the
//!   resources whose version changed for this client, plus `removed_resources`: names the client
//!   holds that no longer exist (a per-version cluster whose last instance left, a service that
//!   left the catalogue of a wildcard), and names it subscribed to that the registry does not
//!   have (the protocol's "does not exist" answer). Nothing is declared removed before the
//!   registry answered for it: a registry that is slow or down removes nothing.
//! - A reconnecting client lists what it holds in `initial_resource_versions` (first request of a
//!   type only); what it holds at the current version is not sent again.
//! - Subscribing to a name the client already has sends it again: the protocol allows the client
//!   to have forgotten it.
//! - `response_nonce` pairs a request with one response: with `error_detail` it is a NACK
//!   (logged with the detail; the client keeps what it had and the rejected versions are not sent
//!   again, only a later change is), without it an ACK. Subscription changes in a request are
//!   applied whatever its nonce, since each request is a delta the client will not repeat.
//! - Within one push the updates go out CDS, EDS, LDS, RDS, and the removals after all of them
//!   (listeners and routes first, then clusters and endpoints), so no route points at a cluster
//!   the client was told to drop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use chi_discovery::instance::is_valid_name;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Status;

use super::by_kind::ByKind;
use super::drive::Outbox;
use super::follow::Following;
use super::resources::Kind;
use super::state::Followed;
use super::{MAX_NAMES, Parts, Session, StreamEnd, control_plane};

/// The wildcard name.
const WILDCARD: &str = "*";
/// Responses of one type remembered until the client answers them (for the NACK log).
const PENDING_MAX: usize = 32;
/// Longest type URL taken as one.
const TYPE_URL_MAX: usize = 256;
/// Kinds in the order their removals go out: what points at a cluster first.
const REMOVAL_ORDER: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

/// What the client holds of one resource.
#[derive(Debug, Clone)]
struct Held {
    /// The version it has (sent by this stream, or listed in `initial_resource_versions`).
    version: String,
    /// The revision that version was built from, when this stream built it: the same revision
    /// needs no look-up at all.
    revision: Option<u64>,
}

/// One response the client has not answered yet.
#[derive(Debug)]
struct Pending {
    nonce: String,
    /// What it carried, for the logs: `name@version`, or `-name` for a removal.
    summary: Vec<String>,
}

/// One delta stream's state for one resource type.
#[derive(Debug, Default)]
struct DeltaState {
    /// A request of this type came.
    subscribed: bool,
    /// Every service (LDS, CDS).
    wildcard: bool,
    /// The names subscribed to.
    names: BTreeSet<String>,
    /// What the client holds.
    held: BTreeMap<String, Held>,
    /// Subscribed names the client was told do not exist.
    absent: BTreeSet<String>,
    /// Responses sent and not yet answered, oldest first.
    pending: VecDeque<Pending>,
}

/// What one push sends of one type.
#[derive(Default)]
struct Delta {
    upserts: Vec<Resource>,
    removals: Vec<String>,
}

/// One incremental ADS stream.
pub(crate) struct DeltaSession {
    /// The server's parts and what is known of the client.
    parts: Parts,
    tx: Outbox<DeltaDiscoveryResponse>,
    types: ByKind<DeltaState>,
}

impl DeltaSession {
    pub(crate) fn new(parts: Parts, tx: Outbox<DeltaDiscoveryResponse>) -> DeltaSession {
        DeltaSession {
            parts,
            tx,
            types: ByKind::default(),
        }
    }
}

impl Session for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const VARIANT: &'static str = "delta";

    fn following(&mut self) -> &mut Following {
        &mut self.parts.following
    }

    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<Option<Kind>, StreamEnd> {
        let Some(kind) = kind_of(&request.type_url)? else {
            tracing::debug!(type_url = %request.type_url, "ignoring a delta request for a type chi xds does not serve");
            return Ok(None);
        };
        for (field, n) in [
            (
                "resource_names_subscribe",
                request.resource_names_subscribe.len(),
            ),
            (
                "resource_names_unsubscribe",
                request.resource_names_unsubscribe.len(),
            ),
            (
                "initial_resource_versions",
                request.initial_resource_versions.len(),
            ),
        ] {
            if n > MAX_NAMES {
                return Err(refuse(format!(
                    "{n} names in {field} of one {} request; at most {MAX_NAMES}",
                    kind.short()
                )));
            }
        }
        if self.parts.heard(request.node.as_ref()) {
            // Endpoints are built for the client's place: check them all again.
            for ts in self.types.values_mut() {
                ts.held.values_mut().for_each(|h| h.revision = None);
            }
        }
        let ts = self.types.entry(kind);
        answer(&self.parts, kind, ts, &request);
        let first = !ts.subscribed;
        ts.subscribed = true;
        if first {
            for (name, version) in request.initial_resource_versions {
                if is_name(kind, &name) {
                    let held = Held {
                        version,
                        revision: None,
                    };
                    ts.held.insert(name, held);
                }
            }
            if kind.is_full_state() && request.resource_names_subscribe.is_empty() {
                ts.wildcard = true;
            }
        } else if request.resource_names_subscribe.is_empty()
            && request.resource_names_unsubscribe.is_empty()
        {
            // An ACK or NACK alone: changes are pushed when they happen.
            return Ok(None);
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                ts.wildcard = kind.is_full_state();
            } else if is_name(kind, &name) {
                if !first {
                    // The client may have forgotten it: send it again.
                    ts.held.remove(&name);
                    ts.absent.remove(&name);
                }
                ts.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                ts.wildcard = false;
            } else {
                ts.names.remove(&name);
                ts.held.remove(&name);
                ts.absent.remove(&name);
            }
        }
        if ts.names.len() > MAX_NAMES {
            return Err(refuse(format!(
                "{} {} names subscribed on one stream; at most {MAX_NAMES}",
                ts.names.len(),
                kind.short()
            )));
        }
        Ok(Some(kind))
    }

    async fn resubscribe(&mut self, _kind: Kind) -> Result<(), StreamEnd> {
        let (named, wildcard) = self.wanted();
        self.parts
            .following
            .bound_unknown(&named)
            .await
            .map_err(StreamEnd::Refused)?;
        self.parts.following.follow(named, wildcard);
        self.push(None).await
    }

    fn refollow(&mut self) {
        let (named, wildcard) = self.wanted();
        self.parts.following.follow(named, wildcard);
    }

    /// Looks at every followed service whatever `_changed` says: a delta stream answers with
    /// what differs from what the client holds, which a changed view alone does not tell.
    async fn push(&mut self, _changed: Option<&[Arc<Followed>]>) -> Result<(), StreamEnd> {
        let mut deltas: BTreeMap<Kind, Delta> = BTreeMap::new();
        for kind in Kind::PUSH_ORDER {
            let delta = self.delta(kind);
            if !delta.upserts.is_empty() || !delta.removals.is_empty() {
                deltas.insert(kind, delta);
            }
        }
        for kind in Kind::PUSH_ORDER {
            if let Some(delta) = deltas.get_mut(&kind)
                && !delta.upserts.is_empty()
            {
                let upserts = std::mem::take(&mut delta.upserts);
                self.send(kind, upserts, Vec::new()).await?;
            }
        }
        for kind in REMOVAL_ORDER {
            if let Some(delta) = deltas.remove(&kind)
                && !delta.removals.is_empty()
            {
                self.send(kind, Vec::new(), delta.removals).await?;
            }
        }
        Ok(())
    }
}

impl DeltaSession {
    /// The services the stream's subscriptions (and what the client holds) name, and whether
    /// the catalogue too (wildcards).
    fn wanted(&self) -> (BTreeSet<String>, bool) {
        let named = self
            .types
            .values()
            .flat_map(|ts| ts.names.iter().chain(ts.held.keys()))
            .map(|n| self.parts.shape.split(n).0.to_owned())
            .collect();
        (named, self.types.values().any(|t| t.wildcard))
    }

    /// What the client needs of `kind` now, recorded as sent.
    fn delta(&mut self, kind: Kind) -> Delta {
        let mut delta = Delta::default();
        let Some(ts) = self.types.get_mut(&kind) else {
            return delta;
        };
        if !ts.subscribed {
            return delta;
        }
        let views = &self.parts.following.views;
        let shape = &self.parts.shape;
        let catalog = self.parts.following.catalog();
        // The names the client wants and whether each was named (else it comes from the
        // wildcard); a wildcard counts once the registry listed its services.
        let mut wanted: BTreeMap<String, bool> =
            ts.names.iter().map(|n| (n.clone(), true)).collect();
        if ts.wildcard
            && let Some(all) = &catalog
        {
            for service in all.iter() {
                if let Some(view) = views.get(service.as_str()) {
                    for name in shape.all_names(kind, service, &view) {
                        wanted.entry(name).or_insert(false);
                    }
                }
            }
        }
        for (name, named) in &wanted {
            let service = shape.split(name).0;
            let Some(view) = views.get(service).filter(|v| v.known) else {
                continue; // not read yet: decide nothing
            };
            let Some(revision) = shape.revision(kind, name, &view) else {
                // Known not to exist: tell a client that holds it, or that named it and was
                // not told yet.
                let held = ts.held.remove(name).is_some();
                let untold = *named && ts.absent.insert(name.clone());
                if held || untold {
                    delta.removals.push(name.clone());
                }
                continue;
            };
            ts.absent.remove(name);
            let held = ts.held.get(name);
            if held.is_some_and(|h| h.revision == Some(revision)) {
                continue;
            }
            let Some(list) = view.instances.as_ref() else {
                continue;
            };
            let built = self.parts.encoded.get(
                kind,
                &Arc::from(name.as_str()),
                revision,
                &self.parts.place,
                || shape.build(kind, name, list, &self.parts.place),
            );
            let version = format!("{:016x}", built.hash);
            let unchanged = held.is_some_and(|h| h.version == version);
            ts.held.insert(
                name.clone(),
                Held {
                    version: version.clone(),
                    revision: Some(revision),
                },
            );
            if !unchanged {
                delta.upserts.push(Resource {
                    name: name.clone(),
                    version,
                    resource: Some(built.any.clone()),
                    ..Default::default()
                });
            }
        }
        // Held but no longer wanted: a name from `initial_resource_versions` the client did not
        // subscribe to again, or, under a wildcard, a service that left the catalogue or a
        // per-version cluster whose version is gone. A wildcard decides nothing before the
        // catalogue and the service's view were read.
        let gone: Vec<String> = ts
            .held
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .filter(|name| {
                if !ts.wildcard {
                    return true;
                }
                let Some(all) = &catalog else {
                    return false;
                };
                let service = shape.split(name).0;
                !all.contains(service) || views.get(service).is_some_and(|v| v.known)
            })
            .cloned()
            .collect();
        for name in gone {
            ts.held.remove(&name);
            delta.removals.push(name);
        }
        delta
    }

    /// Sends one response of `kind` and remembers it until the client answers.
    async fn send(
        &mut self,
        kind: Kind,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), StreamEnd> {
        let (nonce, version) = self.parts.stamp();
        let summary: Vec<String> = resources
            .iter()
            .map(|r| format!("{}@{}", r.name, r.version))
            .chain(removed.iter().map(|n| format!("-{n}")))
            .collect();
        tracing::debug!(kind = kind.short(), %nonce, resources = ?summary, "delta push");
        let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
        let (shown, told): (Arc<str>, Arc<str>) =
            (version.to_string().into(), nonce.as_str().into());
        self.parts.log.sent(kind, &shown, &told, &names, &removed);
        if let Some(ts) = self.types.get_mut(&kind) {
            if ts.pending.len() >= PENDING_MAX {
                ts.pending.pop_front();
            }
            ts.pending.push_back(Pending {
                nonce: nonce.clone(),
                summary,
            });
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            resources,
            type_url: kind.type_url().to_owned(),
            removed_resources: removed,
            nonce,
            control_plane: Some(control_plane()),
            ..Default::default()
        };
        self.tx.send(Ok(response)).await;
        Ok(())
    }
}

/// The kind a type URL names: `Ok(None)` for a well-formed type chi xds does not serve (an
/// Envoy may ask for secrets or runtime over the same stream: ignored, as in
/// state-of-the-world); an error for something that is no type URL at all.
fn kind_of(type_url: &str) -> Result<Option<Kind>, StreamEnd> {
    if let Some(kind) = Kind::from_type_url(type_url) {
        return Ok(Some(kind));
    }
    let well_formed = type_url.len() <= TYPE_URL_MAX
        && type_url
            .strip_prefix("type.googleapis.com/")
            .is_some_and(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
            });
    if well_formed {
        Ok(None)
    } else {
        let shown: String = type_url.chars().take(64).collect();
        Err(refuse(format!(
            "{shown:?} is no type URL; chi xds serves {}",
            Kind::PUSH_ORDER.map(Kind::type_url).join(", ")
        )))
    }
}

fn refuse(message: String) -> StreamEnd {
    StreamEnd::Refused(Status::invalid_argument(message))
}

/// A name chi can serve: a valid service name (`NAME@VERSION` included); others are ignored.
fn is_name(kind: Kind, name: &str) -> bool {
    let ok = is_valid_name(name);
    if !ok {
        tracing::debug!(
            kind = kind.short(),
            ?name,
            "ignoring a name that is no service name"
        );
    }
    ok
}

/// Logs the ACK or NACK `request` carries, if any (and notes it in the stream's log), and
/// forgets the responses it answers.
fn answer(parts: &Parts, kind: Kind, ts: &mut DeltaState, request: &DeltaDiscoveryRequest) {
    let node = parts.node.as_str();
    let nonce = request.response_nonce.as_str();
    let answered = if nonce.is_empty() {
        None
    } else {
        match ts.pending.iter().position(|p| p.nonce == nonce) {
            // Responses are answered in order: older ones were answered already.
            Some(i) => ts.pending.drain(..=i).next_back(),
            None => {
                tracing::debug!(
                    node,
                    kind = kind.short(),
                    nonce,
                    "a nonce of no response awaiting an answer (old, or from an earlier stream)"
                );
                None
            }
        }
    };
    match (&request.error_detail, &answered) {
        (Some(error), _) => parts
            .log
            .answered(kind, &Arc::from(nonce), None, Some(&error.message)),
        (None, Some(_)) => parts.log.answered(kind, &Arc::from(nonce), None, None),
        (None, None) => {}
    }
    match (&request.error_detail, answered) {
        (Some(error), answered) => tracing::warn!(
            node,
            kind = kind.short(),
            nonce,
            rejected = ?answered.map(|p| p.summary),
            code = error.code,
            "NACK: {}",
            error.message
        ),
        (None, Some(p)) => {
            tracing::debug!(node, kind = kind.short(), nonce, resources = ?p.summary, "ACK")
        }
        (None, None) => {}
    }
}
