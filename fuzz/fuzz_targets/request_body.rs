//! App request bodies: any bytes give a verdict, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use popgate::api::citizens::check_request_body;
use popgate::policy::Operation;

fuzz_target!(|data: &[u8]| {
    for op in [Operation::Lookup, Operation::Verify, Operation::Household] {
        let _ = check_request_body(op, data);
    }
});
