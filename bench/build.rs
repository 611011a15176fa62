//! Compiles the benchmark service.

fn main() {
    trellis_build::compile(&["proto/bench/v1/bench.proto"], &["proto"]);
}
