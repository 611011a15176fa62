//! The `order-shipping` service binary.

fn main() -> std::process::ExitCode {
    order_shipping::main(std::env::args_os())
}
