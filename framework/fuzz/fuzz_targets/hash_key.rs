//! The hash-key field reader over any request frame: never a panic, and a
//! key found has the size its wire type says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis::HashKeyKind;

fuzz_target!(|data: &[u8]| {
    let [pick, a, b, c, d, frame @ ..] = data else { return };
    let kind = match pick % 5 {
        0 => HashKeyKind::Bytes,
        1 => HashKeyKind::Varint { zigzag: false },
        2 => HashKeyKind::Varint { zigzag: true },
        3 => HashKeyKind::Fixed32,
        _ => HashKeyKind::Fixed64,
    };
    let number = u32::from_be_bytes([*a, *b, *c, *d]);
    if let Some(key) = trellis::fuzzing::hash_key(frame, number, kind) {
        match kind {
            HashKeyKind::Bytes => assert!(key.len() + 5 <= frame.len()),
            HashKeyKind::Varint { .. } | HashKeyKind::Fixed64 => assert_eq!(key.len(), 8),
            HashKeyKind::Fixed32 => assert_eq!(key.len(), 4),
        }
    }
});
