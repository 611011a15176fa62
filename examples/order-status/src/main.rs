//! The `order-status` binary: `order-status [FLAGS]` serves, `order-status health` asks a
//! running server whether it is `SERVING` (the container health check; every
//! Trellis binary has it).

fn main() -> std::process::ExitCode {
    order_status::main(std::env::args_os())
}
