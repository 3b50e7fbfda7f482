//! One value per resource type.
//!
//! A stream keeps its bookkeeping per resource type (what it was sent, what the client
//! answered). In a `BTreeMap<Kind, T>` even one entry allocates a node of eleven, a few KiB per
//! stream when `T` is a few hundred bytes; ten thousand streams make that tens of MiB. Here
//! four pointer-sized slots, and a value allocated only for the types the client asked for
//! (most ask for one or two).

use super::resources::Kind;

/// A value for some of the four resource types.
#[derive(Debug, Clone)]
pub(crate) struct ByKind<T>([Option<Box<T>>; 4]);

impl<T> Default for ByKind<T> {
    fn default() -> Self {
        ByKind([None, None, None, None])
    }
}

impl<T> ByKind<T> {
    /// The value of `kind`, when it has one.
    pub(crate) fn get(&self, kind: &Kind) -> Option<&T> {
        self.0[kind.index()].as_deref()
    }

    pub(crate) fn get_mut(&mut self, kind: &Kind) -> Option<&mut T> {
        self.0[kind.index()].as_deref_mut()
    }

    /// The value of `kind`, made the default first if it has none.
    pub(crate) fn entry(&mut self, kind: Kind) -> &mut T
    where
        T: Default,
    {
        self.0[kind.index()].get_or_insert_with(Box::default)
    }

    /// The kinds that have a value, in push order, with it.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Kind, &T)> {
        Kind::PUSH_ORDER
            .into_iter()
            .zip(&self.0)
            .filter_map(|(k, v)| Some((k, v.as_deref()?)))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten().map(|v| &**v)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut().flatten().map(|v| &mut **v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_slot_and_iterates_in_push_order() {
        let mut by = ByKind::<u32>::default();
        *by.entry(Kind::Route) += 4;
        *by.entry(Kind::Cluster) += 1;
        *by.entry(Kind::Route) += 4;
        assert_eq!(by.get(&Kind::Route), Some(&8));
        assert_eq!(by.get(&Kind::Endpoints), None);
        let kinds: Vec<Kind> = by.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [Kind::Cluster, Kind::Route]);
        by.values_mut().for_each(|v| *v = 0);
        assert_eq!(by.values().sum::<u32>(), 0);
    }
}
