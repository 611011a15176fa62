//! The protos of the gateway fuzz target, through `trellis-build` as a
//! service crate builds them.

fn main() {
    trellis_build::compile(&["proto/fuzz/v1/fuzz.proto"], &["proto"]);
}
