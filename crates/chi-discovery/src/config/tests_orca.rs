//! `load_balancer.orca`: A58's defaults, durations and the penalty read, bad values named at
//! their field.

use std::time::Duration;

use super::*;

const LB: &str = "    health_check_enabled: true\n";

fn with_orca(block: &str) -> String {
    spec_with(
        LB,
        &format!("    health_check_enabled: true\n    orca:\n{block}"),
    )
}

#[test]
fn orca_settings_default_to_a58s_and_are_read() {
    let d = load(SPEC).expect("loads").load_balancer.orca;
    assert_eq!(d, crate::balance::OrcaConfig::default());
    assert_eq!(d.blackout_period, Duration::from_secs(10));
    let c = load(&with_orca(
        "      blackout_period: 0s\n      weight_expiration_period: 1m\n      weight_update_period: 250ms\n      error_utilization_penalty: 2.5\n      out_of_band: true\n      oob_reporting_period: 2s\n",
    ))
    .expect("loads")
    .load_balancer
    .orca;
    assert_eq!(c.blackout_period, Duration::ZERO);
    assert_eq!(c.weight_expiration_period, Duration::from_secs(60));
    assert_eq!(c.weight_update_period, Duration::from_millis(250));
    assert_eq!(c.error_utilization_penalty, 2.5);
    assert!(c.out_of_band);
    assert_eq!(c.oob_reporting_period, Duration::from_secs(2));
}

#[test]
fn bad_orca_settings_name_their_field() {
    let at = "service_discovery.load_balancer.orca";
    assert_err(
        &with_orca("      error_utilization_penalty: -1\n"),
        &format!("{at}.error_utilization_penalty"),
        &["must be a number >= 0", "got -1"],
    );
    assert_err(
        &with_orca("      weight_expiration_period: 0s\n"),
        &format!("{at}.weight_expiration_period"),
        &["greater than zero"],
    );
    assert_err(
        &with_orca("      weight_update_period: soon\n"),
        &format!("{at}.weight_update_period"),
        &["invalid duration \"soon\""],
    );
    assert_err(
        &with_orca("      blackout_period: -1s\n"),
        &format!("{at}.blackout_period"),
        &["invalid duration"],
    );
    assert_err(
        &with_orca("      oob_reporting_period: 0ms\n"),
        &format!("{at}.oob_reporting_period"),
        &["greater than zero"],
    );
    assert_err(
        &with_orca("      blackout: 1s\n"),
        &format!("{at}.blackout"),
        &["unknown field `blackout`", "blackout_period"],
    );
}
