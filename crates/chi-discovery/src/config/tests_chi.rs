//! `registries.chi` and `--registry chi://host:port`: a running `chi agent` as a registry, alone
//! or beside others.

use super::*;

const CHI: &str = "service_discovery:\n  registries:\n    chi:\n      enabled: true\n      address: \"127.0.0.1:9901\"\n";

#[test]
fn a_chi_block_is_the_agent_at_its_address() {
    let c = load(CHI).expect("loads");
    assert_eq!(c.registries.enabled(), vec!["chi"]);
    let agent = c.registries.chi.as_ref().expect("chi");
    assert_eq!(agent.address, "127.0.0.1:9901");
    assert_eq!(c.registries.identity(), "chi(address=127.0.0.1:9901)");
    // Without an address: the agent's default admin address.
    let c = load(&CHI.replace("      address: \"127.0.0.1:9901\"\n", "")).expect("loads");
    assert_eq!(c.registries.chi.expect("chi").address, "127.0.0.1:9901");
    // Disabled: not there, and the embedded registry is used.
    let c = load(&CHI.replace("enabled: true", "enabled: false")).expect("loads");
    assert_eq!(c.registries.enabled(), vec!["memory"]);
}

#[test]
fn a_chi_block_beside_consul_makes_a_multi_registry() {
    let yaml = format!("{CHI}    consul:\n      enabled: true\n");
    let c = load(&yaml).expect("loads");
    assert_eq!(c.registries.enabled(), vec!["consul", "chi"]);
}

#[test]
fn bad_chi_addresses_name_the_field() {
    for (address, part) in [
        ("\"localhost\"", "expected host:port"),
        ("\"127.0.0.1:0\"", "expected host:port"),
        ("\"https://127.0.0.1:9901\"", "the scheme must be http"),
    ] {
        assert_err(
            &CHI.replace("\"127.0.0.1:9901\"", address),
            "service_discovery.registries.chi.address",
            &[part],
        );
    }
    assert_err(
        &CHI.replace("enabled: true", "enabled: true\n      token: x"),
        "service_discovery.registries.chi.token",
        &["unknown field `token`"],
    );
}

#[test]
fn chi_urls() {
    let r = Registries::from_url("chi://127.0.0.1:9901", &no_env).expect("chi");
    assert_eq!(r.enabled(), vec!["chi"]);
    assert_eq!(r.chi.expect("chi").address, "127.0.0.1:9901");
    assert_eq!(
        Registries::from_url("chi://[::1]:9901/", &no_env)
            .expect("chi")
            .chi
            .expect("chi")
            .address,
        "[::1]:9901"
    );
    for (bad, part) in [
        ("chi://nohost", "host:port"),
        ("chi://h:0", "host:port"),
        ("chi://h:1/x", "host:port"),
        ("chi://a/b:1", "expected chi://host:port"),
        ("chi://user@h:1", "credentials in the URL"),
    ] {
        let err = Registries::from_url(bad, &no_env)
            .expect_err(bad)
            .to_string();
        assert!(
            err.starts_with("--registry: ") && err.contains(part),
            "{bad}: {err}"
        );
    }
}
