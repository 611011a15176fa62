//! A `local://` entry file or an etcd value: never a panic; an instance read
//! writes back to JSON that reads as the same instance.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(instance) = trellis::fuzzing::registry_entry(data) {
        let json = serde_json::to_vec(&instance).expect("an instance serializes");
        let again = trellis::fuzzing::registry_entry(&json).expect("what was written reads back");
        assert_eq!(again, instance);
    }
});
