//! Property tests of every parser that takes outside input, on stable: the
//! same properties the fuzz targets in `framework/fuzz/` check (round trips,
//! never a panic, errors that name the input and what is accepted), over
//! generated input. Needs the hidden `fuzzing` feature (`./scripts/test`
//! builds with every feature).

use std::time::Duration;

use proptest::prelude::*;
use trellis::HashKeyKind;
use trellis::fuzzing;
use trellis::protocol::encode_grpc_timeout;
use trellis::registry::{Endpoint, Instance, Metadata};

const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// A varint (protobuf base 128).
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).unwrap() | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).unwrap());
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn grpc_timeouts_round_trip_and_never_shorten(nanos in any::<u64>()) {
        let timeout = Duration::from_nanos(nanos);
        let encoded = encode_grpc_timeout(timeout);
        let decoded = fuzzing::grpc_timeout(encoded.as_bytes()).expect("an encoded timeout decodes");
        prop_assert!(decoded >= timeout, "{timeout:?} -> {encoded} -> {decoded:?}");
        // Rounded up by less than one unit of the value written.
        let unit = UNITS.iter().find(|(u, _)| encoded.as_bytes().last() == Some(u)).unwrap().1;
        prop_assert!(decoded - timeout < Duration::from_nanos(unit), "{timeout:?} -> {encoded}");
    }

    #[test]
    fn grpc_timeouts_decode_exactly(n in 0u64..=99_999_999, unit in 0usize..6) {
        let (letter, per) = UNITS[unit];
        let value = format!("{n}{}", char::from(letter));
        let nanos = u128::from(n) * u128::from(per);
        let expected = Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap(),
            u32::try_from(nanos % 1_000_000_000).unwrap(),
        );
        prop_assert_eq!(fuzzing::grpc_timeout(value.as_bytes()), Some(expected));
    }

    #[test]
    fn grpc_timeouts_refuse_garbage_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Some(decoded) = fuzzing::grpc_timeout(&bytes) {
            // Only digits then one unit letter decode.
            let (unit, digits) = bytes.split_last().unwrap();
            prop_assert!(UNITS.iter().any(|(u, _)| u == unit), "{bytes:?} -> {decoded:?}");
            prop_assert!(!digits.is_empty() && digits.len() <= 8 && digits.iter().all(u8::is_ascii_digit));
        }
    }

    #[test]
    fn the_hash_key_is_read_from_any_position(
        number in 1u32..1000,
        key in proptest::collection::vec(any::<u8>(), 0..64),
        before in proptest::collection::vec((1u32..1000, any::<u64>()), 0..4),
    ) {
        let mut message = Vec::new();
        for (other, value) in &before {
            if *other == number { continue; }
            varint(u64::from(*other) << 3, &mut message);
            varint(*value, &mut message);
        }
        varint(u64::from(number) << 3 | 2, &mut message);
        varint(key.len() as u64, &mut message);
        message.extend_from_slice(&key);
        let frame = grpc_frame(&message);
        prop_assert_eq!(fuzzing::hash_key(&frame, number, HashKeyKind::Bytes), Some(key));
        // A compressed frame is never read.
        let mut compressed = frame.clone();
        compressed[0] = 1;
        prop_assert_eq!(fuzzing::hash_key(&compressed, number, HashKeyKind::Bytes), None);
    }

    #[test]
    fn the_hash_key_reader_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..128), number in any::<u32>(), pick in 0u8..4) {
        let kind = [HashKeyKind::Bytes, HashKeyKind::Varint { zigzag: false }, HashKeyKind::Fixed32, HashKeyKind::Fixed64][usize::from(pick)];
        if let Some(key) = fuzzing::hash_key(&frame, number, kind) {
            prop_assert!(key.len() <= frame.len().max(8));
        }
    }

    #[test]
    fn registry_entries_round_trip(
        id in "[a-z0-9-]{1,20}",
        port in 1u16..,
        weight in 0u32..1000,
        zone in proptest::option::of("[a-z0-9-]{1,12}"),
        version in proptest::option::of("[0-9.]{1,8}"),
    ) {
        let metadata = Metadata { weight, zone, version, ..Metadata::default() };
        let instance = Instance::new("fuzz.v1.Fuzz", Endpoint::new("127.0.0.1", port), metadata);
        let instance = Instance { id, ..instance };
        let json = serde_json::to_vec(&instance).unwrap();
        prop_assert_eq!(fuzzing::registry_entry(&json).expect("reads back"), instance);
    }

    #[test]
    fn registry_entries_refuse_garbage_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Err(why) = fuzzing::registry_entry(&bytes) {
            prop_assert!(!why.is_empty());
        }
    }

    #[test]
    fn registry_urls_never_panic_and_errors_name_the_url(url in "[a-z]{0,6}(://)?[ -~]{0,40}") {
        if let Err(err) = trellis::Registry::from_url(&url) {
            let message = err.to_string();
            prop_assert!(message.contains("expected") || message.contains("registry"), "{message}");
        }
    }

    #[test]
    fn a_registry_token_never_shows_in_an_error(secret in "[A-Za-z0-9]{12,24}", bad in "[a-z]{3,8}") {
        let url = format!("consul://127.0.0.1:8500?token={secret}&{bad}=1");
        let err = trellis::Registry::from_url(&url).expect_err("an unknown option");
        prop_assert!(!err.to_string().contains(&secret), "{err}");
        let url = format!("consul://127.0.0.1:8500?token={secret}");
        let registry = trellis::Registry::from_url(&url).expect("a good URL");
        prop_assert!(!registry.url().contains(&secret), "{}", registry.url());
    }

    #[test]
    fn consul_entries_are_read_with_their_port(port in 1u16.., id in "[a-z0-9-]{1,16}", third in 0u8..=255) {
        let body = format!(
            r#"[{{"Node":{{"Address":"10.0.0.{third}"}},"Service":{{"ID":"{id}","Address":"","Port":{port}}}}}]"#
        );
        let instances = fuzzing::consul_body(body.as_bytes(), "fuzz.v1.Fuzz").expect("a good body");
        prop_assert_eq!(instances.len(), 1);
        prop_assert_eq!(instances[0].endpoint.port(), port);
        prop_assert_eq!(&instances[0].id, &id);
    }

    #[test]
    fn registry_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = fuzzing::consul_body(&bytes, "fuzz.v1.Fuzz");
        let _ = fuzzing::eureka_body(&bytes, "fuzz.v1.Fuzz");
        let _ = fuzzing::dns_answer(&bytes);
    }

    #[test]
    fn eureka_records_are_read_with_their_port(port in 1u16.., up in any::<bool>()) {
        let status = if up { "UP" } else { "DOWN" };
        let body = format!(
            r#"{{"application":{{"instance":[{{"instanceId":"i-1","ipAddr":"10.0.0.1","status":"{status}","port":{{"$":{port},"@enabled":"true"}}}}]}}}}"#
        );
        let (instances, _) = fuzzing::eureka_body(body.as_bytes(), "fuzz.v1.Fuzz").expect("a good body");
        prop_assert_eq!(instances.len(), usize::from(up));
        if up {
            prop_assert_eq!(instances[0].endpoint.port(), port);
        }
    }

    #[test]
    fn stream_limits_are_accepted_exactly_in_range(value in 0u64..20_000) {
        let text = format!("[server.http2]\nmax_concurrent_streams = {value}\n");
        match fuzzing::config_toml(&text) {
            Ok(config) => {
                prop_assert!((1..=10_000).contains(&value));
                prop_assert_eq!(u64::from(config.server.http2.max_concurrent_streams), value);
            }
            Err(err) => {
                prop_assert!(!(1..=10_000).contains(&value));
                let message = err.to_string();
                prop_assert!(message.contains("`server.http2.max_concurrent_streams`"), "{message}");
                prop_assert!(message.contains("from 1 to 10000"), "{message}");
            }
        }
    }

    #[test]
    fn durations_in_the_configuration_are_checked(ms in 0u64..10_000_000) {
        let text = format!("[server.http2]\nkeepalive_timeout = \"{ms}ms\"\n");
        let accepted = (1_000..=600_000).contains(&ms);
        match fuzzing::config_toml(&text) {
            Ok(config) => {
                prop_assert!(accepted, "{ms}ms accepted");
                prop_assert_eq!(config.server.http2.keepalive_timeout, Duration::from_millis(ms));
            }
            Err(err) => {
                prop_assert!(!accepted, "{ms}ms refused: {err}");
                prop_assert!(err.to_string().contains("`server.http2.keepalive_timeout`"), "{err}");
            }
        }
    }

    #[test]
    fn configuration_text_never_panics(text in "[ -~\n]{0,80}") {
        if let Err(err) = fuzzing::config_toml(&text) {
            prop_assert!(err.to_string().len() > "invalid configuration: ".len());
        }
    }

    #[test]
    fn gateway_frames_come_back_whole_in_chunks_of_any_size(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        size in 1usize..50,
    ) {
        let body: Vec<u8> = messages.iter().flat_map(|m| grpc_frame(m)).collect();
        let frames = fuzzing::gateway_frames(body.chunks(size)).expect("uncompressed frames");
        let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        prop_assert_eq!(frames, messages);
    }

    #[test]
    fn a_compressed_frame_is_refused_by_name(message in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut frame = grpc_frame(&message);
        frame[0] = 1;
        let err = fuzzing::gateway_frames(std::iter::once(&frame[..])).expect_err("compressed");
        prop_assert!(err.contains("compressed"), "{err}");
    }
}
