//! `registry::consul::decode_health` on arbitrary bytes as a `/v1/health/service/:name` body: it
//! never panics, and every instance it returns passes validation.
#![no_main]

use chi_discovery::registry::consul::decode_health;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_health(data) {
        Ok(list) => {
            for i in &list {
                assert!(i.validate().is_ok(), "accepted an invalid instance: {i:?}");
            }
        }
        Err(e) => {
            let _ = format!("{e} {e:?}");
        }
    }
});
