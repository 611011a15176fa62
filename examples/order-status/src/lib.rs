//! `order-status`: the combined state of an order.
//!
//! Asks `order-payment` and `order-shipping`, in parallel, through the
//! generated clients; each call carries the remaining deadline of the call
//! being answered.

mod service;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

pub use service::StatusService;

/// The generated protobuf and gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    trellis::include_protos!();
}

/// The `[status]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How often `WatchStatus` looks for changes (`TRELLIS_STATUS__WATCH_INTERVAL`).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { watch_interval: Duration::from_millis(200) }
    }
}

/// Runs the service with command-line `args` (the first is the program name).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    trellis::App::new("order-status", env!("CARGO_PKG_VERSION"))
        // The admin listener (metrics, health, status page) on a free loopback port, unless
        // `admin.listen` or `--admin-listen` says where.
        .admin_listen_by_default(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .about("The combined state of an order, from payment and shipping")
        .sections(&["status"])
        .run_with_args(args, |ctx| async move {
            let settings: Settings = ctx.section("status")?;
            let service = StatusService::discover(&ctx, settings.watch_interval)?;
            ctx.server()
                .add_service(proto::order::status::v1::order_status_server::OrderStatusServer::new(service))
                .serve()
                .await?;
            Ok(())
        })
}
