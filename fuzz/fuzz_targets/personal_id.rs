//! Personal-ID validation: accepted IDs round-trip their parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use popgate::personal_id::PersonalId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = PersonalId::parse(text, 2026) {
            assert_eq!(id.as_str(), text);
            assert!(id.birth_year() <= 2026);
            let _ = (id.sex(), id.serial(), id.birth_province_code());
        }
    }
});
