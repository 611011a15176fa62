//! Compiles the protos this service serves and calls.

fn main() {
    trellis_build::compile(&["../../proto/order/payment/v1/payment.proto"], &["../../proto"]);
}
