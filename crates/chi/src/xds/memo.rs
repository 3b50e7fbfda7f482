//! Streams in the same state share it, and the work a change makes of it.
//!
//! Ten thousand state-of-the-world streams asking for the same services hold the same names
//! and, once answered, the same record of what they were sent. Held per stream, each push read
//! ten thousand copies of them, each cold in the CPU's caches, and worked out ten thousand times
//! the same answer: what changed, what to send, the bytes to send. Here equal states are one
//! shared copy ([`Interned`]: a stream holds a pointer), so a state is told by its address, and
//! each followed service remembers, for its current view only, what a change made of each state
//! it met ([`Patches`]): the first stream woken works it out, the others look it up, one lookup
//! in a small map. A patch holds the values its key points at, and the view it was made from,
//! so no address in a key is reused while the patch lives; a newer view drops them all.
//!
//! A stream whose names no other stream asks for gains nothing from this, and skips it: its
//! record stays its own and is changed in place (`AdsStream::patch`).
//!
//! The idea is hash-consing (Ershov 1958; Goto 1974), the memo that of a DFA whose states are
//! built on demand: equal states are one, so one transition serves every stream in it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::resources::{ClientPlace, Kind};
use super::view::ServiceView;
use super::wire::Stamped;
use crate::sync;

/// The names one type of a stream asks for, shared by every stream asking for the same.
pub(crate) type Names = Arc<BTreeSet<Arc<str>>>;

/// What one type of a stream was last sent (name -> revision), shared likewise.
pub(crate) type Sent = Arc<BTreeMap<Arc<str>, u64>>;

/// The catalogue a wildcard subscription reads.
type Catalog = Arc<BTreeSet<String>>;

/// Most distinct values kept. Beyond it the ones no stream holds are forgotten, and when more
/// than half are held, all are: their holders keep them, and equal values made later get a new
/// shared copy (correct, only less shared for a while). So a full set is looked through at most
/// once per `INTERNED_MAX / 2` new values, however many states the streams are in.
const INTERNED_MAX: usize = 4096;

/// Equal values, held once.
pub(crate) struct Interned<T> {
    set: Mutex<HashSet<Arc<T>>>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            set: Mutex::new(HashSet::new()),
        }
    }
}

impl<T: Hash + Eq> Interned<T> {
    /// The shared copy of `value`: the one held already when there is one, else `value`.
    pub(crate) fn share(&self, value: Arc<T>) -> Arc<T> {
        let mut set = sync::lock(&self.set);
        if let Some(shared) = set.get(&*value) {
            return shared.clone();
        }
        if set.len() >= INTERNED_MAX {
            set.retain(|v| Arc::strong_count(v) > 1);
            if set.len() > INTERNED_MAX / 2 {
                set.clear();
            }
        }
        set.insert(value.clone());
        value
    }
}

/// Whether a stream's `names` (shared through [`States::names`]) are asked for by another
/// stream too: held by more than the interner and the stream itself. Only then is its state
/// worth sharing and its patches worth remembering.
pub(crate) fn asked_by_others(names: &Names) -> bool {
    Arc::strong_count(names) > 2
}

/// The stream states of one server, held once.
#[derive(Default)]
pub(crate) struct States {
    pub(crate) names: Interned<BTreeSet<Arc<str>>>,
    pub(crate) sent: Interned<BTreeMap<Arc<str>, u64>>,
}

/// One type of a stream, as a change of one service sees it: the addresses of its shared
/// values, and the client's place when the resources depend on it.
#[derive(Debug, Hash, PartialEq, Eq)]
pub(crate) struct PatchKey {
    kind: Kind,
    wildcard: bool,
    names: usize,
    sent: usize,
    catalog: usize,
    place: Option<ClientPlace>,
}

impl PatchKey {
    pub(crate) fn new(
        kind: Kind,
        wildcard: bool,
        names: &Names,
        sent: &Sent,
        catalog: Option<&Catalog>,
        place: Option<ClientPlace>,
    ) -> PatchKey {
        PatchKey {
            kind,
            wildcard,
            names: Arc::as_ptr(names) as usize,
            sent: Arc::as_ptr(sent) as usize,
            catalog: catalog.map_or(0, |c| Arc::as_ptr(c) as usize),
            place,
        }
    }
}

/// What a change of a service made of one state.
pub(crate) struct Patch {
    /// What was sent, after the change.
    pub(crate) sent: Sent,
    /// What to send; `None` when nothing.
    pub(crate) send: Option<Arc<Outgoing>>,
    /// What the key points at (names, sent before, catalogue): held, never read.
    _held: (Names, Sent, Option<Catalog>),
}

impl Patch {
    /// What a change made of the state whose names, sent record and catalogue are `held`.
    pub(crate) fn new(
        sent: Sent,
        send: Option<Arc<Outgoing>>,
        held: (Names, Sent, Option<Catalog>),
    ) -> Patch {
        Patch {
            sent,
            send,
            _held: held,
        }
    }
}

/// The resources one response carries: their names, and their encoded `resources` fields;
/// and the response packed of them for the first stream that sent it, which the others of a
/// patch send too when its stamp is above theirs (no look in the server's
/// [`Responses`](super::wire::Responses) then).
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) names: Vec<Arc<str>>,
    pub(crate) resources: Vec<Bytes>,
    pub(crate) response: OnceLock<Stamped>,
}

/// Most patches one service keeps for its view; more distinct states than that start over. A
/// patch holds the sent record it was made from (a stream that moved on no longer does), so
/// this bounds what the memo keeps alive. Streams that share a state are the case it is for,
/// and they are few states; streams that each have their own gain nothing from it.
const PATCHES_MAX: usize = 64;

/// The patches a service's current view made: see the module docs.
#[derive(Default)]
pub(crate) struct Patches {
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    /// The view the patches were made from.
    view: Option<Arc<ServiceView>>,
    map: HashMap<PatchKey, Arc<Patch>>,
}

impl Patches {
    /// The patch `view` made of the state `key`, when a stream worked it out already.
    pub(crate) fn get(&self, view: &Arc<ServiceView>, key: &PatchKey) -> Option<Arc<Patch>> {
        let memo = sync::lock(&self.memo);
        memo.view.as_ref().filter(|v| Arc::ptr_eq(v, view))?;
        memo.map.get(key).cloned()
    }

    /// Keeps `patch`, made from `view` of the state `key`. A newer view than the one kept
    /// drops the patches of the older; a patch of an older view (a stream woken late) is not
    /// kept.
    pub(crate) fn put(&self, view: &Arc<ServiceView>, key: PatchKey, patch: Arc<Patch>) {
        let mut memo = sync::lock(&self.memo);
        match &memo.view {
            Some(kept) if Arc::ptr_eq(kept, view) => {
                if memo.map.len() >= PATCHES_MAX {
                    memo.map.clear();
                }
            }
            Some(kept) if kept.revision > view.revision => return,
            _ => {
                memo.map.clear();
                memo.view = Some(view.clone());
            }
        }
        memo.map.insert(key, patch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    /// Equal values are one copy; once full, the copies no one holds are forgotten.
    #[test]
    fn equal_values_are_one_copy() {
        let interned: Interned<BTreeSet<Arc<str>>> = Interned::default();
        let a = interned.share(Arc::new(set(&["a", "b"])));
        let again = interned.share(Arc::new(set(&["a", "b"])));
        let other = interned.share(Arc::new(set(&["a"])));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &other));
        drop(other);
        for i in 0..INTERNED_MAX * 2 {
            drop(interned.share(Arc::new(set(&[&i.to_string()]))));
        }
        let still = interned.share(Arc::new(set(&["a", "b"])));
        assert!(Arc::ptr_eq(&a, &still), "a held value stays shared");
        assert!(sync::lock(&interned.set).len() <= INTERNED_MAX);
        // Most of them held: the set starts over, and stays bounded.
        let held: Vec<_> = (0..INTERNED_MAX * 2)
            .map(|i| interned.share(Arc::new(set(&[&format!("h{i}")]))))
            .collect();
        assert!(sync::lock(&interned.set).len() <= INTERNED_MAX);
        let again = interned.share(Arc::new(set(&["a", "b"])));
        assert!(
            !Arc::ptr_eq(&a, &again),
            "a new shared copy after the start over"
        );
        assert_eq!(*again, *a);
        drop(held);
    }

    fn view(revision: u64) -> Arc<ServiceView> {
        Arc::new(ServiceView {
            instances: None,
            known: true,
            revision,
            digest: Arc::default(),
        })
    }

    fn patch() -> Arc<Patch> {
        let (names, sent): (Names, Sent) = (Arc::default(), Arc::default());
        Arc::new(Patch::new(sent.clone(), None, (names, sent, None)))
    }

    /// A patch is found for the view it was made from only; a newer view drops the older's,
    /// a late stream's patch of an older view is not kept.
    #[test]
    fn patches_hold_for_their_view_only() {
        let patches = Patches::default();
        let (names, sent): (Names, Sent) = (Arc::default(), Arc::default());
        let key = || PatchKey::new(Kind::Endpoints, false, &names, &sent, None, None);
        let (v1, v2) = (view(1), view(2));
        patches.put(&v1, key(), patch());
        assert!(patches.get(&v1, &key()).is_some());
        assert!(patches.get(&v2, &key()).is_none(), "another view");
        patches.put(&v2, key(), patch());
        patches.put(&v1, key(), patch());
        assert!(patches.get(&v1, &key()).is_none(), "the older view's went");
        assert!(patches.get(&v2, &key()).is_some());
        let other = Arc::new(BTreeMap::from([(Arc::from("a"), 1)]));
        let another = PatchKey::new(Kind::Endpoints, false, &names, &other, None, None);
        assert!(patches.get(&v2, &another).is_none(), "another state");
    }
}
