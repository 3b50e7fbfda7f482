//! Version routing: which version a request goes to.
//!
//! The rules, in order (the Go sketch's `VersionRouter`, plus canary splits and fallbacks):
//!
//! 1. the request names a version (`X-Service-Version`) and a usable instance serves it:
//!    [`VersionStep::Requested`];
//! 2. the request names none and a canary split is configured: the split picks a version by
//!    weight ([`VersionStep::Canary`]); with a request key the choice is sticky per key;
//! 3. the request names none: `default_version` ([`VersionStep::Default`]);
//! 4. the named (or split) version has no usable instance: `default_version`
//!    ([`VersionStep::ToDefault`]) — a typo in a header must not fail the request;
//! 5. the default has none either: any version ([`VersionStep::ToAnyVersion`]).
//!
//! An instance serves a version when its `version` field equals it or it carries a tag equal to
//! it (the Go sketch filters by tag; chi's `Instance` also has a version field).

use std::hash::{Hash, Hasher};

use super::config::RoutingConfig;
use super::route::{Route, serves_version};
use crate::instance::Instance;

/// Which version rule decided; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VersionStep {
    /// Version routing is off: every version.
    Disabled,
    /// The version the request named.
    Requested,
    /// The request named none: the default version.
    Default,
    /// The request named none: the canary split's choice.
    Canary,
    /// Fallback: the named or split version had no usable instance; the default version.
    ToDefault,
    /// Fallback: neither had a usable instance; any version.
    ToAnyVersion,
}

impl VersionStep {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStep::Disabled => "disabled",
            VersionStep::Requested => "requested",
            VersionStep::Default => "default",
            VersionStep::Canary => "canary",
            VersionStep::ToDefault => "to_default",
            VersionStep::ToAnyVersion => "to_any_version",
        }
    }

    /// True for the fallbacks.
    pub fn is_fallback(self) -> bool {
        matches!(self, VersionStep::ToDefault | VersionStep::ToAnyVersion)
    }
}

/// Version routing; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    enabled: bool,
    default_version: String,
    /// `(version, weight)` with weight > 0, and their sum.
    split: Vec<(String, u64)>,
    total: u64,
}

impl Version {
    /// Version routing on, with `default_version` for requests that name none.
    pub fn new(default_version: impl Into<String>) -> Self {
        Version {
            enabled: true,
            default_version: default_version.into(),
            split: Vec::new(),
            total: 0,
        }
    }

    /// Version routing off: every request may go to every version.
    pub fn disabled() -> Self {
        Version {
            enabled: false,
            ..Self::new("")
        }
    }

    /// From the `routing` block: `enable_version_routing` and `default_version`.
    pub fn from_config(config: &RoutingConfig) -> Self {
        Version {
            enabled: config.enable_version_routing,
            ..Self::new(config.default_version.clone())
        }
    }

    /// A weighted canary split for requests that name no version, e.g.
    /// `[("v1", 90), ("v2", 10)]`. Zero weights are dropped; an empty split turns it off.
    pub fn with_split<S: Into<String>>(
        mut self,
        split: impl IntoIterator<Item = (S, u32)>,
    ) -> Self {
        self.split = split
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(v, w)| (v.into(), u64::from(w)))
            .collect();
        self.total = self.split.iter().map(|(_, w)| w).sum();
        self
    }

    /// True when version routing is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The default version.
    pub fn default_version(&self) -> &str {
        &self.default_version
    }

    /// The canary split, `(version, weight)`.
    pub fn split(&self) -> impl Iterator<Item = (&str, u64)> {
        self.split.iter().map(|(v, w)| (v.as_str(), *w))
    }

    /// The split's version for a roll in `0..total`.
    fn split_version(&self, roll: u64) -> Option<&str> {
        if self.total == 0 {
            return None;
        }
        let mut at = roll % self.total;
        for (v, w) in &self.split {
            if at < *w {
                return Some(v);
            }
            at -= w;
        }
        None
    }

    /// Applies the rules with `lookup` telling what a version has (e.g. its precomputed subset;
    /// `None` when no usable instance serves it). Returns what the chosen version's lookup gave
    /// (`None` for "any version") and the rule that decided.
    #[inline]
    pub fn choose<T>(
        &self,
        requested: Option<&str>,
        key: Option<&[u8]>,
        lookup: impl Fn(&str) -> Option<T>,
    ) -> (Option<T>, VersionStep) {
        if !self.enabled {
            return (None, VersionStep::Disabled);
        }
        let mut fell_back = false;
        match requested {
            Some(v) => match lookup(v) {
                Some(t) => return (Some(t), VersionStep::Requested),
                None => fell_back = true,
            },
            None => {
                if let Some(v) = (self.total > 0)
                    .then(|| self.split_version(roll(key)))
                    .flatten()
                {
                    match lookup(v) {
                        Some(t) => return (Some(t), VersionStep::Canary),
                        None => fell_back = true,
                    }
                }
            }
        }
        if let Some(t) = lookup(&self.default_version) {
            let step = if fell_back {
                VersionStep::ToDefault
            } else {
                VersionStep::Default
            };
            return (Some(t), step);
        }
        (None, VersionStep::ToAnyVersion)
    }

    /// The usable instances of `instances` this route's version selects, and the rule that
    /// decided. Empty only when no instance is usable. Computes per call: for per-request use,
    /// [`Smart`](super::Smart) precomputes its leaves once per snapshot.
    pub fn narrow<'i>(
        &self,
        instances: &'i [Instance],
        route: &Route<'_>,
    ) -> (Vec<&'i Instance>, VersionStep) {
        let usable: Vec<&Instance> = instances.iter().filter(|i| i.health.is_usable()).collect();
        let (chosen, step) = self.choose(route.version, route.key, |v| {
            let kept: Vec<&Instance> = usable
                .iter()
                .copied()
                .filter(|i| serves_version(i, v))
                .collect();
            (!kept.is_empty()).then_some(kept)
        });
        (chosen.unwrap_or(usable), step)
    }

    /// The former name of [`Version::narrow`].
    #[deprecated(note = "renamed `narrow`: \"subset\" now means deterministic subsetting only")]
    pub fn subset<'i>(
        &self,
        instances: &'i [Instance],
        route: &Route<'_>,
    ) -> (Vec<&'i Instance>, VersionStep) {
        self.narrow(instances, route)
    }
}

/// The canary roll: sticky per key (a fixed-key SipHash, the same in every process), else random.
fn roll(key: Option<&[u8]>) -> u64 {
    match key {
        Some(k) => {
            let mut h = std::hash::DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        }
        None => rand::random::<u64>(),
    }
}
