//! Who hears of the picks a [`ServiceState`](super::ServiceState) admits: [`OnPick`].
//!
//! A [`Chi`](crate::Chi) stack builds its HTTP helper and its tower services before the caller
//! registers the metrics (`Chi::metrics` takes the caller's Prometheus registry, whenever the
//! caller has one), so the stack hands them one shared, empty slot, and `Chi::metrics` fills it:
//! from then on every pick counts `load_balancer_selections_total` and
//! `chi_routing_decisions_total`. A pick reads the slot with one atomic load (`arc-swap`), and
//! calls nothing while it is empty.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::leaf::Routed;
use super::stage::Stage;
use crate::balance::Balancer;

type Hook<B> = Box<dyn Fn(&str, &Routed<B>) + Send + Sync>;

/// A slot for one callback told every pick (the service's name and the routed pick). Clones
/// share the slot; see the module docs.
pub struct OnPick<B: Stage = Balancer>(Arc<ArcSwapOption<Hook<B>>>);

impl<B: Stage> OnPick<B> {
    /// An empty slot: picks tell nobody.
    pub fn new() -> Self {
        OnPick(Arc::new(ArcSwapOption::empty()))
    }

    /// Sets the callback (replacing the one before) for every clone of this slot.
    pub fn set(&self, hook: impl Fn(&str, &Routed<B>) + Send + Sync + 'static) {
        self.0.store(Some(Arc::new(Box::new(hook))));
    }

    /// Tells the callback, if any, that `service` picked `routed`.
    #[inline]
    pub fn tell(&self, service: &str, routed: &Routed<B>) {
        if let Some(hook) = &*self.0.load() {
            hook(service, routed);
        }
    }
}

impl<B: Stage> Default for OnPick<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Stage> Clone for OnPick<B> {
    fn clone(&self) -> Self {
        OnPick(self.0.clone())
    }
}

impl<B: Stage> std::fmt::Debug for OnPick<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnPick")
            .field("set", &self.0.load().is_some())
            .finish()
    }
}
