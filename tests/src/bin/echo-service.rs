//! The test `Echo` service as a service binary (`trellis::App`, default
//! configuration and limits), for the tests that need a real process: the
//! attack tests read its memory from `/proc` while they flood it.
//!
//! ```text
//! echo-service --listen 127.0.0.1:0 --registry local://DIR [--set server.http2.KEY=VALUE]
//! ```

use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;

fn main() -> std::process::ExitCode {
    trellis::App::new("echo-service", env!("CARGO_PKG_VERSION"))
        .about("The test Echo service, every streaming kind")
        .run(|ctx| async move {
            ctx.server().add_service(EchoServer::new(EchoService)).serve().await?;
            Ok(())
        })
}
