//! `Config::from_yaml_with_env` on arbitrary text: it never panics; it returns a config or an
//! error, and a config it returns prints without its secrets.
#![no_main]

use chi_discovery::config::Config;
use libfuzzer_sys::fuzz_target;

/// A value every `${CHI_*}` lookup answers, so that secrets from the environment are exercised.
const SECRET: &str = "fuzz-secret-0d8e";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The raw parse alone (what `chi config check` does first), then the validated one.
    let _ = chi_discovery::config::parse(text);
    let env = |key: &str| match key {
        "CHI_CONSUL_TOKEN" | "CHI_ETCD_PASSWORD" | "CHI_NACOS_PASSWORD" => Some(SECRET.to_owned()),
        k if k.starts_with("CHI_") => Some("fuzz-user".to_owned()),
        _ => None,
    };
    match Config::from_yaml_with_env(text, env) {
        // (When the YAML itself holds the string, in a field that is not a secret, it may show.)
        Ok(config) if !text.contains(SECRET) => {
            let shown = format!("{config:?}");
            assert!(
                !shown.contains(SECRET),
                "a secret printed in Debug: {shown}"
            );
        }
        Ok(_) => {}
        Err(e) => {
            let shown = format!("{e} {e:?}");
            assert!(
                text.contains(SECRET) || !shown.contains(SECRET),
                "a secret printed in an error: {shown}"
            );
        }
    }
});
