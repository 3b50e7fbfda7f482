//! The Cluster's `load_balancing_policy` for the strategies the legacy `lb_policy` enum cannot
//! say: `orca_weighted_round_robin` as Envoy's `client_side_weighted_round_robin`.
//!
//! gRPC's clients weigh endpoints by their ORCA load reports with the policy gRFC A58 names
//! `weighted_round_robin`, which xDS carries as the typed extension
//! `envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3` in the
//! Cluster's `load_balancing_policy` (gRFC A52, custom LB policies), with the same settings as
//! chi's `load_balancer.orca` block. A client that reads this field uses the first policy of a
//! list it knows and ignores `lb_policy`; one that does not reads `lb_policy` (round robin).
//!
//! The policy is wrapped in `wrr_locality` (`envoy.extensions.load_balancing_policies.
//! wrr_locality.v3`): a top-level `load_balancing_policy` replaces the one that weighs the
//! localities by their `load_balancing_weight`, and `wrr_locality` is that one, with the
//! endpoint-picking policy as its child in each locality. Inside it, round robin follows as the
//! fallback for a client without weighted round robin (gRPC's Node client registers it only with
//! `GRPC_EXPERIMENTAL_XDS_WRR_LB=true`).

use chi_discovery::balance::{OrcaConfig, Strategy};
use envoy_types::pb::envoy::config::cluster::v3::LoadBalancingPolicy;
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, FloatValue};
use envoy_types::util::pack_any;

/// The extension names Envoy registers the policies under.
const WRR_LOCALITY: &str = "envoy.load_balancing_policies.wrr_locality";
const CLIENT_SIDE_WRR: &str = "envoy.load_balancing_policies.client_side_weighted_round_robin";
const ROUND_ROBIN: &str = "envoy.load_balancing_policies.round_robin";

/// The `load_balancing_policy` of `strategy`'s clusters; `None` where `lb_policy` says it all.
pub(crate) fn load_balancing_policy(
    strategy: Strategy,
    orca: &OrcaConfig,
) -> Option<LoadBalancingPolicy> {
    match strategy {
        Strategy::OrcaWeightedRoundRobin => Some(list([policy(
            WRR_LOCALITY,
            pack_any(WrrLocality {
                endpoint_picking_policy: Some(list([
                    policy(CLIENT_SIDE_WRR, pack_any(client_side_wrr(orca))),
                    policy(ROUND_ROBIN, pack_any(RoundRobin::default())),
                ])),
            }),
        )])),
        _ => None,
    }
}

/// `load_balancer.orca` as `client_side_weighted_round_robin`'s settings, every one set.
pub(crate) fn client_side_wrr(orca: &OrcaConfig) -> ClientSideWeightedRoundRobin {
    ClientSideWeightedRoundRobin {
        enable_oob_load_report: Some(BoolValue {
            value: orca.out_of_band,
        }),
        oob_reporting_period: Some(duration(orca.oob_reporting_period)),
        blackout_period: Some(duration(orca.blackout_period)),
        weight_expiration_period: Some(duration(orca.weight_expiration_period)),
        weight_update_period: Some(duration(orca.update_period())),
        error_utilization_penalty: Some(FloatValue {
            value: orca.error_utilization_penalty as f32,
        }),
        ..Default::default()
    }
}

fn list<const N: usize>(policies: [Policy; N]) -> LoadBalancingPolicy {
    LoadBalancingPolicy {
        policies: policies.into(),
    }
}

fn policy(name: &str, typed_config: envoy_types::pb::google::protobuf::Any) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(typed_config),
        }),
    }
}

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
