//! TLS and mutual TLS, on rustls with the ring provider (feature `tls`).
//!
//! - Server: with `tls.cert` and `tls.key`, the listener speaks TLS (ALPN
//!   `h2`, and `http/1.1` for REST), and the server registers its instances
//!   as `https`. With `tls.client_ca`, each client must present a
//!   certificate signed by one of those CAs; its names are then the
//!   [`PeerIdentity`] a handler reads, and `tls.allow` restricts each
//!   service to some of them (others get `PERMISSION_DENIED`).
//! - Reload: every `tls.reload_interval` the files' modification times and
//!   lengths are compared; on a change the whole configuration is rebuilt
//!   and swapped for new connections, while open connections keep theirs. A
//!   pair that cannot be used (unreadable, not PEM, expired, a key of
//!   another certificate) is logged with its reason and the old one kept.
//! - Handshakes run each in their own task, bounded by
//!   `tls.handshake_timeout`, so a client that stalls holds no one up.
//! - Client: instances registered as `https` are reached with the CAs of
//!   `tls.ca`, the server's name (the registered host, or
//!   `tls.server_name`) checked against its certificate, and
//!   `tls.cert`/`tls.key` presented when the server asks.
//!
//! Errors name the setting, the file and the fix, at start-up and, for a
//! failed handshake, in the call's status.
//!
//! Without the `tls` feature the section is still read and checked, and a
//! server or client told to use TLS refuses to start, saying so.

mod config;
mod identity;

#[cfg(feature = "tls")]
mod client;
#[cfg(feature = "tls")]
mod files;
#[cfg(feature = "tls")]
mod server;

pub use config::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES, DEFAULT_RELOAD_INTERVAL, HANDSHAKE_TIMEOUT_RANGE,
    MAX_HANDSHAKES_RANGE, RELOAD_INTERVAL_RANGE, TlsConfig,
};
pub use identity::PeerIdentity;

#[cfg(feature = "tls")]
pub(crate) use client::{client_config, describe_failure};
#[cfg(feature = "tls")]
pub(crate) use server::{TlsIncoming, TlsServer};
