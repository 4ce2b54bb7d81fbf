//! Fuzz target: the routes-file parser ([`dockward::routes_file::parse`]) on any text.
//!
//! Checked: no panic; every error names the file and says something.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = dockward::routes_file::parse("fuzz.yml", text);
    for e in &loaded.errors {
        assert_eq!(e.source, "fuzz.yml");
        assert!(!e.message.trim().is_empty(), "an error without a message: {e:?}");
    }
    for route in &loaded.routes {
        assert_eq!(route.source, "fuzz.yml");
    }
});
