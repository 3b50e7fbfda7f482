//! What a route was decided by: [`Decision`], the version rule's and the geo rule's step and
//! whether no instance was usable, for logs and metrics to count fallbacks.

use super::geo::GeoStep;
use super::version::VersionStep;

/// Which rules decided a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The version rule.
    pub version: VersionStep,
    /// The geo rule.
    pub geo: GeoStep,
    /// True when no instance was usable and every instance was routed over.
    pub panic: bool,
}

impl Decision {
    /// True if any stage fell back (or panicked).
    pub fn fell_back(&self) -> bool {
        self.panic || self.version.is_fallback() || self.geo.is_fallback()
    }
}
