//! Journal frames as read back from disk: a torn or corrupt frame is
//! reported, never trusted, and a decoded frame re-encodes to its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use popgate::audit::journal::{decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = decode_frame(data) {
        assert!(used <= data.len());
        let again = encode_frame(&frame);
        assert!(decode_frame(&again).is_ok());
    }
});
