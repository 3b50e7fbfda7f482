//! Which service a request names, and the path it goes with.
//!
//! By path (the default) the first path segment names the service, whatever the `Host` header
//! says: a proxy is reached by many names (its DNS name, an IP address, a load balancer's name),
//! and none of them may turn into a service name by accident. `--route-by host` is for a proxy
//! that clients reach by the service's name (`user-service.internal` pointing at the proxy).

use std::borrow::Cow;

use hyper::Uri;
use hyper::http::uri::PathAndQuery;

use crate::cli::RouteBy;

/// The service and the path to forward. By path (the default): the first path segment names
/// the service and the rest of the path goes, whatever the Host header says, so a client that
/// reaches the proxy by its own DNS name (`chi-proxy.internal/user-service/x`) gets
/// `user-service`. By host: the Host header's first DNS label, the path going as it is (`None`);
/// a Host that is an IP address or `localhost` names no service, and the path does. Borrowed
/// from the request: nothing is copied when the path goes as it is.
pub(super) fn target<'a>(
    by: RouteBy,
    host: Option<&'a str>,
    path_and_query: &'a str,
) -> Option<(&'a str, Option<Cow<'a, str>>)> {
    if by == RouteBy::Host
        && let Some(service) = host.and_then(service_of_host)
    {
        return Some((service, None));
    }
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (service, tail) = rest.split_at(end);
    if service.is_empty() || !valid_name(service) {
        return None;
    }
    let forwarded = if tail.starts_with('/') {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned(format!("/{tail}"))
    };
    Some((service, Some(forwarded)))
}

/// The service a Host header names: its first DNS label, unless it is an IP address or
/// `localhost`.
fn service_of_host(host: &str) -> Option<&str> {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let first = name.split('.').next().unwrap_or_default();
    (!first.is_empty()
        && first != "localhost"
        && valid_name(first)
        && !name.starts_with('[')
        && name.parse::<std::net::IpAddr>().is_err())
    .then_some(first)
}

impl RouteBy {
    /// The answer to a request that names no service.
    pub(super) fn hint(self) -> &'static str {
        match self {
            RouteBy::Path => {
                "chi proxy: name the service in the first path segment (/user-service/...)"
            }
            RouteBy::Host => {
                "chi proxy: name the service in the Host header (user-service.internal) or the first path segment (/user-service/...)"
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The path to send upstream: the request's own (`None`: routed by host) or what routing left of
/// it; `None` when that is not a valid URI path.
pub(super) fn forwarded_path(uri: &Uri, path: Option<Cow<'_, str>>) -> Option<PathAndQuery> {
    match path {
        None => Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
        Some(Cow::Borrowed(p)) => PathAndQuery::try_from(p).ok(),
        Some(Cow::Owned(p)) => PathAndQuery::try_from(p).ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::target;
    use crate::cli::RouteBy;

    #[test]
    fn service_from_path_or_host() {
        let t = |by: RouteBy, h: Option<&str>, p: &str| {
            target(by, h, p)
                .map(|(s, path)| (s.to_owned(), path.map_or(p.to_owned(), Cow::into_owned)))
        };
        let path = |h, p| t(RouteBy::Path, h, p);
        let host = |h, p| t(RouteBy::Host, h, p);
        assert_eq!(
            path(Some("127.0.0.1:15001"), "/user-service/api/x?q=1"),
            Some(("user-service".into(), "/api/x?q=1".into()))
        );
        assert_eq!(
            path(Some("localhost:15001"), "/user-service"),
            Some(("user-service".into(), "/".into()))
        );
        assert_eq!(
            path(Some("127.0.0.1"), "/user-service?x=1"),
            Some(("user-service".into(), "/?x=1".into()))
        );
        // Reached by its own DNS name, the proxy still routes by path.
        assert_eq!(
            path(Some("chi-proxy.internal"), "/user-service/x"),
            Some(("user-service".into(), "/x".into()))
        );
        assert_eq!(path(Some("user-service"), "/"), None);
        assert_eq!(path(None, "/"), None);
        assert_eq!(path(None, "/bad name/x"), None);

        assert_eq!(
            host(Some("user-service:15001"), "/api/x"),
            Some(("user-service".into(), "/api/x".into()))
        );
        assert_eq!(
            host(Some("user-service.internal"), "/"),
            Some(("user-service".into(), "/".into()))
        );
        // An address names no service: the path does.
        assert_eq!(
            host(Some("127.0.0.1:15001"), "/user-service/api"),
            Some(("user-service".into(), "/api".into()))
        );
        assert_eq!(
            host(Some("localhost"), "/user-service"),
            Some(("user-service".into(), "/".into()))
        );
        assert_eq!(host(Some("[::1]:15001"), "/"), None);
        assert_eq!(host(None, "/"), None);
    }
}
