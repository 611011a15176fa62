//! Compiles the protos this service serves and calls.

fn main() {
    trellis_build::compile(&["../../proto/order/shipping/v1/shipping.proto"], &["../../proto"]);
}
