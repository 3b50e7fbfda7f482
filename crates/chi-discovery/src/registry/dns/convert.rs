//! DNS records to chi instances: SRV records by RFC 2782's rules, A/AAAA records at a fixed port.
//!
//! Pure functions over records already fetched, so the rules are tested without a server:
//!
//! - **Priority.** RFC 2782: "a client MUST attempt to contact the target host with the
//!   lowest-numbered priority it can reach". The resolver hands [`levels`] lowest first and stops
//!   at the first level with an instance; only that level's records become instances, so every
//!   balancer, router and xDS client of chi fails over the way the zone says without knowing
//!   about priorities. A level is usable while one of its targets resolves to an address; the
//!   next level serves only when none does (or the level is gone from DNS).
//! - **Weight.** Within a level, a record's weight is the instance's weight, except that weight 0
//!   becomes 1. RFC 2782 orders weight-0 records first and picks one when a uniform draw over
//!   `0..=sum` lands on 0, a chance of `1 / (sum + 1)`: exactly what weight 1 beside the others
//!   gives it in chi's weighted balancers. A level of only weight-0 records ("no server selection
//!   to do", the RFC's advice) is then spread evenly. (chi's weight 0 means "out of rotation",
//!   which the RFC's weight 0 is not.)
//! - **Unusable records.** A target of `.` ("the service is decidedly not available at this
//!   domain", RFC 2782) and port 0 give no instance.
//! - **Identity.** An instance is an address and a port: `SERVICE-ADDRESS-PORT`, chi's default id.
//!   Two records that reach the same address and port are one instance with their weights added.
//!   The record's target, priority and weight are kept in the metadata (`dns_target`,
//!   `dns_priority`, `dns_weight`); its TTL is not, since a caching resolver counts it down and
//!   every refresh would look like an update.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::instance::Instance;

/// Metadata key: the SRV record's target host.
pub const META_TARGET: &str = "dns_target";
/// Metadata key: the SRV record's priority (the level that serves).
pub const META_PRIORITY: &str = "dns_priority";
/// Metadata key: the SRV record's weight as the zone gives it (0 stays 0 here).
pub const META_WEIGHT: &str = "dns_weight";

/// One SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SrvRecord {
    pub(super) priority: u16,
    pub(super) weight: u16,
    pub(super) port: u16,
    /// The target host, as [`host`] writes it.
    pub(super) target: String,
}

/// A host name as chi compares it: lowercase, without the final dot.
pub(super) fn host(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The records that can serve, by priority level, lowest first (see the module docs).
pub(super) fn levels(records: Vec<SrvRecord>) -> Vec<(u16, Vec<SrvRecord>)> {
    let mut by_priority: BTreeMap<u16, Vec<SrvRecord>> = BTreeMap::new();
    for r in records {
        if r.port == 0 || r.target.is_empty() {
            continue;
        }
        by_priority.entry(r.priority).or_default().push(r);
    }
    by_priority.into_iter().collect()
}

/// The chi weight of an SRV weight (see the module docs).
pub(super) fn weight(srv_weight: u16) -> u32 {
    u32::from(srv_weight).max(1)
}

/// The instances of one level: every address of every record's target at the record's port.
/// `addresses` maps a target ([`host`]) to its addresses; a target without any gives nothing.
pub(super) fn level_instances(
    service: &str,
    records: &[SrvRecord],
    addresses: &HashMap<String, Vec<IpAddr>>,
) -> Vec<Instance> {
    let mut out: BTreeMap<String, Instance> = BTreeMap::new();
    for r in records {
        for ip in addresses.get(&r.target).map(Vec::as_slice).unwrap_or(&[]) {
            let i = Instance::new(service, ip.to_string(), r.port)
                .with_weight(weight(r.weight))
                .with_meta(META_TARGET, &r.target)
                .with_meta(META_PRIORITY, r.priority.to_string())
                .with_meta(META_WEIGHT, r.weight.to_string());
            match out.get_mut(&i.id) {
                Some(seen) => {
                    seen.weight = seen.weight.saturating_add(i.weight);
                    let total = seen
                        .meta(META_WEIGHT)
                        .and_then(|w| w.parse::<u32>().ok())
                        .unwrap_or(0)
                        .saturating_add(u32::from(r.weight));
                    seen.meta.insert(META_WEIGHT.into(), total.to_string());
                }
                None => {
                    out.insert(i.id.clone(), i);
                }
            }
        }
    }
    out.into_values().collect()
}

/// The instances of an A/AAAA answer: each address once, at `port`, in id order.
pub(super) fn address_instances(service: &str, ips: &[IpAddr], port: u16) -> Vec<Instance> {
    let mut out: BTreeMap<String, Instance> = BTreeMap::new();
    for ip in ips {
        let i = Instance::new(service, ip.to_string(), port);
        out.entry(i.id.clone()).or_insert(i);
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: host(target),
        }
    }

    fn addrs(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<IpAddr>> {
        pairs
            .iter()
            .map(|(t, ips)| {
                (
                    host(t),
                    ips.iter().map(|i| i.parse().expect("ip")).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn levels_are_lowest_first_without_unusable_records() {
        let got = levels(vec![
            srv(10, 1, 80, "b.test."),
            srv(0, 1, 80, "a.test."),
            srv(0, 1, 0, "zero-port.test."),
            srv(5, 1, 80, "."),
            srv(10, 2, 81, "C.Test."),
        ]);
        let shape: Vec<(u16, Vec<&str>)> = got
            .iter()
            .map(|(p, rs)| (*p, rs.iter().map(|r| r.target.as_str()).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![(0, vec!["a.test"]), (10, vec!["b.test", "c.test"])]
        );
    }

    #[test]
    fn a_level_gives_every_address_at_the_record_port_with_rfc_weights() {
        let records = [srv(0, 0, 8081, "a.test."), srv(0, 10, 8082, "b.test.")];
        let list = level_instances(
            "web",
            &records,
            &addrs(&[("a.test", &["10.0.0.1"]), ("b.test", &["10.0.0.2", "::1"])]),
        );
        let got: Vec<(&str, u16, u32)> = list
            .iter()
            .map(|i| (i.address.as_str(), i.port, i.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1", 8081, 1),
                ("10.0.0.2", 8082, 10),
                ("::1", 8082, 10)
            ]
        );
        assert_eq!(list[0].id, "web-10.0.0.1-8081");
        assert_eq!(list[0].meta(META_TARGET), Some("a.test"));
        assert_eq!(list[0].meta(META_WEIGHT), Some("0"));
        assert_eq!(list[2].authority(), "[::1]:8082");
        // A target that does not resolve gives nothing.
        assert!(level_instances("web", &records, &HashMap::new()).is_empty());
    }

    #[test]
    fn records_reaching_one_address_and_port_are_one_instance() {
        let records = [srv(0, 3, 80, "a.test"), srv(0, 4, 80, "alias.test")];
        let list = level_instances(
            "web",
            &records,
            &addrs(&[("a.test", &["10.0.0.1"]), ("alias.test", &["10.0.0.1"])]),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].weight, 7);
        assert_eq!(list[0].meta(META_WEIGHT), Some("7"));
    }

    #[test]
    fn addresses_become_instances_once_each() {
        let ips: Vec<IpAddr> = ["10.0.0.2", "10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|i| i.parse().expect("ip"))
            .collect();
        let list = address_instances("web", &ips, 8080);
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["web-10.0.0.1-8080", "web-10.0.0.2-8080"]);
        assert!(address_instances("web", &[], 8080).is_empty());
    }

    proptest! {
        /// Any records: no panic, valid instances, one priority level, weights of at least 1.
        #[test]
        fn any_records_give_valid_instances_of_one_level(
            records in proptest::collection::vec((0u16..3, any::<u16>(), any::<u16>(), 0usize..4), 0..12),
            resolving in proptest::collection::vec(any::<bool>(), 4),
        ) {
            let targets = ["a.test", "b.test", "c.test", "."];
            let records: Vec<SrvRecord> = records
                .into_iter()
                .map(|(p, w, port, t)| srv(p, w, port, targets[t]))
                .collect();
            let map: HashMap<String, Vec<IpAddr>> = targets
                .iter()
                .zip(&resolving)
                .enumerate()
                .filter(|(_, (_, r))| **r)
                .map(|(n, (t, _))| (host(t), vec![IpAddr::from([10, 0, 0, n as u8])]))
                .collect();
            let mut served = None;
            for (priority, level) in levels(records) {
                let list = level_instances("svc", &level, &map);
                if !list.is_empty() {
                    served = Some((priority, list));
                    break;
                }
            }
            if let Some((priority, list)) = served {
                let priority = priority.to_string();
                for i in &list {
                    prop_assert!(i.validate().is_ok());
                    prop_assert!(i.weight >= 1);
                    prop_assert_eq!(i.meta(META_PRIORITY), Some(priority.as_str()));
                }
            }
        }
    }
}
