//! State-of-the-world ADS (`StreamAggregatedResources`), the variant gRPC's xDS clients speak;
//! the rules it keeps are listed in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chi_discovery::instance::is_valid_name;
use tonic::Status;

use super::by_kind::ByKind;
use super::clients::overwrite;
use super::drive::Outbox;
use super::follow::Following;
use super::request::AdsRequest;
use super::resources::Kind;
use super::state::TypeState;
use super::wire::Packed;
use super::{MAX_NAMES, Parts, Session, StreamEnd};

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

    async fn on_request(&mut self, request: AdsRequest) -> Result<(), StreamEnd> {
        self.on_request(request).await
    }

    fn refollow(&mut self) {
        self.follow_wanted();
    }

    async fn push(&mut self, changed: Option<&BTreeSet<Arc<str>>>) -> Result<(), StreamEnd> {
        self.push(changed).await
    }
}

impl AdsStream {
    async fn on_request(&mut self, request: AdsRequest) -> Result<(), StreamEnd> {
        let Some(kind) = Kind::from_type_url(request.type_url()) else {
            tracing::debug!(type_url = %request.type_url(), "ignoring a request for a type chi xds does not serve");
            return Ok(());
        };
        let (version_info, response_nonce) = (request.version_info(), request.response_nonce());
        if request.names().len() > MAX_NAMES {
            return Err(StreamEnd::Refused(Status::invalid_argument(format!(
                "{} names in one {} request; at most {MAX_NAMES}",
                request.names().len(),
                kind.short()
            ))));
        }
        self.parts.heard(request.node.as_ref());
        let node = self.parts.node.as_str();
        let ts = self.types.entry(kind);
        // Before the first response of this type on this stream, any nonce is one a reconnecting
        // client kept from an earlier stream: the request is an initial one, not a stale one.
        let answered = !ts.nonce.is_empty();
        if !answered && let Ok(held) = version_info.parse::<u64>() {
            // A version the client holds from an earlier stream: this stream's go above it.
            self.parts.stamped = self.parts.stamped.max(held);
        }
        let echoes = answered && response_nonce == ts.nonce;
        if answered && !response_nonce.is_empty() && !echoes {
            tracing::debug!(
                kind = kind.short(),
                nonce = %response_nonce,
                current = %ts.nonce,
                "stale nonce: request ignored"
            );
            return Ok(());
        }
        if let Some(error) = &request.error_detail {
            self.parts
                .log
                .answered(kind, response_nonce, None, Some(&error.message));
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
                ts.accepted = Some(version_info.to_owned());
            }
            self.parts
                .log
                .answered(kind, response_nonce, Some(version_info), None);
        }
        let first = !ts.subscribed;
        ts.subscribed = true;
        if !first && !ts.wildcard && same_names(request.names(), &ts.names) {
            // An ACK or NACK of the same subscription, as clients send them: the names in
            // order, compared in one pass without building a set. Nothing new to send (changes
            // are pushed when they happen).
            return Ok(());
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
        if !first && wildcard == ts.wildcard && names == ts.names {
            // An ACK or NACK of the same subscription: nothing new to send (changes are pushed
            // when they happen). The common case, answered without touching the services.
            return Ok(());
        }
        ts.wildcard = wildcard;
        ts.names = names;
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
    /// (one allocation for every stream, not one per stream).
    fn share_names(&mut self, kind: Kind) {
        let views = &self.parts.following.views;
        if let Some(ts) = self.types.get_mut(&kind) {
            ts.names = std::mem::take(&mut ts.names)
                .into_iter()
                .map(|n| views.name(&n).unwrap_or(n))
                .collect();
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
    async fn push(&mut self, changed: Option<&BTreeSet<Arc<str>>>) -> Result<(), StreamEnd> {
        let catalog = self.parts.following.catalog();
        for kind in Kind::PUSH_ORDER {
            let Some(ts) = self.types.get(&kind) else {
                continue;
            };
            if !ts.subscribed || (ts.wildcard && catalog.is_none()) {
                // Not asked for; or a wildcard before the registry listed its services (an
                // empty answer now would delete every cluster a reconnecting client has).
                continue;
            }
            let send = match (changed, ts.sent.is_some()) {
                (Some(changed), true) => {
                    let Some(send) = self.patch(kind, changed, catalog.as_deref()) else {
                        continue;
                    };
                    send
                }
                _ => {
                    let content = self.content(kind, catalog.as_deref());
                    let Some(ts) = self.types.get_mut(&kind) else {
                        continue;
                    };
                    // Listeners and clusters go out whole; endpoints and routes only where they
                    // changed (or were newly asked for): the client keeps the others.
                    let send: Vec<Arc<str>> = match &ts.sent {
                        Some(sent) if *sent == content => continue,
                        Some(sent) if !kind.is_full_state() => content
                            .iter()
                            .filter(|(name, revision)| sent.get(*name) != Some(*revision))
                            .map(|(name, _)| name.clone())
                            .collect(),
                        // Nothing sent yet: answer a wildcard at once (possibly empty, so Envoy
                        // can finish starting); named resources when one of them exists.
                        None if content.is_empty() && !ts.wildcard => continue,
                        _ => content.keys().cloned().collect(),
                    };
                    ts.sent = Some(content);
                    if send.is_empty() && !kind.is_full_state() {
                        // Only names the client dropped: nothing to tell it.
                        continue;
                    }
                    send
                }
            };
            self.send(kind, send).await?;
        }
        Ok(())
    }

    /// Everything of `kind` the stream wants now: name -> revision of each resource that exists.
    fn content(&self, kind: Kind, catalog: Option<&BTreeSet<String>>) -> BTreeMap<Arc<str>, u64> {
        let Some(ts) = self.types.get(&kind) else {
            return BTreeMap::new();
        };
        let views = &self.parts.following.views;
        let shape = &self.parts.shape;
        let mut names: BTreeSet<Arc<str>> = ts.names.clone();
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

    /// Brings what was sent of `kind` up to date with the views of the `changed` services only
    /// (nothing else changed since the last push); the names to send, `None` when nothing is
    /// to be sent.
    fn patch(
        &mut self,
        kind: Kind,
        changed: &BTreeSet<Arc<str>>,
        catalog: Option<&BTreeSet<String>>,
    ) -> Option<Vec<Arc<str>>> {
        let views = &self.parts.following.views;
        let shape = &self.parts.shape;
        let ts = self.types.get_mut(&kind)?;
        let sent = ts.sent.as_mut()?;
        // The names of each changed service: `service` itself and `service@version`, which
        // sort right after it (or with other names starting with `service` in between, which
        // `split` tells apart).
        let of = |name: &str, service: &str| shape.split(name).0 == service;
        let mut fresh: Vec<(Arc<str>, Option<u64>)> = Vec::new();
        for service in changed {
            let service: &str = service;
            let view = views.get(service);
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
            let all: Vec<Arc<str>> = match (ts.wildcard, catalog, &view) {
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
                    .as_ref()
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
        let mut send = Vec::new();
        for (name, revision) in fresh {
            match revision {
                Some(r) => {
                    sent.insert(name.clone(), r);
                    send.push(name);
                }
                None => {
                    sent.remove(&name);
                }
            }
        }
        if kind.is_full_state() {
            return Some(sent.keys().cloned().collect());
        }
        // Only names that stopped existing: the client keeps the others, nothing to tell it.
        (!send.is_empty()).then_some(send)
    }

    /// Sends the resources `send` of `kind`, at the revisions recorded as sent.
    async fn send(&mut self, kind: Kind, send: Vec<Arc<str>>) -> Result<(), StreamEnd> {
        let Some(content) = self.types.get(&kind).and_then(|ts| ts.sent.as_ref()) else {
            return Ok(());
        };
        let resources: Vec<_> = send
            .iter()
            .filter_map(|name| {
                let service = self.parts.shape.split(name).0;
                let view = self.parts.following.views.get(service)?;
                let list = view.instances.as_ref()?;
                let revision = content.get(name).copied().unwrap_or(0);
                let built = self
                    .parts
                    .encoded
                    .get(kind, name, revision, &self.parts.place, || {
                        self.parts.shape.build(kind, name, list, &self.parts.place)
                    });
                Some(built.framed.clone())
            })
            .collect();
        let versions = &self.parts.versions;
        let stamped = self
            .parts
            .encoded
            .responses
            .get(kind, &resources, self.parts.stamped, || {
                versions.fetch_add(1, Ordering::Relaxed) + 1
            })
            .map_err(StreamEnd::Refused)?;
        self.parts.stamped = stamped.stamp;
        let Some(ts) = self.types.get_mut(&kind) else {
            return Ok(());
        };
        ts.version = stamped.stamp;
        overwrite(&mut ts.nonce, &stamped.text);
        tracing::debug!(kind = kind.short(), version = %stamped.text, names = ?send, "push");
        self.parts
            .log
            .sent(kind, &stamped.text, &stamped.text, &send, &[]);
        self.tx.send(Ok(stamped.packed)).await;
        Ok(())
    }
}

/// Whether `asked` (a request's names) is exactly `names`: true only when `asked` lists them
/// in their order, each once (any other order or form is told by building the set).
fn same_names<'a>(
    asked: impl ExactSizeIterator<Item = &'a str>,
    names: &BTreeSet<Arc<str>>,
) -> bool {
    asked.len() == names.len() && asked.zip(names).all(|(a, n)| a == &**n)
}
