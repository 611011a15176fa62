//! Compiles the protos this service serves and calls.

fn main() {
    // The status service serves its own proto and calls the other two.
    trellis_build::compile(&["../../proto/order/status/v1/status.proto"], &["../../proto"]);
}
