//! The runtime's error type.

use std::net::SocketAddr;

/// A boxed error, as handlers and service setup code return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong while starting or running a Trellis service.
///
/// Every message names the thing at fault and what would fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The server could not listen on its address.
    #[error(
        "cannot listen on {addr}: {source} (choose another address with --listen, or stop what holds it)"
    )]
    Bind {
        /// The address from `listen`.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },

    /// A registry URL is malformed or names an unknown kind of registry.
    #[error("registry `{url}`: {reason}")]
    Registry {
        /// The URL as given.
        url: String,
        /// What is wrong and what is expected.
        reason: String,
    },

    /// An instance's address cannot be connected to.
    #[error("endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The endpoint as registered.
        endpoint: String,
        /// What is wrong and what would fix it.
        reason: String,
    },

    /// Something that needs a Tokio runtime was called outside one.
    #[error(
        "{0} must be called inside a Tokio runtime (for example from `#[tokio::main]` or `trellis::App::run`)"
    )]
    NoRuntime(&'static str),

    /// The server failed while serving.
    #[error("server failed: {0}")]
    Serve(#[source] BoxError),
}

/// `err` and its sources, as `outer: inner: innermost`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
