//! State-of-the-world ADS (`StreamAggregatedResources`), the variant gRPC's xDS clients speak;
//! the rules it keeps are listed in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use chi_discovery::instance::is_valid_name;
use tonic::Status;

use super::by_kind::ByKind;
use super::drive::Outbox;
use super::follow::Following;
use super::memo::{Outgoing, Patch, PatchKey, Sent, asked_by_others};
use super::request::AdsRequest;
use super::resources::Kind;
use super::state::{Followed, TypeState};
use super::view::ServiceView;
use super::wire::Packed;
use super::{MAX_NAMES, Parts, Session, StreamEnd};

/// The catalogue a wildcard subscription reads.
type Catalog = Arc<BTreeSet<String>>;

/// One state-of-the-world ADS stream: what the client asked for and what it was sent.
pub(crate) struct AdsStream {
    /// The server's parts and what is known of the client.
    parts: Parts,
    tx: Outbox<Packed>,
    types: ByKind<TypeState>,
}

impl AdsStream {
    pub(crate) fn new(parts: Parts, tx: Outbox<Packed>) -> AdsStream {
        AdsStream {
            parts,
            tx,
            types: ByKind::default(),
        }
    }
}

impl Session for AdsStream {
    type Request = AdsRequest;
    type Response = Packed;
    const VARIANT: &'static str = "sotw";

    fn following(&mut self) -> &mut Following {
        &mut self.parts.following
    }

    fn on_request(&mut self, request: AdsRequest) -> Result<Option<Kind>, StreamEnd> {
        self.on_request(request)
    }

    async fn resubscribe(&mut self, kind: Kind) -> Result<(), StreamEnd> {
        self.resubscribe(kind).await
    }

    fn refollow(&mut self) {
        self.follow_wanted();
    }

    async fn push(&mut self, changed: Option<&[Arc<Followed>]>) -> Result<(), StreamEnd> {
        self.push(changed).await
    }
}

impl AdsStream {
    fn on_request(&mut self, request: AdsRequest) -> Result<Option<Kind>, StreamEnd> {
        let Some(kind) = Kind::from_type_url(request.type_url()) else {
            tracing::debug!(type_url = %request.type_url(), "ignoring a request for a type chi xds does not serve");
            return Ok(None);
        };
        let (version_info, response_nonce) = (request.version_info(), request.response_nonce());
        if request.names().len() > MAX_NAMES {
            return Err(StreamEnd::Refused(Status::invalid_argument(format!(
                "{} names in one {} request; at most {MAX_NAMES}",
                request.names().len(),
                kind.short()
            ))));
        }
        self.parts.heard(request.node.as_deref());
        let node = self.parts.node.as_str();
        let ts = self.types.entry(kind);
        // Before the first response of this type on this stream, any nonce is one a reconnecting
        // client kept from an earlier stream: the request is an initial one, not a stale one.
        let answered = !ts.nonce.is_empty();
        if !answered && let Ok(held) = version_info.parse::<u64>() {
            // A version the client holds from an earlier stream: this stream's go above it.
            self.parts.stamped = self.parts.stamped.max(held);
        }
        let echoes = answered && response_nonce == &*ts.nonce;
        if answered && !response_nonce.is_empty() && !echoes {
            tracing::debug!(
                kind = kind.short(),
                nonce = %response_nonce,
                current = %ts.nonce,
                "stale nonce: request ignored"
            );
            return Ok(None);
        }
        if let Some(error) = &request.error_detail {
            self.parts
                .log
                .answered(kind, &Arc::from(response_nonce), None, Some(&error.message));
            tracing::warn!(
                node,
                kind = kind.short(),
                rejected = ts.version,
                accepted = ts.accepted.as_deref().unwrap_or("none"),
                code = error.code,
                "NACK: {}",
                error.message
            );
        } else if echoes {
            tracing::debug!(node, kind = kind.short(), version = %version_info, "ACK");
            if ts.accepted.as_deref() != Some(version_info) {
                // The version of the response it answers, as a rule: shared, not copied.
                ts.accepted = Some(if version_info == &*ts.nonce {
                    ts.nonce.clone()
                } else {
                    Arc::from(version_info)
                });
            }
            self.parts
                .log
                .answered(kind, &ts.nonce, ts.accepted.as_ref(), None);
        }
        let first = !ts.subscribed;
        ts.subscribed = true;
        if !first && !ts.wildcard && same_names(request.name_bytes(), &ts.names) {
            // An ACK or NACK of the same subscription, as clients send them: the names in
            // order, compared in one pass without building a set. Nothing new to send (changes
            // are pushed when they happen).
            return Ok(None);
        }
        let mut names = BTreeSet::new();
        let mut star = false;
        for name in request.names() {
            if name == "*" {
                star = true;
            } else if is_valid_name(name) {
                names.insert(Arc::<str>::from(name));
            } else {
                tracing::debug!(
                    kind = kind.short(),
                    ?name,
                    "ignoring a name that is no service name"
                );
            }
        }
        let wildcard =
            kind.is_full_state() && (star || (names.is_empty() && (first || ts.wildcard)));
        if !first && wildcard == ts.wildcard && names == *ts.names {
            // An ACK or NACK of the same subscription: nothing new to send (changes are pushed
            // when they happen). The common case, answered without touching the services.
            return Ok(None);
        }
        ts.wildcard = wildcard;
        ts.names = Arc::new(names);
        Ok(Some(kind))
    }

    async fn resubscribe(&mut self, kind: Kind) -> Result<(), StreamEnd> {
        let (named, wildcard) = self.wanted();
        self.parts
            .following
            .bound_unknown(&named)
            .await
            .map_err(StreamEnd::Refused)?;
        self.parts.following.follow(named, wildcard);
        self.share_names(kind);
        self.push(None).await
    }

    /// The services some type of this stream wants: named ones, and whether the catalogue too
    /// (wildcards).
    fn wanted(&self) -> (BTreeSet<String>, bool) {
        let named = self
            .types
            .values()
            .flat_map(|ts| ts.names.iter())
            .map(|n| self.parts.shape.split(n).0.to_owned())
            .collect();
        (named, self.types.values().any(|t| t.wildcard))
    }

    /// Holds the names of `kind` that are service names as the followed services share them
    /// (one allocation for every stream, not one per stream), and the set as every stream
    /// asking for the same shares it.
    fn share_names(&mut self, kind: Kind) {
        let views = &self.parts.following.views;
        if let Some(ts) = self.types.get_mut(&kind) {
            let names = ts
                .names
                .iter()
                .map(|n| views.name(n).unwrap_or_else(|| n.clone()))
                .collect();
            ts.names = self.parts.encoded.states.names.share(Arc::new(names));
        }
    }

    /// Follows the services some type of this stream wants.
    fn follow_wanted(&mut self) {
        let (named, wildcard) = self.wanted();
        self.parts.following.follow(named, wildcard);
    }

    /// Sends, type by type in push order, every response whose content changed. With
    /// `changed` (only those services' views changed since the last push), a type answered
    /// before is patched where those services are: the work is per changed service, not per
    /// followed one.
    async fn push(&mut self, changed: Option<&[Arc<Followed>]>) -> Result<(), StreamEnd> {
        let catalog = self.parts.following.catalog();
        // The changed services' views, read once: what a patch records as sent and the bytes
        // it sends come from the same view.
        let changes: Option<Vec<Change>> = changed.map(|changed| {
            changed
                .iter()
                .map(|followed| Change {
                    view: followed.view(),
                    followed: followed.clone(),
                })
                .collect()
        });
        for kind in Kind::PUSH_ORDER {
            let Some(ts) = self.types.get(&kind) else {
                continue;
            };
            if !ts.subscribed || (ts.wildcard && catalog.is_none()) {
                // Not asked for; or a wildcard before the registry listed its services (an
                // empty answer now would delete every cluster a reconnecting client has).
                continue;
            }
            let outgoing = match (&changes, ts.sent.is_some()) {
                (Some(changes), true) => self.patch(kind, changes, catalog.as_ref()),
                _ => self.refresh(kind, catalog.as_ref()),
            };
            if let Some(outgoing) = outgoing {
                self.send(kind, &outgoing).await?;
            }
        }
        Ok(())
    }

    /// Compares everything of `kind` the stream wants now with what it was sent; what to send.
    fn refresh(&mut self, kind: Kind, catalog: Option<&Catalog>) -> Option<Arc<Outgoing>> {
        let content = self.content(kind, catalog.map(|c| &**c));
        let ts = self.types.get_mut(&kind)?;
        // Listeners and clusters go out whole; endpoints and routes only where they changed (or
        // were newly asked for): the client keeps the others.
        let send: Vec<Arc<str>> = match &ts.sent {
            Some(sent) if **sent == content => return None,
            Some(sent) if !kind.is_full_state() => content
                .iter()
                .filter(|(name, revision)| sent.get(*name) != Some(*revision))
                .map(|(name, _)| name.clone())
                .collect(),
            // Nothing sent yet: answer a wildcard at once (possibly empty, so Envoy can finish
            // starting); named resources when one of them exists.
            None if content.is_empty() && !ts.wildcard => return None,
            _ => content.keys().cloned().collect(),
        };
        // Shared with the streams asking for the same names (see `patch`).
        let sent = match asked_by_others(&ts.names) {
            true => self.parts.encoded.states.sent.share(Arc::new(content)),
            false => Arc::new(content),
        };
        ts.sent = Some(sent.clone());
        if send.is_empty() && !kind.is_full_state() {
            // Only names the client dropped: nothing to tell it.
            return None;
        }
        Some(Arc::new(self.outgoing(kind, send, &sent, &[])))
    }

    /// Everything of `kind` the stream wants now: name -> revision of each resource that exists.
    fn content(&self, kind: Kind, catalog: Option<&BTreeSet<String>>) -> BTreeMap<Arc<str>, u64> {
        let Some(ts) = self.types.get(&kind) else {
            return BTreeMap::new();
        };
        let views = &self.parts.following.views;
        let shape = &self.parts.shape;
        let mut names: BTreeSet<Arc<str>> = (*ts.names).clone();
        if ts.wildcard
            && let Some(all) = catalog
        {
            for service in all {
                if let Some(view) = views.get(service.as_str()) {
                    let shared = |n: String| views.name(&n).unwrap_or_else(|| n.into());
                    names.extend(
                        shape
                            .all_names(kind, service, &view)
                            .into_iter()
                            .map(shared),
                    );
                }
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let view = views.get(shape.split(&name).0)?;
                let revision = shape.revision(kind, &name, &view)?;
                Some((name, revision))
            })
            .collect()
    }

    /// Brings what was sent of `kind` up to date with the `changes` only (nothing else changed
    /// since the last push); what to send, `None` when nothing. A change of one service is
    /// worked out once for every stream in the same state ([`Patches`](super::memo::Patches)).
    fn patch(
        &mut self,
        kind: Kind,
        changes: &[Change],
        catalog: Option<&Catalog>,
    ) -> Option<Arc<Outgoing>> {
        let ts = self.types.get(&kind)?;
        // No other stream asks for the same names: nothing is to be gained from the memo, the
        // record is patched in place, unshared.
        let shared = asked_by_others(&ts.names);
        let (true, [Change { followed, view }]) = (shared, changes) else {
            let ts = self.types.get_mut(&kind)?;
            let mut sent = ts.sent.take()?;
            let send = self.work_out(kind, changes, catalog, &mut sent, shared);
            let ts = self.types.get_mut(&kind)?;
            ts.sent = Some(sent);
            return send;
        };
        let sent = ts.sent.clone()?;
        let place = self.parts.encoded.place_key(kind, &self.parts.place);
        let key = PatchKey::new(kind, ts.wildcard, &ts.names, &sent, catalog, place);
        let patch = match followed.patches.get(view, &key) {
            Some(patch) => patch,
            None => {
                let held = (ts.names.clone(), sent.clone(), catalog.cloned());
                let mut after = sent.clone();
                let send = self.work_out(kind, changes, catalog, &mut after, true);
                let patch = Arc::new(Patch::new(after, send, held));
                followed.patches.put(view, key, patch.clone());
                patch
            }
        };
        let ts = self.types.get_mut(&kind)?;
        ts.sent = Some(patch.sent.clone());
        patch.send.clone()
    }

    /// Brings `sent` (what was sent of `kind`) up to date with the `changes`: see
    /// [`AdsStream::patch`]; what to send. The record is changed in place when this stream
    /// alone holds it, and is the shared copy after when `share`.
    fn work_out(
        &self,
        kind: Kind,
        changes: &[Change],
        catalog: Option<&Catalog>,
        sent: &mut Sent,
        share: bool,
    ) -> Option<Arc<Outgoing>> {
        let views = &self.parts.following.views;
        let shape = &self.parts.shape;
        let ts = self.types.get(&kind)?;
        // The names of each changed service: `service` itself and `service@version`, which
        // sort right after it (or with other names starting with `service` in between, which
        // `split` tells apart).
        let of = |name: &str, service: &str| shape.split(name).0 == service;
        let mut fresh: Vec<(Arc<str>, Option<u64>)> = Vec::new();
        for change in changes {
            let service: &str = &change.followed.name;
            let view = Some(&change.view);
            let mut names: BTreeSet<&Arc<str>> = ts
                .names
                .range::<str, _>((Bound::Included(service), Bound::Unbounded))
                .take_while(|n| n.starts_with(service))
                .filter(|n| of(n, service))
                .collect();
            names.extend(
                sent.range::<str, _>((Bound::Included(service), Bound::Unbounded))
                    .map(|(n, _)| n)
                    .take_while(|n| n.starts_with(service))
                    .filter(|n| of(n, service)),
            );
            let all: Vec<Arc<str>> = match (ts.wildcard, catalog, view) {
                (true, Some(c), Some(view)) if c.contains(service) => shape
                    .all_names(kind, service, view)
                    .into_iter()
                    .map(|n| views.name(&n).unwrap_or_else(|| n.into()))
                    .collect(),
                _ => Vec::new(),
            };
            names.extend(all.iter());
            for name in names {
                let wanted = ts.names.contains(name) || all.contains(name);
                let revision = view
                    .filter(|_| wanted)
                    .and_then(|v| shape.revision(kind, name, v));
                if sent.get(name).copied() != revision {
                    fresh.push((name.clone(), revision));
                }
            }
        }
        if fresh.is_empty() {
            return None;
        }
        let after = Arc::make_mut(sent);
        let mut send = Vec::new();
        for (name, revision) in fresh {
            match revision {
                Some(r) => {
                    after.insert(name.clone(), r);
                    send.push(name);
                }
                None => {
                    after.remove(&name);
                }
            }
        }
        if share {
            *sent = self.parts.encoded.states.sent.share(std::mem::take(sent));
        }
        if kind.is_full_state() {
            send = sent.keys().cloned().collect();
        }
        // Only names that stopped existing: the client keeps the others, nothing to tell it.
        (!send.is_empty()).then(|| Arc::new(self.outgoing(kind, send, sent, changes)))
    }

    /// The resources `names` of `kind` at their revisions in `sent`, each from the view in
    /// `changes` when its service changed (the view the revision was read from), else from
    /// its service's current view.
    fn outgoing(
        &self,
        kind: Kind,
        names: Vec<Arc<str>>,
        sent: &BTreeMap<Arc<str>, u64>,
        changes: &[Change],
    ) -> Outgoing {
        let Parts {
            following,
            shape,
            encoded,
            place,
            ..
        } = &self.parts;
        let resources = names
            .iter()
            .filter_map(|name| {
                let service = shape.split(name).0;
                let view = match changes.iter().find(|c| &*c.followed.name == service) {
                    Some(change) => change.view.clone(),
                    None => following.views.get(service)?,
                };
                let list = view.instances.as_ref()?;
                let revision = sent.get(name).copied().unwrap_or(0);
                let built = encoded.get(kind, name, revision, place, || {
                    shape.build(kind, name, list, place)
                });
                Some(built.framed.clone())
            })
            .collect();
        Outgoing {
            names,
            resources,
            response: OnceLock::new(),
        }
    }

    /// Sends `outgoing`, a response of `kind`.
    async fn send(&mut self, kind: Kind, outgoing: &Outgoing) -> Result<(), StreamEnd> {
        let after = self.parts.stamped;
        let stamped = match outgoing.response.get().filter(|r| r.stamp > after) {
            Some(stamped) => stamped.clone(),
            None => {
                let versions = &self.parts.versions;
                let stamped = self
                    .parts
                    .encoded
                    .responses
                    .get(kind, &outgoing.resources, after, || {
                        versions.fetch_add(1, Ordering::Relaxed) + 1
                    })
                    .map_err(StreamEnd::Refused)?;
                let _ = outgoing.response.set(stamped.clone());
                stamped
            }
        };
        self.parts.stamped = stamped.stamp;
        let Some(ts) = self.types.get_mut(&kind) else {
            return Ok(());
        };
        ts.version = stamped.stamp;
        ts.nonce = stamped.text.clone();
        tracing::debug!(kind = kind.short(), version = %stamped.text, names = ?outgoing.names, "push");
        self.parts
            .log
            .sent(kind, &stamped.text, &stamped.text, &outgoing.names, &[]);
        self.tx.send(Ok(stamped.packed)).await;
        Ok(())
    }
}

/// A service whose view changed, as one push reads it: the view is read once.
struct Change {
    followed: Arc<Followed>,
    view: Arc<ServiceView>,
}

/// Whether `asked` (a request's names) is exactly `names`: true only when `asked` lists them
/// in their order, each once (any other order or form is told by building the set).
fn same_names<'a>(
    asked: impl ExactSizeIterator<Item = &'a [u8]>,
    names: &BTreeSet<Arc<str>>,
) -> bool {
    asked.len() == names.len() && asked.zip(names).all(|(a, n)| a == n.as_bytes())
}
