//! A configuration file: never a panic; an error names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(err) = trellis::fuzzing::config_toml(text) {
        assert!(err.to_string().len() > "invalid configuration: ".len(), "{err}");
    }
});
