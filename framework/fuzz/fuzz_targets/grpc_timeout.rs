//! `grpc-timeout` header values: never a panic; whatever decodes encodes
//! back to a value that decodes to at least as long (encoding rounds up).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis::protocol::{decode_grpc_timeout, encode_grpc_timeout};

fuzz_target!(|data: &[u8]| {
    if let Some(timeout) = trellis::fuzzing::grpc_timeout(data) {
        let encoded = encode_grpc_timeout(timeout);
        let again = decode_grpc_timeout(encoded.as_bytes()).expect("an encoded timeout decodes");
        assert!(again >= timeout, "{data:?} -> {timeout:?} -> {encoded} -> {again:?}");
    }
});
