//! Header rules of a proxy hop: the hop-by-hop headers go (RFC 9110 §7.6.1), `X-Forwarded-For`
//! gains the client's address (and tells it, when a trusted proxy sent it), and answers name the
//! instance that gave them.
//!
//! Kept apart because they run on every request and every response, and were measured: the
//! common case (no hop-by-hop header, no earlier `X-Forwarded-For`) allocates nothing.

use std::net::{IpAddr, SocketAddr};

use chi_discovery::routing::TrustedProxies;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header naming the instance that answered, on every proxied response.
pub(super) const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-chi-upstream");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const HOPS: usize = 9;
/// Headers that belong to one hop only (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names marks the hop-by-hop ones present; most messages have none, and
    // a backend's answer usually has only `Connection: keep-alive`. Nothing is allocated then.
    let mut present = [false; HOPS];
    for name in headers.keys() {
        let i = match name.as_str() {
            "connection" => 0,
            "proxy-connection" => 1,
            "keep-alive" => 2,
            "te" => 3,
            "trailer" => 4,
            "transfer-encoding" => 5,
            "upgrade" => 6,
            "proxy-authenticate" => 7,
            "proxy-authorization" => 8,
            _ => continue,
        };
        present[i] = true;
    }
    if !present.contains(&true) {
        return;
    }
    // Headers that `Connection` names, when the message has them (`keep-alive` and `close`
    // usually name none).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !(n.is_empty()
                || n.eq_ignore_ascii_case("keep-alive")
                || n.eq_ignore_ascii_case("close"))
                && headers.contains_key(*n)
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
}

/// The client's address: the peer's, or when the peer is a trusted proxy, what its
/// `X-Forwarded-For` says (the rightmost address of no trusted proxy; see
/// [`TrustedProxies::client`]). Read before this hop adds the peer to the header.
pub(super) fn client_address(
    headers: &HeaderMap,
    peer: SocketAddr,
    trusted: &TrustedProxies,
) -> IpAddr {
    if trusted.is_empty() {
        return peer.ip();
    }
    let forwarded = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    trusted.client(peer.ip(), forwarded)
}

/// Adds the client's address to `X-Forwarded-For`; `peer_ip` is that address as a header value,
/// made once per connection.
pub(super) fn forwarded_for(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    peer_ip: Option<&HeaderValue>,
) {
    match (
        headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
        peer_ip,
    ) {
        (None, Some(ip)) => {
            headers.insert(X_FORWARDED_FOR, ip.clone());
        }
        (prev, _) => {
            let value = match prev {
                Some(prev) => format!("{prev}, {}", peer.ip()),
                None => peer.ip().to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(X_FORWARDED_FOR, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderMap, HeaderValue};

    use super::{forwarded_for, strip_hop_by_hop};

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "yes"),
            ("content-type", "text/plain"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-keep"]);

        let mut plain = HeaderMap::new();
        plain.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn forwarded_for_adds_the_client() {
        let peer = "10.0.0.9:5000".parse().expect("address");
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        forwarded_for(&mut h, peer, Some(&ip));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        forwarded_for(&mut h, peer, Some(&ip));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 10.0.0.9");
    }
}
