//! Registry URLs (`--registry`, `registry = ...`): never a panic; an error
//! names the URL with its secrets redacted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    match trellis::Registry::from_url(url) {
        Ok(registry) => assert!(!registry.url().is_empty()),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
