//! `order-shipping`: ships orders.
//!
//! Shipments live in one SQLite file that every instance on the machine
//! shares (`shipping.database`). A `Ship` repeated with the same idempotency
//! key, on the same instance or another, returns the first tracking id and
//! ships once.

pub mod store;

mod service;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

pub use service::ShippingService;

/// The generated protobuf and gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    trellis::include_protos!();
}

/// The `[shipping]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The SQLite file shared by the instances (`TRELLIS_SHIPPING__DATABASE`).
    pub database: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { database: PathBuf::from("order-shipping.sqlite3") }
    }
}

/// Runs the service with command-line `args` (the first is the program name).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    trellis::App::new("order-shipping", env!("CARGO_PKG_VERSION"))
        // The admin listener (metrics, health, status page) on a free loopback port, unless
        // `admin.listen` or `--admin-listen` says where.
        .admin_listen_by_default(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .about("Ships orders, once per idempotency key")
        .sections(&["shipping"])
        .run_with_args(args, |ctx| async move {
            let settings: Settings = ctx.section("shipping")?;
            let store = store::ShipmentStore::open(&settings.database)?;
            ctx.server()
                .add_service(proto::order::shipping::v1::order_shipping_server::OrderShippingServer::new(
                    ShippingService::new(store),
                ))
                .serve()
                .await?;
            Ok(())
        })
}
