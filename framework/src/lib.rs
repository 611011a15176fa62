//! Trellis: gRPC microservices that register, discover, balance and survive
//! failures, built on tonic and tower.
//!
//! A service is a `.proto` compiled by `trellis-build` in `build.rs`, a
//! handler implementing the generated trait, and a `main` of a few lines:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     trellis::App::new("order-payment", "0.1.0").run(|ctx| async move {
//!         ctx.server()
//!             // .add_service(OrderPaymentServer::new(handler))
//!             .serve()
//!             .await?;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! The [`App`] gives the binary its command line (`--listen`, `--config`,
//! `--registry`, `--log-format`, `--set`), layered [configuration](config),
//! and logging. The [`Server`] adds health, reflection, per-call tracing,
//! deadline propagation and graceful shutdown to every service. Generated
//! clients connect by service name through a [`Registry`] and send every call
//! with a deadline.
//!
//! Include the generated code with [`include_protos!`]:
//!
//! ```ignore
//! pub mod proto {
//!     trellis::include_protos!();
//! }
//! use proto::order::payment::v1::{OrderPaymentClient, PayRequest};
//! ```
//!
//! # Feature flags
//!
//! - `dns` (off by default): a DNS client (hickory-resolver) for the
//!   `dns://` [registry] URLs that need one: SRV names and a DNS server of
//!   the URL's own. `dns://NAME:PORT` (A/AAAA records, as a Kubernetes
//!   headless Service publishes) resolves through the system's resolver in
//!   every build.
//! - `etcd` (off by default): the `etcd://` [registry] backend, on the
//!   `etcd-client` crate, whose build needs `protoc`.
//! - `rest` (off by default; the order services turn it on): REST/JSON on
//!   the gRPC port from the protos' `google.api.http` routes ([gateway]),
//!   through `prost-reflect`. A server built without it names the routes it
//!   leaves unserved in a warning when it starts.
//! - `consul` (off by default): the `consul://` [registry] backend, through
//!   a Consul agent's HTTP API.
//! - `eureka` (off by default): the `eureka://` [registry] backend, through
//!   a Eureka server's REST API.
//! - `otel` (off by default): OTLP/gRPC export of a span per call served and
//!   made, to `trace.otlp_endpoint`, through `opentelemetry-proto`
//!   ([telemetry]).
//! - `tls` (off by default; the order services turn it on): TLS and mutual
//!   TLS between services on rustls with ring, configured in `[tls]`
//!   ([`tls`]).

pub mod admin;
pub mod app;
pub mod client;
pub mod codegen;
pub mod config;
pub mod context;
mod descriptor;
mod duration;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
mod listen;
pub mod metrics;
pub mod protocol;
pub mod registry;
mod secret;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod transport;

pub use app::{App, Context};
pub use descriptor::{
    DescribedService, HashKeyField, HashKeyKind, HedgePolicy, Idempotency, MethodDescriptor, MethodPolicy,
    ServiceDescriptor, StreamingKind,
};
pub use error::{BoxError, Error};
pub use registry::{Registry, RegistryUrl};
pub use secret::Secret;
pub use server::Server;
pub use tonic::{Code, Request, Response, Status, Streaming, async_trait};
pub use transport::tls;

/// Includes the code `trellis-build` generated in `build.rs`: one module per
/// proto package (`order.payment.v1` becomes `order::payment::v1`).
#[macro_export]
macro_rules! include_protos {
    () => {
        include!(concat!(env!("OUT_DIR"), "/trellis_protos.rs"));
    };
}
