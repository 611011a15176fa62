//! Compiles the test protos: imports, well-known types, nested packages,
//! every streaming kind, and per-method call policy.

fn main() {
    trellis_build::compile(
        &[
            "proto/trellis/test/echo/v1/echo.proto",
            "proto/trellis/test/nested/deep/v1/deep.proto",
            "proto/trellis/test/policy/v1/policy.proto",
        ],
        &["proto"],
    );
}
