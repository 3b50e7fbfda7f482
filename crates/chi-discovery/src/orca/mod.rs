//! ORCA load reports (feature `orca`): servers say how loaded they are, clients balance by it.
//!
//! ORCA (*Open Request Cost Aggregation*, gRFC A51; Envoy's `endpoint-load-metrics`) is the
//! wire format behind gRPC's and Envoy's load-report balancing. A backend attaches an
//! [`OrcaLoadReport`] (CPU and application utilization, queries and errors per second, named
//! metrics) to its responses, or streams one every few seconds over
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`. chi speaks it on both sides:
//!
//! - **Reading** (clients): [`header`] parses the `endpoint-load-metrics-bin` trailer and the
//!   `endpoint-load-metrics` header in Envoy's `TEXT`, `JSON` and `BIN` forms, with a typed
//!   [`ReportError`] for bad input; [`FeedLayer`] (feature `tower`) reads every response's
//!   report into a [`LoadReporter`](crate::balance::LoadReporter); [`oob`] (feature `grpc`) is
//!   the out-of-band client. The reports weigh `orca_weighted_round_robin`
//!   ([`crate::balance::orca`]).
//! - **Reporting** (servers): [`ServerMetrics`] is what this process reports: its CPU
//!   utilization (read from `/proc`), the application utilization and named metrics the service
//!   sets, and the queries and errors per second the layer counts; [`CallMetrics`] adds a
//!   request's own metrics. [`ReportLayer`] (feature `tower`; axum's [`Server::orca`] and tonic
//!   servers) attaches a report to every response, and [`OpenRcaServer`] (feature `grpc`)
//!   streams them out of band, so gRPC clients in any language (grpc-go, grpc-java, grpc-js,
//!   C-core) can weigh chi services.
//!
//! [`Server::orca`]: crate::integration::axum::Server::orca

pub mod header;
mod json;
mod proto;
mod recorder;

mod cpu;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "grpc")]
pub mod oob;

#[cfg(test)]
mod tests;

pub use proto::{OrcaLoadReport, OrcaLoadReportRequest, SERVICE, STREAM_CORE_METRICS};
pub use recorder::{CallMetrics, ServerMetrics};

#[cfg(feature = "tower")]
pub use layer::{
    FeedBody, FeedFuture, FeedLayer, FeedService, ReportBody, ReportFuture, ReportLayer,
    ReportService,
};
#[cfg(feature = "grpc")]
pub use oob::OpenRcaServer;

use crate::balance::{LoadSink, ReportedLoad};

/// Why a load report was refused: the form, the entry or the field, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The `endpoint-load-metrics` value starts with none of the three forms.
    #[error(
        "endpoint-load-metrics: unsupported format {prefix:?}, expected a value starting with `TEXT `, `JSON ` or `BIN `"
    )]
    Format {
        /// The start of the value (at most 5 characters).
        prefix: String,
    },
    /// The value is not UTF-8 text.
    #[error("endpoint-load-metrics: the value is not text")]
    NotText,
    /// An entry of the `TEXT` form.
    #[error("endpoint-load-metrics TEXT entry {entry:?}: {reason}")]
    Text {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `JSON` form.
    #[error("endpoint-load-metrics JSON: {0}")]
    Json(String),
    /// Base64 of the binary forms.
    #[error("load report: invalid base64: {0}")]
    Base64(String),
    /// The bytes are not an `OrcaLoadReport`.
    #[error("load report: not an xds.data.orca.v3.OrcaLoadReport: {0}")]
    Proto(String),
    /// A value out of its range.
    #[error("load report field {field}: {expected}, got {value}")]
    Value {
        /// The field (`named_metrics.NAME` for a map entry).
        field: String,
        /// The value.
        value: f64,
        /// What was expected.
        expected: &'static str,
    },
}

/// Checks the values of a report: every value a finite number, utilizations, rates and the
/// like at least 0 (the proto's `validate.rules`), named metrics and request costs any finite
/// number.
pub fn check(report: &OrcaLoadReport) -> Result<(), ReportError> {
    const AT_LEAST_0: &str = "must be a finite number >= 0";
    let bad = |field: &str, value: f64, expected| ReportError::Value {
        field: field.to_owned(),
        value,
        expected,
    };
    for (field, value) in [
        ("cpu_utilization", report.cpu_utilization),
        ("mem_utilization", report.mem_utilization),
        ("application_utilization", report.application_utilization),
        ("rps_fractional", report.rps_fractional),
        ("eps", report.eps),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(bad(field, value, AT_LEAST_0));
        }
    }
    for (prefix, map, non_negative) in [
        ("utilization", &report.utilization, true),
        ("named_metrics", &report.named_metrics, false),
        ("request_cost", &report.request_cost, false),
    ] {
        for (k, &v) in map {
            if !v.is_finite() || (non_negative && v < 0.0) {
                let expected = if non_negative {
                    AT_LEAST_0
                } else {
                    "must be a finite number"
                };
                return Err(bad(&format!("{prefix}.{k}"), v, expected));
            }
        }
    }
    Ok(())
}

impl From<&OrcaLoadReport> for ReportedLoad {
    /// The fields weighted round robin reads: `rps_fractional` (else the deprecated whole
    /// `rps`), `eps`, and the two utilizations.
    fn from(r: &OrcaLoadReport) -> Self {
        ReportedLoad {
            qps: if r.rps_fractional > 0.0 {
                r.rps_fractional
            } else {
                r.rps as f64
            },
            eps: r.eps,
            cpu_utilization: r.cpu_utilization,
            application_utilization: r.application_utilization,
        }
    }
}

/// Reads the report of a response's headers or trailers, if any, and hands it to `reporter`
/// when its sink wants per-request reports. A bad report is logged (debug) and dropped: a
/// backend's malformed metrics never fail the call. True when a report was handed over.
pub fn feed(headers: &http::HeaderMap, reporter: &crate::balance::LoadReporter) -> bool {
    reporter.per_request() && feed_to(headers, reporter, reporter.instance_id())
}

/// [`feed`] into `sink` for instance `instance_id` (e.g. a service's
/// [`LoadReports`](crate::balance::LoadReports), without making a reporter).
pub fn feed_to(headers: &http::HeaderMap, sink: &dyn LoadSink, instance_id: &str) -> bool {
    if !sink.per_request() {
        return false;
    }
    match header::from_headers(headers) {
        Some(Ok(report)) => {
            sink.record(instance_id, &ReportedLoad::from(&report));
            true
        }
        Some(Err(e)) => {
            tracing::debug!(instance = instance_id, error = %e, "load report ignored");
            false
        }
        None => false,
    }
}
