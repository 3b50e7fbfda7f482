//! Load reports for `orca_weighted_round_robin`: a backend's answer says how loaded it is
//! (`endpoint-load-metrics` in its headers, or gRPC's `endpoint-load-metrics-bin` in its
//! trailers), and the proxy hands that to the balancer that picked it, as Envoy's router does.
//!
//! The headers are read when the answer arrives; when they hold no report, the trailers that end
//! the body are read as it streams through. The report stays in the answer the client gets, as
//! Envoy leaves it: a client (or a proxy in front) may weigh by it too. A malformed report is
//! dropped (logged at debug), never a failed request; with `orca.out_of_band` on, answers are
//! not read at all.

use chi_discovery::balance::LoadSink;
use chi_discovery::orca;
use hyper::header::HeaderMap;

use crate::pick::Picked;

/// Feeds the report in an answer's `headers`; true when its trailers should be read instead.
pub(super) fn headers(picked: &Picked, headers: &HeaderMap) -> bool {
    let Some(reports) = picked.load_reports() else {
        return false;
    };
    let id = picked.instance().id.as_str();
    reports.per_request() && !orca::feed_to(headers, &**reports, id)
}

/// Feeds the report in an answer's `trailers`.
pub(super) fn trailers(picked: &Picked, trailers: &HeaderMap) {
    if let Some(reports) = picked.load_reports() {
        orca::feed_to(trailers, &**reports, &picked.instance().id);
    }
}
