//! `registry::zookeeper::convert::decode` on arbitrary input: the first byte picks the layout;
//! in Curator's the rest is the data of the node `svc/svc-1`, in Dubbo's the rest (as UTF-8) is
//! the name of a provider node of `svc`. It never panics, and what it accepts is a valid instance
//! of that service (and, in Curator's layout, of that node).
#![no_main]

use chi_discovery::registry::zookeeper::Layout;
use chi_discovery::registry::zookeeper::convert::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let decoded = if first % 2 == 0 {
        decode(Layout::Curator, "svc", "svc-1", rest)
    } else {
        decode(Layout::Dubbo, "svc", &String::from_utf8_lossy(rest), &[])
    };
    match decoded {
        Ok(i) => {
            assert!(i.validate().is_ok(), "accepted an invalid instance: {i:?}");
            assert_eq!(i.name, "svc");
            if first % 2 == 0 {
                assert_eq!(i.id, "svc-1");
            }
        }
        Err(e) => {
            let _ = format!("{e} {e:?}");
        }
    }
});
