//! `order-demo`: starts the order services as separate processes, places
//! orders through them, and prints what happened.
//!
//! The binary also contains the three services: `order-demo order-payment
//! ARGS...` runs exactly what the `order-payment` binary runs. The demo
//! starts itself that way, so one `cargo run` builds and runs everything.

mod cluster;
mod load;
mod rest;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

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
    /// While orders flow, kill a payment or shipping instance with SIGKILL
    /// every 2 seconds, and restart it half a second later.
    #[arg(long)]
    chaos: bool,
    /// How the orders are placed: the generated gRPC clients, or REST/JSON.
    #[arg(long, value_enum, default_value_t = load::Protocol::Grpc)]
    protocol: load::Protocol,
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
    let mut temp = None;
    let dir = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => {
            let made = tempfile::Builder::new()
                .prefix("order-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            temp.insert(made).path().to_path_buf()
        }
    };
    println!("order-demo: data and logs in {}", dir.display());
    let cluster = cluster::Cluster::start(&dir, args.instances).await?;
    println!("{}", cluster.describe());
    if let Some((label, admin)) = cluster.admin_addrs().last() {
        println!(
            "order-demo: open http://{admin}/ for {label}'s live status page (its endpoints, breakers, calls)"
        );
    }
    let registry = cluster.registry().clone();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));

    let bar = ProgressBar::new(args.orders);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} orders {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let stop = ctrl_c_pressed();
    let chaos = args.chaos.then(|| tokio::spawn(chaos(cluster.clone(), bar.clone())));
    let mut summary =
        load::place_orders(&registry, args.protocol, bar, args.orders, args.concurrency, stop).await;
    if let Some(chaos) = chaos {
        chaos.abort();
        let _ = chaos.await;
    }
    let cluster = Arc::into_inner(cluster).ok_or("the chaos task still holds the cluster")?.into_inner();
    let mut per_instance = std::collections::BTreeMap::new();
    for (endpoint, calls) in &summary.per_endpoint {
        *per_instance.entry(cluster.label_of(endpoint)).or_insert(0) += calls;
    }
    summary.per_instance = per_instance.into_iter().collect();
    println!("\n{summary}");
    let trace = load::traced_order(&registry).await;

    println!("stopping the services (SIGTERM, graceful drain)...");
    cluster.stop(Duration::from_secs(15)).await;
    match trace {
        Ok(trace_id) => {
            // The logs must outlive the demo for the command to work.
            if let Some(temp) = temp.take() {
                let _ = temp.keep();
            }
            println!("\none order's trace id: {trace_id}");
            println!("its lines in the three services' logs (kept in {}):", dir.display());
            println!("  grep -h {trace_id} {}/order-*.log", shell_quote(&dir));
        }
        Err(err) => println!("\nthe traced order failed: {err}"),
    }
    Ok(summary)
}

/// `path` quoted for a POSIX shell.
fn shell_quote(path: &std::path::Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Kills and restarts an instance every two seconds.
async fn chaos(cluster: Arc<tokio::sync::Mutex<cluster::Cluster>>, bar: ProgressBar) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let result = cluster.lock().await.kill_and_restart(Duration::from_millis(500)).await;
        // `suspend` prints whether or not the bar is drawn (it is not when
        // the output is not a terminal).
        match result {
            Ok(message) => bar.suspend(|| println!("{message}")),
            Err(err) => bar.suspend(|| println!("chaos: {err}")),
        }
    }
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
