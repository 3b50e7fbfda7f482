//! `registry::etcd::decode_value` on arbitrary bytes stored under `{prefix}/svc/svc-1`: it never
//! panics, and what it accepts is a valid instance of that key.
#![no_main]

use chi_discovery::registry::etcd::decode_value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_value("svc", "svc-1", data) {
        Ok(i) => {
            assert!(i.validate().is_ok(), "accepted an invalid instance: {i:?}");
            assert_eq!((i.name.as_str(), i.id.as_str()), ("svc", "svc-1"));
        }
        Err(e) => {
            let _ = format!("{e} {e:?}");
        }
    }
});
