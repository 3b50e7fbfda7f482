//! `registry::nacos::decode_instances` on arbitrary bytes as a JSON list of Nacos instances of
//! `svc`: it never panics, and every instance it returns is a valid instance of `svc`.
#![no_main]

use chi_discovery::registry::nacos::decode_instances;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_instances("svc", data) {
        Ok(list) => {
            for i in &list {
                assert!(i.validate().is_ok(), "accepted an invalid instance: {i:?}");
                assert_eq!(i.name, "svc");
            }
        }
        Err(e) => {
            let _ = format!("{e} {e:?}");
        }
    }
});
