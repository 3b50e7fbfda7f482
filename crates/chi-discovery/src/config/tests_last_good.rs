//! `discovery.cache.last_known_good_dir`: optional, a directory, tagged with the registries.

use super::*;

#[test]
fn last_known_good_dir_is_optional_and_tagged_with_the_registry() {
    assert_eq!(load(SPEC).expect("loads").cache.last_known_good, None);
    let c = load(&spec_with(
        "enable_metrics: true",
        "enable_metrics: true\n      last_known_good_dir: \"/var/cache/chi/last-good\"",
    ))
    .expect("loads");
    let lkg = c.cache.last_known_good.expect("set");
    assert_eq!(
        lkg.dir,
        std::path::PathBuf::from("/var/cache/chi/last-good")
    );
    assert_eq!(lkg.registry, c.registries.identity());
    assert!(
        lkg.registry.starts_with("consul(address=127.0.0.1:8500"),
        "{}",
        lkg.registry
    );
}

#[test]
fn bad_last_known_good_dir() {
    assert_err(
        &spec_with(
            "enable_metrics: true",
            "enable_metrics: true\n      last_known_good_dir: \"  \"",
        ),
        "service_discovery.discovery.cache.last_known_good_dir",
        &["must be a directory path", "got \"  \""],
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().display().to_string();
    assert_err(
        &spec_with(
            "enable_metrics: true",
            &format!("enable_metrics: true\n      last_known_good_dir: {path:?}"),
        ),
        "service_discovery.discovery.cache.last_known_good_dir",
        &[
            "must be a directory",
            &format!("got {path:?}"),
            "which is a file",
        ],
    );
    assert_err(
        &spec_with(
            "enable_metrics: true",
            "enable_metrics: true\n      last_known_good_dir: [a, b]",
        ),
        "service_discovery.discovery.cache.last_known_good_dir",
        &["invalid type"],
    );
}
