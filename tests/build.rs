//! Compiles the test protos: imports, well-known types, nested packages,
//! every streaming kind, per-method call policy, REST routes, and method
//! names that collide with the generated code's own.

fn main() {
    trellis_build::compile(
        &[
            "proto/trellis/test/collide/v1/collide.proto",
            "proto/trellis/test/echo/v1/echo.proto",
            "proto/trellis/test/nested/deep/v1/deep.proto",
            "proto/trellis/test/policy/v1/policy.proto",
            "proto/trellis/test/rest/v1/rest.proto",
        ],
        &["proto"],
    );
}
