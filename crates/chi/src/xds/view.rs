//! One service as the ADS streams see it: its instances, and what the resources built from them
//! depend on. Both the resources (`resources`, which read it) and the registry watches (`state`,
//! which follow it) use it, so it sits below both.

use chi_discovery::Instance;
use chi_discovery::discovery::shared::View;
use chi_discovery::routing::serves_version;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

/// One service as the streams see it: the library's shared view (its instances, whether the
/// registry knows it, its revision), with each version's fingerprint as its digest.
pub(crate) type ServiceView = View<ByVersion>;

/// Each version some instance has (its `version` field) -> a fingerprint of the instances
/// serving it, so a per-version cluster's endpoints are pushed only when they change.
pub(crate) type ByVersion = BTreeMap<String, u64>;

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
pub(crate) fn fingerprints(list: &[Instance]) -> ByVersion {
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
