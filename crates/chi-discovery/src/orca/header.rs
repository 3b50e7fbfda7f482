//! Per-request reports on the wire: gRPC's `endpoint-load-metrics-bin` trailer and HTTP's
//! `endpoint-load-metrics` header in Envoy's three forms.
//!
//! As Envoy's `parseOrcaLoadReportHeaders` reads them (`source/common/orca/orca_parser.cc`):
//!
//! - `endpoint-load-metrics-bin`: the binary proto, base64 (padded or not; gRPC sends it
//!   unpadded in trailers). Read first when both are present.
//! - `endpoint-load-metrics: TEXT cpu_utilization=0.3, named_metrics.foo=1`: comma-separated
//!   `name=value` (or `name:value`) pairs; names are `cpu_utilization`, `mem_utilization`,
//!   `application_utilization`, `rps_fractional`, `eps`, and `named_metrics.NAME`,
//!   `utilization.NAME`, `request_cost.NAME`; a name twice is an error.
//! - `endpoint-load-metrics: JSON {"cpu_utilization": 0.3}`: proto3 JSON, unknown fields refused.
//! - `endpoint-load-metrics: BIN <base64>`: the binary proto.
//!
//! Every form then passes the same value checks ([`super::check`]). Writing: [`header_value`] in
//! the text form when every name can be written in it, else the binary form; [`bin_value`] for
//! the gRPC trailer.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use prost::Message;

use super::{OrcaLoadReport, ReportError, check};

/// The header (HTTP) of per-request reports.
pub const HEADER: &str = "endpoint-load-metrics";
/// The binary header (gRPC trailers) of per-request reports.
pub const BIN_HEADER: &str = "endpoint-load-metrics-bin";

/// Base64, standard alphabet, padding or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The report in `headers` (a response's headers or trailers): the `-bin` header first, then
/// the text one. `None` when neither is there.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Result<OrcaLoadReport, ReportError>> {
    static BIN: http::HeaderName = http::HeaderName::from_static(BIN_HEADER);
    static TEXT: http::HeaderName = http::HeaderName::from_static(HEADER);
    if let Some(v) = headers.get(&BIN) {
        return Some(parse_bin(v.as_bytes()));
    }
    headers.get(&TEXT).map(|v| parse(v.as_bytes()))
}

/// Parses an `endpoint-load-metrics-bin` value: base64 of the binary proto.
pub fn parse_bin(value: &[u8]) -> Result<OrcaLoadReport, ReportError> {
    let bytes = BASE64
        .decode(value.trim_ascii())
        .map_err(|e| ReportError::Base64(e.to_string()))?;
    let report =
        OrcaLoadReport::decode(bytes.as_slice()).map_err(|e| ReportError::Proto(e.to_string()))?;
    check(&report)?;
    Ok(report)
}

/// Parses an `endpoint-load-metrics` value in any of its three forms.
pub fn parse(value: &[u8]) -> Result<OrcaLoadReport, ReportError> {
    let text = std::str::from_utf8(value).map_err(|_| ReportError::NotText)?;
    let report = if let Some(rest) = text.strip_prefix("TEXT ") {
        parse_text(rest)?
    } else if text == "TEXT" {
        // An empty report, its space trimmed on the way (HTTP trims header values).
        OrcaLoadReport::default()
    } else if let Some(rest) = text.strip_prefix("JSON ") {
        serde_json::from_str(rest.trim()).map_err(|e| ReportError::Json(e.to_string()))?
    } else if let Some(rest) = text.strip_prefix("BIN ") {
        return parse_bin(rest.as_bytes());
    } else {
        let prefix: String = text.chars().take(5).take_while(|c| *c != ' ').collect();
        return Err(ReportError::Format { prefix });
    };
    check(&report)?;
    Ok(report)
}

/// The `TEXT` form's pairs.
fn parse_text(text: &str) -> Result<OrcaLoadReport, ReportError> {
    let mut report = OrcaLoadReport::default();
    let mut seen: Vec<&str> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |reason: &str| ReportError::Text {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, value) = entry
            .split_once(['=', ':'])
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| bad("expected name=value"))?;
        if name.is_empty() {
            return Err(bad("the metric name is empty"));
        }
        if value.is_empty() {
            return Err(bad("the value is empty"));
        }
        if seen.contains(&name) {
            return Err(bad("the metric appears twice"));
        }
        seen.push(name);
        let number: f64 = value
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        let keyed = |prefix: &str| name.strip_prefix(prefix).map(str::to_owned);
        match name {
            "cpu_utilization" => report.cpu_utilization = number,
            "mem_utilization" => report.mem_utilization = number,
            "application_utilization" => report.application_utilization = number,
            "rps_fractional" => report.rps_fractional = number,
            "eps" => report.eps = number,
            _ => {
                let (map, key) = if let Some(k) = keyed("named_metrics.") {
                    (&mut report.named_metrics, k)
                } else if let Some(k) = keyed("utilization.") {
                    (&mut report.utilization, k)
                } else if let Some(k) = keyed("request_cost.") {
                    (&mut report.request_cost, k)
                } else {
                    return Err(bad(
                        "unknown metric (expected cpu_utilization, mem_utilization, application_utilization, rps_fractional, eps, named_metrics.NAME, utilization.NAME or request_cost.NAME)",
                    ));
                };
                if key.is_empty() {
                    return Err(bad("the metric name is empty"));
                }
                map.insert(key, number);
            }
        }
    }
    Ok(report)
}

/// The `endpoint-load-metrics-bin` value of `report` (base64 without padding, as gRPC sends it).
pub fn bin_value(report: &OrcaLoadReport) -> http::HeaderValue {
    let text = general_purpose::STANDARD_NO_PAD.encode(report.encode_to_vec());
    // Base64 is always a valid header value.
    http::HeaderValue::from_str(&text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// The `endpoint-load-metrics` value of `report`: `TEXT` with the fields that are set when every
/// map key can be written there (visible ASCII without `,`, `=`, `:`), else `BIN` (padded
/// base64, which every Envoy version reads).
pub fn header_value(report: &OrcaLoadReport) -> http::HeaderValue {
    let value = to_text(report)
        .unwrap_or_else(|| format!("BIN {}", STANDARD.encode(report.encode_to_vec())));
    http::HeaderValue::from_str(&value).unwrap_or_else(|_| http::HeaderValue::from_static("TEXT "))
}

/// The `TEXT` form, or `None` when the report cannot be written in it (a key with a separator
/// in it, or the deprecated whole `rps`, which the form has no name for).
pub fn to_text(report: &OrcaLoadReport) -> Option<String> {
    if report.rps != 0 {
        return None;
    }
    let plain = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'=' | b':'))
    };
    let mut parts: Vec<String> = [
        ("cpu_utilization", report.cpu_utilization),
        ("mem_utilization", report.mem_utilization),
        ("application_utilization", report.application_utilization),
        ("rps_fractional", report.rps_fractional),
        ("eps", report.eps),
    ]
    .iter()
    .filter(|(_, v)| *v != 0.0)
    .map(|(k, v)| format!("{k}={v}"))
    .collect();
    for (prefix, map) in [
        ("named_metrics", &report.named_metrics),
        ("utilization", &report.utilization),
        ("request_cost", &report.request_cost),
    ] {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in keys {
            if !plain(k) {
                return None;
            }
            parts.push(format!("{prefix}.{k}={}", map[k]));
        }
    }
    Some(format!("TEXT {}", parts.join(",")))
}
