//! A Eureka `/apps/APP` or `/apps/delta` answer: never a panic; every
//! instance read has a port.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((instances, _delta)) = trellis::fuzzing::eureka_body(data, "fuzz.v1.Fuzz") {
        for instance in instances {
            assert_ne!(instance.endpoint.port(), 0);
        }
    }
});
