//! Load reports for `orca_weighted_round_robin`: a backend's answer says how loaded it is in
//! its `endpoint-load-metrics` header (Envoy's `TEXT`, `JSON` or `BIN` form, or gRPC's
//! `endpoint-load-metrics-bin`), and the proxy hands that to the balancer that picked it, as
//! Envoy's router does. Upstream connections are HTTP/1.1, whose answers carry no trailers, so
//! the headers are where reports are.
//!
//! The report stays in the answer the client gets, as Envoy leaves it: a client (or a proxy in
//! front) may weigh by it too. A malformed report is dropped (logged at debug), never a failed
//! request; with `orca.out_of_band` on, answers are not read at all.

use chi_discovery::orca;
use hyper::header::HeaderMap;

use crate::pick::Picked;

/// Hands the report in an answer's `headers`, if any, to the balancer that picked.
pub(super) fn headers(picked: &Picked, headers: &HeaderMap) {
    if let Some(reports) = picked.load_reports() {
        orca::feed_to(headers, &**reports, &picked.instance().id);
    }
}
