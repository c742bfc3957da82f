//! The policy parser on an arbitrary app file beside the shipped catalog and
//! purposes: problems or a set, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use popgate::policy::{parse, PolicyFiles};

const FIELDS: &str = include_str!("../../policies/fields.toml");
const PURPOSES: &str = include_str!("../../policies/purposes.toml");

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut files = PolicyFiles::new();
        files.insert("fields.toml".into(), FIELDS.into());
        files.insert("purposes.toml".into(), PURPOSES.into());
        files.insert("apps/fuzz.toml".into(), text.into());
        if let Err(problems) = parse(&files, 79) {
            for p in problems.0 {
                assert!(p.line >= 1 && p.col >= 1);
            }
        }
    }
});
