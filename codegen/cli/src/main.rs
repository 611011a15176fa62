//! `trellis`: scaffold, check, run and front Trellis services.
//!
//! See `docs/cli.md` for every command, or `trellis help COMMAND`.

mod deploy;
mod doctor;
mod error;
mod manifest;
mod names;
mod nginx;
mod scaffold;
mod template;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;

/// Scaffold, check, run and front Trellis gRPC services.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, propagate_version = true)]
#[command(after_help = "Examples:
  trellis new greeter                     a new service crate in ./greeter
  trellis doctor greeter                  check it, its config and its deployment files
  trellis up                              run every service of this workspace
  trellis nginx --registry local:// greeter.v1.Greeter > nginx.conf")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes a new service crate from the template
    #[command(after_help = "Examples:
  trellis new greeter
  trellis new billing --path services/billing --package acme.billing.v1
  trellis new greeter --trellis-path ~/src/trellis --port 50061

NAME is the crate name and, in snake case, the proto package's first part:
lowercase letters, digits, `-` and `_`, starting with a letter. The crate
records what it wrote in .trellis/manifest.toml; running `trellis new` again
on it works like `trellis upgrade`.")]
    New(scaffold::NewArgs),

    /// Adds a proto and its build wiring to a service crate
    #[command(subcommand)]
    #[command(after_help = "Examples:
  trellis add proto billing                       a new proto with a sample service
  trellis add service ../protos/ledger/v1/ledger.proto   an existing proto")]
    Add(AddCommand),

    /// Updates the files `trellis new` wrote that you have not changed
    #[command(after_help = "Examples:
  trellis upgrade                 in the service crate
  trellis upgrade greeter --dry-run

A file you edited is never overwritten: the difference between it and the
template is printed instead, and the exit status is 1.")]
    Upgrade(scaffold::UpgradeArgs),

    /// Checks a service crate, its config and its deployment files
    #[command(after_help = "Examples:
  trellis doctor
  trellis doctor greeter --config greeter/config.toml

Checks that the protos compile and their policies are valid, that every
config key is known, that the registry can be reached, that the listen
address is free, and that the Dockerfile and deploy/kubernetes.yaml agree
with the config. Prints each problem with its fix; exit status 1 if any.")]
    Doctor(doctor::DoctorArgs),

    /// Runs every service binary of a workspace on one local registry
    #[command(after_help = "Examples:
  trellis up
  trellis up examples --instances 2
  trellis up --package order-payment --no-build

Each process's log lines are prefixed with its name. Ctrl-C (SIGINT) or
SIGTERM drains and stops every instance.")]
    Up(up::UpArgs),

    /// Renders an Nginx configuration fronting services found in a registry
    #[command(after_help = "Examples:
  trellis nginx --registry local:// greeter.v1.Greeter > /etc/nginx/conf.d/greeter.conf
  trellis nginx --registry etcd://10.0.0.5:2379 greeter.v1.Greeter billing.v1.Billing \\
      --listen 0.0.0.0:8080 --output /etc/nginx/conf.d/trellis.conf --watch
  trellis nginx --registry local:// greeter.v1.Greeter --full --output run/nginx.conf
  nginx -p run -c nginx.conf -e stderr -g 'daemon off;'

One `upstream` per service with every instance (passive health: max_fails,
fail_timeout), one `grpc_pass` location per service path, on an HTTP/2
listener. --watch rewrites the file and reloads Nginx when instances change.")]
    Nginx(nginx::NginxArgs),
}

#[derive(Debug, Subcommand)]
enum AddCommand {
    /// Adds a new proto with a sample service, from the template
    #[command(after_help = "Examples:
  trellis add proto billing                    proto/<crate>/billing/v1/billing.proto
  trellis add proto billing --package acme.billing.v1 --path greeter

build.rs compiles every .proto under proto/, so nothing else changes; the
generated code appears under `proto::` in the crate.")]
    Proto(scaffold::AddProtoArgs),

    /// Copies an existing proto file into the crate
    #[command(after_help = "Examples:
  trellis add service ../protos/billing/v1/billing.proto
  trellis add service billing.proto --path greeter

The file goes to proto/<package path>/ after its `package` line, where
build.rs compiles it.")]
    Service(scaffold::AddServiceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::New(args) => scaffold::new(&args),
        Command::Add(AddCommand::Proto(args)) => scaffold::add_proto(&args),
        Command::Add(AddCommand::Service(args)) => scaffold::add_service(&args),
        Command::Upgrade(args) => scaffold::upgrade(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Up(args) => up::run(&args),
        Command::Nginx(args) => nginx::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("trellis: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// The Trellis checkout this binary was built from: the default of `--trellis-path`.
fn built_from() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The version of Trellis this binary renders.
const TRELLIS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A Tokio runtime for the commands that do I/O.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("cannot start the Tokio runtime: {e}")))
}
