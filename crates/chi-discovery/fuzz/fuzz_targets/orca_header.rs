//! `orca::header::parse` (the `endpoint-load-metrics` header in its `TEXT`, `JSON` and `BIN`
//! forms) and `parse_bin` (the gRPC `-bin` trailer) on arbitrary bytes: they never panic, and
//! what they accept passes the report checks and reads back the same once written again.
#![no_main]

use chi_discovery::orca::check;
use chi_discovery::orca::header::{bin_value, header_value, parse, parse_bin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for parsed in [parse(data), parse_bin(data)] {
        match parsed {
            Ok(report) => {
                assert!(check(&report).is_ok(), "accepted a bad report: {report:?}");
                assert_eq!(parse(header_value(&report).as_bytes()).as_ref(), Ok(&report));
                assert_eq!(parse_bin(bin_value(&report).as_bytes()).as_ref(), Ok(&report));
            }
            Err(e) => {
                let _ = format!("{e} {e:?}");
            }
        }
    }
});
