//! `chi config check` and `--help`.

use crate::support::{run, stderr, stdout, yaml};

fn spec_config() -> String {
    format!(
        "{}/../../examples/chi-config.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn config_check_prints_the_effective_values_of_the_spec_file() {
    let out = run(&["config", "check", &spec_config()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "service_discovery.registration.name",
        "user-service",
        "service_discovery.load_balancer.strategy",
        "weighted_round_robin",
        "service_discovery.discovery.cache.ttl",
        "30s",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn config_check_names_the_bad_field_and_exits_2() {
    let (_d, path) =
        yaml("service_discovery:\n  load_balancer:\n    consistent_hash:\n      load: 0.9\n");
    let out = run(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: service_discovery.load_balancer.consistent_hash.load"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");

    let (_d, path) = yaml("service_discovery:\n  unknown_section: 1\n");
    let out = run(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown_section"), "{}", stderr(&out));

    let out = run(&["config", "check", "/nonexistent/chi-config.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn secrets_from_the_environment_never_print() {
    let (_d, path) = yaml(
        "service_discovery:\n  registries:\n    consul:\n      enabled: true\n      address: \"127.0.0.1:8500\"\n",
    );
    let out = crate::support::chi()
        .args(["config", "check"])
        .arg(&path)
        .env("CHI_CONSUL_TOKEN", "s3cr3t-token")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("s3cr3t-token"));
    assert!(!stderr(&out).contains("s3cr3t-token"));
}

#[test]
fn every_command_has_an_example_in_its_help() {
    for cmd in [
        &["--help"][..],
        &["agent", "--help"],
        &["discover", "--help"],
        &["watch", "--help"],
        &["check", "--help"],
        &["select", "--help"],
        &["proxy", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd:?}");
        assert!(stdout(&out).contains("Example"), "{cmd:?} has no example");
    }
}
