//! The `order-status` service binary.

fn main() -> std::process::ExitCode {
    order_status::main(std::env::args_os())
}
