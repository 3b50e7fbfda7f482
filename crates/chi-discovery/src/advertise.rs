//! The address a registration advertises.
//!
//! A server that listens on every interface is configured with `address: "0.0.0.0"` (the
//! example `chi-config.yaml` is), but that is a bind address, not one a peer can call: Consul's
//! agent refuses to register it ("Invalid service address") and the other registries would hand
//! it to every client. As go-micro and the Nacos clients do, an unspecified address (`0.0.0.0`,
//! `::`) therefore means "this host": [`ServiceConfig::advertised`] replaces it with
//! [`host_address`], and [`Chi`](crate::Chi) registers what it returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

use crate::instance::ServiceConfig;

impl ServiceConfig {
    /// This registration as peers must see it: an unspecified address (`0.0.0.0`, `::`,
    /// `[::]`) becomes this host's address ([`host_address`], of the same family); any other
    /// address is kept. Without a configured `id`, the instance id follows the address.
    pub fn advertised(mut self) -> Self {
        let ip = self
            .address
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        if let Ok(ip) = ip
            && ip.is_unspecified()
        {
            let host = host_address(ip.is_ipv6());
            tracing::info!(service = %self.name, from = %self.address, to = %host, "registration address is unspecified; advertising this host's address");
            self.address = host.to_string();
        }
        self
    }
}

/// The address this host reaches other hosts from: the source address the kernel chooses for a
/// route to a public address (found by connecting a UDP socket, which sends nothing; the
/// destination is a documentation address, RFC 5737 / RFC 3849), or loopback when the host
/// has no such route.
pub fn host_address(ipv6: bool) -> IpAddr {
    let (bind, probe, loopback) = if ipv6 {
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
    };
    UdpSocket::bind((bind, 0))
        .and_then(|s| s.connect((probe, 9)).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_becomes_this_hosts() {
        let r = ServiceConfig::new("svc", "0.0.0.0", 8080).advertised();
        let ip: IpAddr = r.address.parse().expect("an IP address");
        assert!(ip.is_ipv4() && !ip.is_unspecified(), "{ip}");
        assert_eq!(ip, host_address(false));
        assert_eq!(r.instance_id(), format!("svc-{ip}-8080"), "the id follows");

        for v6 in ["::", "[::]"] {
            let r = ServiceConfig::new("svc", v6, 8080).advertised();
            let ip: IpAddr = r.address.parse().expect("an IP address");
            assert!(ip.is_ipv6() && !ip.is_unspecified(), "{v6} -> {ip}");
        }
    }

    #[test]
    fn other_addresses_and_configured_ids_are_kept() {
        for address in ["10.0.0.7", "127.0.0.1", "::1", "user-7.internal", ""] {
            let r = ServiceConfig::new("svc", address, 8080).advertised();
            assert_eq!(r.address, address);
        }
        let mut with_id = ServiceConfig::new("svc", "0.0.0.0", 8080);
        with_id.id = Some("svc-1".to_owned());
        assert_eq!(with_id.advertised().instance_id(), "svc-1");
    }
}
