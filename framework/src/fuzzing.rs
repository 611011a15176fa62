//! The parsers that take outside input, for the fuzz targets in
//! `framework/fuzz/` and the property tests; only with the `fuzzing`
//! feature, and not part of the API. Each function is a thin door to a
//! parser the framework uses as it is; none adds behaviour.

use std::time::Duration;

use crate::descriptor::HashKeyKind;
use crate::registry::Instance;

/// A `grpc-timeout` header value (`framework/src/protocol.rs`).
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    crate::protocol::decode_grpc_timeout(value)
}

/// The hash-key field of a gRPC-framed request
/// (`client/balance/hash_field.rs`).
pub fn hash_key(frame: &[u8], number: u32, kind: HashKeyKind) -> Option<Vec<u8>> {
    crate::client::fuzz_hash_key(frame, number, kind)
}

/// A `local://` entry file or an etcd value.
///
/// # Errors
///
/// Why it is not an instance.
pub fn registry_entry(json: &[u8]) -> Result<Instance, String> {
    crate::registry::fuzz::entry(json)
}

/// A Consul `/v1/health/service` body.
///
/// # Errors
///
/// Why the body is not a list of entries.
#[cfg(feature = "consul")]
pub fn consul_body(body: &[u8], service: &str) -> Result<Vec<Instance>, String> {
    crate::registry::fuzz::consul(body, service)
}

/// A Eureka `/apps/APP` or `/apps/delta` body: the `UP` instances, and the
/// number of the application's records in a delta.
///
/// # Errors
///
/// Why the body or a record is unreadable.
#[cfg(feature = "eureka")]
pub fn eureka_body(body: &[u8], service: &str) -> Result<(Vec<Instance>, usize), String> {
    crate::registry::fuzz::eureka(body, service)
}

/// A DNS answer in wire format: the (target, port, weight) of its SRV
/// records.
///
/// # Errors
///
/// Why the message does not decode.
#[cfg(feature = "dns")]
pub fn dns_answer(message: &[u8]) -> Result<Vec<(String, u16, u32)>, String> {
    crate::registry::fuzz::dns(message)
}

/// A configuration file's text, over the defaults, checked as a file is.
///
/// # Errors
///
/// The configuration error, naming the key.
pub fn config_toml(text: &str) -> Result<crate::config::Config, crate::Error> {
    crate::config::Layers::from_toml(text)
}

/// The gRPC frames the REST gateway reads from a response body arriving in
/// `chunks`.
///
/// # Errors
///
/// A compressed frame, which the gateway does not decode.
#[cfg(feature = "rest")]
pub fn gateway_frames<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Result<Vec<bytes::Bytes>, String> {
    crate::gateway::fuzz_frames(chunks)
}

/// The REST gateway of `services` in front of an echo: each call runs one
/// HTTP request through every step the server takes (route, path variables,
/// query, JSON body, the gRPC call, the reply back to JSON).
#[cfg(feature = "rest")]
#[derive(Debug)]
pub struct Gateway {
    layer: crate::gateway::FuzzLayer,
    runtime: tokio::runtime::Runtime,
}

#[cfg(feature = "rest")]
impl Gateway {
    /// The gateway of `services`.
    ///
    /// # Errors
    ///
    /// When the services' routes do not load, or the runtime cannot start.
    pub fn new(services: &[&'static crate::ServiceDescriptor]) -> Result<Self, crate::BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Gateway { layer: crate::gateway::fuzz_layer(services)?, runtime })
    }

    /// The status, content type and body the gateway answers `request` with.
    ///
    /// # Errors
    ///
    /// When the gateway (or the echo behind it) fails instead of answering.
    pub fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<(http::StatusCode, Option<String>, bytes::Bytes), crate::BoxError> {
        self.runtime.block_on(crate::gateway::fuzz_request(&self.layer, request))
    }
}
