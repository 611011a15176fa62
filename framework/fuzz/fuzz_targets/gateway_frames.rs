//! The gRPC frames the REST gateway reads from a response body, in chunks
//! of any size: never a panic, and never more bytes out than in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [size, body @ ..] = data else { return };
    let chunks = body.chunks(usize::from(*size).max(1));
    if let Ok(frames) = trellis::fuzzing::gateway_frames(chunks) {
        let out: usize = frames.iter().map(|f| 5 + f.len()).sum();
        assert!(out <= body.len(), "{out} bytes of frames from {} bytes", body.len());
    }
});
