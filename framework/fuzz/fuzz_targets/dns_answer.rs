//! A DNS answer in wire format, as the `dns://` registry reads its SRV
//! records: never a panic; the root target (`.`) is never an instance.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(targets) = trellis::fuzzing::dns_answer(data) {
        for (target, _port, _weight) in targets {
            assert_ne!(target, ".");
        }
    }
});
