//! Officer-token headers: only asymmetric algorithms and JWT types pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use popgate::auth::token::{parse_token_header, ASYMMETRIC_ALGORITHMS};

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(header) = parse_token_header(token) {
            assert!(ASYMMETRIC_ALGORITHMS.contains(&header.alg));
        }
    }
});
