//! One service as the ADS streams see it: its instances, and what the resources built from them
//! depend on. Both the resources (`resources`, which read it) and the registry watches (`state`,
//! which publish it) use it, so it sits below both.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chi_discovery::Instance;
use chi_discovery::routing::serves_version;

/// One service as the streams see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceView {
    /// `None` until the service has had an instance: a name nobody registered yet is not
    /// served (its resources "do not exist"), and is pushed once it appears.
    pub(crate) instances: Option<Arc<Vec<Instance>>>,
    /// The registry answered at least once: `instances: None` then means "does not exist"
    /// rather than "not read yet" (incremental xDS tells a client a resource is gone only then).
    pub(crate) known: bool,
    /// Changes with every change of `instances`; drawn from the hub's counter, so a service
    /// followed again after a pause never repeats a revision of its earlier watch (encoded
    /// resources are cached by revision).
    pub(crate) revision: u64,
    /// Each version some instance has (its `version` field) -> a fingerprint of the instances
    /// serving it, so a per-version cluster's endpoints are pushed only when they change.
    pub(crate) by_version: Arc<BTreeMap<String, u64>>,
}

/// The versions the instances have (their `version` field, when not empty), sorted.
pub(crate) fn versions_of(instances: &[Instance]) -> BTreeSet<&str> {
    instances
        .iter()
        .map(|i| i.version.as_str())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Per version (of the `version` fields), a hash of what the endpoints of the instances serving
/// it depend on.
pub(crate) fn fingerprints(list: &[Instance]) -> BTreeMap<String, u64> {
    versions_of(list)
        .into_iter()
        .map(|v| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for i in list.iter().filter(|i| serves_version(i, v)) {
                (&i.id, &i.address, i.port, i.effective_weight()).hash(&mut h);
                (i.health.as_str(), &i.meta, &i.version, &i.tags).hash(&mut h);
            }
            (v.to_owned(), h.finish())
        })
        .collect()
}
