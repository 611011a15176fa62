//! The `order-shipping` binary: `order-shipping [FLAGS]` serves, `order-shipping health` asks a
//! running server whether it is `SERVING` (the container health check; every
//! Trellis binary has it).

fn main() -> std::process::ExitCode {
    order_shipping::main(std::env::args_os())
}
