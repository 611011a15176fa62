//! `order-payment`: takes payments for orders.
//!
//! Payments live in one SQLite file that every instance on the machine
//! shares (`payment.database`). A `Pay` repeated with the same idempotency
//! key, on the same instance or another, returns the first result and
//! charges once.

pub mod store;

mod service;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

pub use service::PaymentService;

/// The generated protobuf and gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    trellis::include_protos!();
}

/// The `[payment]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The SQLite file shared by the instances (`TRELLIS_PAYMENT__DATABASE`).
    pub database: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { database: PathBuf::from("order-payment.sqlite3") }
    }
}

/// Runs the service with command-line `args` (the first is the program name).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    trellis::App::new("order-payment", env!("CARGO_PKG_VERSION"))
        // The admin listener (metrics, health, status page) on a free loopback port, unless
        // `admin.listen` or `--admin-listen` says where.
        .admin_listen_by_default(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .about("Takes payments for orders, once per idempotency key")
        .sections(&["payment"])
        .run_with_args(args, |ctx| async move {
            let settings: Settings = ctx.section("payment")?;
            let store = store::PaymentStore::open(&settings.database)?;
            ctx.server()
                .add_service(proto::order::payment::v1::order_payment_server::OrderPaymentServer::new(
                    PaymentService::new(store),
                ))
                .serve()
                .await?;
            Ok(())
        })
}
