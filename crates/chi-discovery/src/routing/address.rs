//! The client's region from its address, for requests that do not say where they come from.
//!
//! The Go sketch's `resolveRegionByIP`: a table of address blocks to regions
//! (`routing.client_regions`, [`ClientRegions`]), looked up by the longest matching prefix, as an
//! IP routing table is (RFC 4632 §5.1), for IPv4 and IPv6 alike. A request that names its region
//! or zone (`X-Client-Region`, `X-Client-Zone`) is routed by what it says; one that names neither
//! is placed by its address.
//!
//! Which address: the connection's peer, unless the peer is a proxy this process trusts
//! (`routing.trusted_proxies`, [`TrustedProxies`]), in which case `X-Forwarded-For` is read the
//! usual way (MDN, "X-Forwarded-For: selecting an IP address"; nginx's `real_ip_recursive`): from
//! the right, skipping the addresses of trusted proxies; the first one that is not trusted is the
//! client. Everything left of it was written by the client itself (or by proxies nobody vouches
//! for), so it can be forged and is never used. With no trusted proxy, the header is ignored.

use std::net::IpAddr;

use ipnet::IpNet;

/// Address blocks to regions, matched by the longest prefix; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRegions {
    /// Longest prefix first, so the first block that holds an address is its longest match.
    blocks: Vec<(IpNet, String)>,
}

impl ClientRegions {
    /// The table of `blocks` (a block listed twice: the later entry wins).
    pub fn new<R: Into<String>>(blocks: impl IntoIterator<Item = (IpNet, R)>) -> Self {
        let mut table: Vec<(IpNet, String)> = Vec::new();
        for (net, region) in blocks {
            let net = net.trunc();
            table.retain(|(n, _)| *n != net);
            table.push((net, region.into()));
        }
        table.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        ClientRegions { blocks: table }
    }

    /// The region of the longest block that holds `ip` (an IPv4 address written as IPv6,
    /// `::ffff:10.1.2.3`, counts as the IPv4 one).
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.blocks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, region)| region.as_str())
    }

    /// True when no block is configured.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The blocks, longest prefix first.
    pub fn blocks(&self) -> impl Iterator<Item = (&IpNet, &str)> {
        self.blocks.iter().map(|(n, r)| (n, r.as_str()))
    }
}

/// The proxies whose `X-Forwarded-For` is believed; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Proxies at the addresses of `nets`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies {
            nets: nets.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// True when no proxy is trusted (`X-Forwarded-For` is never read).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` is a trusted proxy's.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The trusted blocks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The client's address: `peer` (the connection's), or when `peer` is a trusted proxy, the
    /// rightmost address of `forwarded_for` (the `X-Forwarded-For` values, in the order they
    /// came) that is not a trusted proxy's. An entry that is not an address ends the walk at the
    /// trusted hop right of it, which reported it; so does the left end of the list.
    pub fn client<'v>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'v str>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for value in forwarded_for.rev() {
            for entry in value.rsplit(',') {
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`10.0.0.1:443`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a block")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_longest_prefix_wins_for_v4_and_v6() {
        let table = ClientRegions::new([
            (net("10.0.0.0/8"), "us-east-1"),
            (net("10.2.0.0/16"), "us-west-2"),
            (net("10.2.3.0/24"), "eu-west-1"),
            (net("2001:db8::/32"), "us-east-1"),
            (net("2001:db8:2::/48"), "us-west-2"),
        ]);
        let region = |s: &str| table.region_of(ip(s));
        assert_eq!(region("10.1.2.3"), Some("us-east-1"));
        assert_eq!(region("10.2.9.9"), Some("us-west-2"));
        assert_eq!(region("10.2.3.4"), Some("eu-west-1"));
        assert_eq!(region("192.168.1.1"), None);
        assert_eq!(region("2001:db8:1::7"), Some("us-east-1"));
        assert_eq!(region("2001:db8:2::7"), Some("us-west-2"));
        assert_eq!(region("2001:db9::1"), None);
        // An IPv4 client on a dual-stack socket.
        assert_eq!(region("::ffff:10.2.9.9"), Some("us-west-2"));
        assert_eq!(ClientRegions::default().region_of(ip("10.0.0.1")), None);
    }

    #[test]
    fn forwarded_for_is_read_only_through_trusted_proxies() {
        let trusted = TrustedProxies::new([net("10.0.0.0/24"), net("fd00::/8")]);
        let client = |peer: &str, xff: &[&str]| trusted.client(ip(peer), xff.iter().copied());
        // An untrusted peer is the client, whatever it forwards.
        assert_eq!(client("192.0.2.7", &["203.0.113.9"]), ip("192.0.2.7"));
        // Through one trusted proxy: its last entry.
        assert_eq!(client("10.0.0.2", &["203.0.113.9"]), ip("203.0.113.9"));
        // The rightmost untrusted entry; what the client wrote left of it is not believed.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 203.0.113.9, 10.0.0.3"]),
            ip("203.0.113.9")
        );
        // Several headers are one list, in order.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1", "203.0.113.9 , 10.0.0.3"]),
            ip("203.0.113.9")
        );
        // Ports, IPv6 and mapped addresses.
        assert_eq!(
            client("fd00::1", &["[2001:db8::5]:443, 10.0.0.3:80"]),
            ip("2001:db8::5")
        );
        assert_eq!(
            client("::ffff:10.0.0.2", &["203.0.113.9"]),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the trusted hop that reported it; no header, the peer.
        assert_eq!(
            client("10.0.0.2", &["203.0.113.9, unknown"]),
            ip("10.0.0.2")
        );
        assert_eq!(
            client("10.0.0.2", &["203.0.113.9, unknown, 10.0.0.3"]),
            ip("10.0.0.3")
        );
        assert_eq!(client("10.0.0.2", &[]), ip("10.0.0.2"));
        // Every entry trusted: the leftmost.
        assert_eq!(client("10.0.0.2", &["10.0.0.5, 10.0.0.3"]), ip("10.0.0.5"));
        // Nobody trusted: the header is never read.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("10.0.0.2"), ["203.0.113.9"].into_iter()),
            ip("10.0.0.2")
        );
    }
}
