//! A Consul `/v1/health/service` answer: never a panic; every instance read
//! has a port.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(instances) = trellis::fuzzing::consul_body(data, "fuzz.v1.Fuzz") {
        for instance in instances {
            assert_ne!(instance.endpoint.port(), 0);
        }
    }
});
