//! The `order-payment` binary: `order-payment [FLAGS]` serves, `order-payment health` asks a
//! running server whether it is `SERVING` (the container health check; every
//! Trellis binary has it).

fn main() -> std::process::ExitCode {
    order_payment::main(std::env::args_os())
}
