//! `order-demo`: starts the order services as separate processes, places
//! orders through them, and prints what happened.
//!
//! The binary also contains the three services: `order-demo order-payment
//! ARGS...` runs exactly what the `order-payment` binary runs. The demo
//! starts itself that way, so one `cargo run` builds and runs everything.

mod cluster;
mod load;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Runs the order services together and places orders through them.
#[derive(Debug, Parser)]
#[command(name = "order-demo", version, about)]
struct Args {
    /// How many orders to place (each is Pay, Ship, then GetStatus).
    #[arg(long, default_value_t = 500)]
    orders: u64,
    /// How many orders are in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Instances of order-payment and of order-shipping to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    instances: u16,
    /// Where the services keep their databases and logs [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let program = args.next();
    match std::env::args().nth(1).as_deref() {
        Some("order-payment") => return order_payment::main(args),
        Some("order-shipping") => return order_shipping::main(args),
        Some("order-status") => return order_status::main(args),
        _ => {}
    }
    drop(program);
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("order-demo: error: cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("order-demo: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<load::Summary, String> {
    let temp;
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("order-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    println!("order-demo: data and logs in {}", dir.display());
    let cluster = cluster::Cluster::start(&dir, args.instances).await?;
    println!("{}", cluster.describe());

    let stop = ctrl_c_pressed();
    let summary =
        load::place_orders(cluster.registry(), |e| cluster.label_of(e), args.orders, args.concurrency, stop)
            .await;
    println!("\n{summary}");

    println!("stopping the services (SIGTERM, graceful drain)...");
    cluster.stop(Duration::from_secs(15)).await;
    Ok(summary)
}

/// Turns true when the user presses Ctrl-C.
fn ctrl_c_pressed() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: finishing the orders in flight, then stopping");
            let _ = tx.send(true);
        }
    });
    rx
}
