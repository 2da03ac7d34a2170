//! The configuration pipeline (template, YAML with spans, schema, lowering,
//! diagnostics) on arbitrary documents: it refuses, it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        deploy_code::fuzzing::config(text);
    }
});
