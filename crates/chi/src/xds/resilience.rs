//! What a client does about failing backends, from chi's own settings: the Cluster's
//! `outlier_detection` (gRFC A50) and `circuit_breakers` (gRFC A32), and the route's
//! `retry_policy` (gRFC A44).
//!
//! - **Outlier detection.** chi's detector ([`OutlierConfig`]) ejects an instance after
//!   `consecutive_failures` failed calls in a row, for `base_ejection_time` times the number of its
//!   ejections (at most `max_ejection_time`), never more than `max_ejection_percent` of the
//!   instances at once. Envoy reads the same rule as `consecutive_5xx` (enforced at 100 %). gRPC's
//!   clients ignore the consecutive rules (A50 implements only the two counted per `interval`), so
//!   the rule also goes as `failure_percentage`: an address whose calls in an interval failed at
//!   least `FAILURE_PERCENTAGE` % of the time, out of at least `consecutive_failures` calls, is
//!   ejected (enforced at 100 %, from one address up, as chi's detector looks at each instance on
//!   its own). chi has no success-rate statistics, so `success_rate` is off
//!   (`enforcing_success_rate: 0`; unset, clients would enforce it). chi decides at each call;
//!   the interval is short (`INTERVAL`) so that clients decide soon after.
//! - **Circuit breakers.** `circuit_breaker.max_requests` caps the requests in flight per instance
//!   in chi; xDS has a cap per cluster only (`thresholds[DEFAULT].max_requests`, the one gRPC
//!   reads), so the cap is sent unchanged: the tightest per-instance rule a client can follow,
//!   which holds even when every request lands on one instance.
//! - **Retries.** `discovery.retry` is also how often `chi proxy` tries a request; gRPC clients
//!   get it as the default route's `retry_policy`: `max_attempts - 1` retries (gRPC caps
//!   attempts at 5) on `unavailable` (the status of a backend that is down or shedding, the
//!   failures the proxy retries), backing off from `initial_interval` up to `max_interval`
//!   (gRPC's backoff doubles; chi's `multiplier` has no field). With `max_attempts: 1`, none.

use chi_discovery::health::OutlierConfig;
use chi_discovery::retry::RetryPolicy as ChiRetry;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::policy::duration;

/// The least share of failed calls, in percent, that ejects an address in an interval.
pub(crate) const FAILURE_PERCENTAGE: u32 = 90;

/// How often clients count the calls of each address and eject.
pub(crate) const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The gRPC statuses a call is retried on.
pub(crate) const RETRY_ON: &str = "unavailable";

/// chi's outlier detection as the Cluster's `outlier_detection`.
pub(crate) fn outlier_detection(config: &OutlierConfig) -> OutlierDetection {
    let u32v = |value| Some(UInt32Value { value });
    let failures = config.consecutive_failures.max(1);
    OutlierDetection {
        consecutive_5xx: u32v(failures),
        enforcing_consecutive_5xx: u32v(100),
        interval: Some(duration(INTERVAL)),
        base_ejection_time: Some(duration(config.base_ejection_time)),
        max_ejection_time: Some(duration(config.max_ejection_time)),
        max_ejection_percent: u32v(u32::from(config.max_ejection_percent.min(100))),
        enforcing_success_rate: u32v(0),
        failure_percentage_threshold: u32v(FAILURE_PERCENTAGE),
        enforcing_failure_percentage: u32v(100),
        failure_percentage_minimum_hosts: u32v(1),
        failure_percentage_request_volume: u32v(failures),
        ..Default::default()
    }
}

/// `circuit_breaker.max_requests` as the Cluster's `circuit_breakers`; `None` when unset.
pub(crate) fn circuit_breakers(max_requests: Option<u32>) -> Option<CircuitBreakers> {
    let max_requests = max_requests?;
    Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_requests: Some(UInt32Value {
                value: max_requests,
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// `discovery.retry` as a route's `retry_policy`; `None` when it allows no retry.
pub(crate) fn retry_policy(retry: &ChiRetry) -> Option<RetryPolicy> {
    let retries = retry.max_attempts.checked_sub(1).filter(|n| *n > 0)?;
    Some(RetryPolicy {
        retry_on: RETRY_ON.to_owned(),
        num_retries: Some(UInt32Value { value: retries }),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(retry.initial_interval)),
            max_interval: Some(duration(retry.max_interval.max(retry.initial_interval))),
        }),
        ..Default::default()
    })
}
