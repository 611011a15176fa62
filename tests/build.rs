//! Compiles the test protos: imports, well-known types, nested packages and
//! every streaming kind.

fn main() {
    trellis_build::compile(
        &["proto/trellis/test/echo/v1/echo.proto", "proto/trellis/test/nested/deep/v1/deep.proto"],
        &["proto"],
    );
}
