//! The `order-payment` service binary.

fn main() -> std::process::ExitCode {
    order_payment::main(std::env::args_os())
}
