//! The ORCA messages, declared by hand as prost messages.
//!
//! Source: the CNCF xDS API, `xds/data/orca/v3/orca_load_report.proto` and
//! `xds/service/orca/v3/orca.proto`, as vendored by the npm package `@grpc/grpc-js` 1.14.7 under
//! `proto/xds/` (the copy gRPC's own Node server and client use). `envoy-types` does not carry
//! them. Field numbers and types are the proto's, one for one; the `validate.rules` options
//! (values `>= 0`) are checked by [`super::check`] instead.
//!
//! Why by hand rather than generated: three small messages do not justify a build script, and
//! a generated file would need `protoc` (which library users must not need) or a checked-in
//! output that hides the field numbers in generated noise. Here every field says its number and
//! the proto it mirrors, and the wire tests (`orca::tests`) decode bytes encoded by the proto's
//! own definition (grpc-go's captured header, Envoy's test vector).

use std::collections::HashMap;

use serde::Deserialize;

use super::json;

/// `xds.data.orca.v3.OrcaLoadReport`: what a backend says about its own load.
///
/// Deserializes from proto3 JSON (the field names or their lowerCamelCase JSON names; numbers or
/// numeric strings), as the `JSON` form of the `endpoint-load-metrics` header carries it.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrcaLoadReport {
    /// CPU utilization, a fraction of the CPUs available (may exceed 1.0). Field 1.
    #[prost(double, tag = "1")]
    #[serde(default, alias = "cpuUtilization", deserialize_with = "json::double")]
    pub cpu_utilization: f64,
    /// Memory utilization, a fraction in `[0, 1]`. Field 2.
    #[prost(double, tag = "2")]
    #[serde(default, alias = "memUtilization", deserialize_with = "json::double")]
    pub mem_utilization: f64,
    /// Requests per second, whole (deprecated in the proto for `rps_fractional`). Field 3.
    #[prost(uint64, tag = "3")]
    #[serde(default, deserialize_with = "json::uint64")]
    pub rps: u64,
    /// Application-specific costs of the request, absolute values. Field 4.
    #[prost(map = "string, double", tag = "4")]
    #[serde(default, alias = "requestCost", deserialize_with = "json::double_map")]
    pub request_cost: HashMap<String, f64>,
    /// Resource utilizations, fractions in `[0, 1]`. Field 5.
    #[prost(map = "string, double", tag = "5")]
    #[serde(default, deserialize_with = "json::double_map")]
    pub utilization: HashMap<String, f64>,
    /// Requests per second. Field 6.
    #[prost(double, tag = "6")]
    #[serde(default, alias = "rpsFractional", deserialize_with = "json::double")]
    pub rps_fractional: f64,
    /// Errors per second. Field 7.
    #[prost(double, tag = "7")]
    #[serde(default, deserialize_with = "json::double")]
    pub eps: f64,
    /// Application-specific opaque metrics. Field 8.
    #[prost(map = "string, double", tag = "8")]
    #[serde(default, alias = "namedMetrics", deserialize_with = "json::double_map")]
    pub named_metrics: HashMap<String, f64>,
    /// The application's own utilization (may exceed 1.0), preferred over the CPU's by
    /// weighted round robin when above 0. Field 9.
    #[prost(double, tag = "9")]
    #[serde(
        default,
        alias = "applicationUtilization",
        deserialize_with = "json::double"
    )]
    pub application_utilization: f64,
}

/// `xds.service.orca.v3.OrcaLoadReportRequest`: how often an out-of-band stream reports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReportRequest {
    /// `google.protobuf.Duration report_interval = 1`.
    #[prost(message, optional, tag = "1")]
    pub report_interval: Option<prost_types::Duration>,
    /// `repeated string request_cost_names = 2`: the request costs to report (all when empty).
    #[prost(string, repeated, tag = "2")]
    pub request_cost_names: Vec<String>,
}

/// The full name of the out-of-band service.
pub const SERVICE: &str = "xds.service.orca.v3.OpenRcaService";
/// The path of its one method, `StreamCoreMetrics`.
pub const STREAM_CORE_METRICS: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";
