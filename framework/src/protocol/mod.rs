//! What goes over the wire that both the client and the server read or
//! write: the `grpc-timeout` codec, the pushback and unprocessed headers,
//! and the paths of the services every Trellis server carries.
//!
//! Header names are `HeaderName`s, not strings: a lookup by string parses
//! and checks the name again on every call.

use std::time::Duration;

use http::HeaderName;

/// The deadline of a call that sets none of its own (nor its method's
/// policy or configuration): the client stack's and the REST gateway's.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The header a Trellis server sets on a response to a call it refused
/// before running any handler (load shedding, draining), so a client may
/// retry any method, even one with side effects.
pub static UNPROCESSED: HeaderName = HeaderName::from_static("trellis-unprocessed");

/// The server's hint of how long to wait before retrying, in milliseconds;
/// a negative value means "do not retry" (gRFC A6).
pub static RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The path prefix of the services every server carries (health,
/// reflection), which load shedding and fault injection leave alone.
pub const BUILTIN_PREFIX: &str = "/grpc.";

/// The health service's name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The paths of the streaming methods of the services every server carries.
pub const BUILTIN_STREAMING_PATHS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Whether `path` belongs to a service every server carries.
pub fn is_builtin(path: &str) -> bool {
    path.starts_with(BUILTIN_PREFIX)
}

/// Whether a call a server answered with `code` failed on the server's
/// side rather than the caller's (OpenTelemetry's RPC conventions): what
/// its logs warn about and its spans mark as errors.
pub(crate) fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

// The `grpc-timeout` header: `TimeoutValue TimeoutUnit`, at most 8 digits.

/// The largest gRPC message either side takes or sends unless configured
/// (`server.messages`, `clients."SERVICE".max_*_size`): 4 MiB, tonic's and
/// grpc-go's default for received messages.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The header that carries a call's deadline, relative to when it was sent.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The trailer (or trailers-only header) with a call's status code.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The trailer with a call's status message.
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

pub(crate) mod end;
pub(crate) mod per_method;

const MAX_DIGITS: u64 = 99_999_999;

/// Parses a `grpc-timeout` value such as `100m` or `5S`; `None` if malformed.
pub fn decode_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `timeout` for the `grpc-timeout` header, in the finest unit that
/// fits in 8 digits (rounding up, so a deadline is never shortened to zero).
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let value = nanos.div_ceil(per);
        if value <= u128::from(MAX_DIGITS) {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_DIGITS}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 400),
        ] {
            let encoded = encode_grpc_timeout(d);
            let decoded = decode_grpc_timeout(encoded.as_bytes()).unwrap();
            assert!(decoded >= d, "{encoded} decoded to {decoded:?} < {d:?}");
        }
        assert_eq!(encode_grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(30)), "30000000u");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "S", "10", "10x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(decode_grpc_timeout(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(decode_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
    }
}
