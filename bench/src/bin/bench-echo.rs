//! The bench service as a user builds it: `trellis::App`, the generated
//! server, default configuration and logging. Scenario 5 (`h2load`) starts
//! it as a process, the way the README starts a service:
//!
//! ```text
//! bench-echo --listen 127.0.0.1:PORT --registry local://DIR
//! ```

#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
mod proto {
    trellis::include_protos!();
}

use proto::bench::v1::Payload;
use proto::bench::v1::bench_server::{Bench, BenchServer};
use trellis::{Request, Response, Status};

/// Answers with the request's payload.
#[derive(Debug)]
struct Echo;

#[trellis::async_trait]
impl Bench for Echo {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

fn main() -> std::process::ExitCode {
    trellis::App::new("bench-echo", env!("CARGO_PKG_VERSION"))
        .about("The bench service's Echo, as a user builds a service")
        .run(|ctx| async move {
            ctx.server().add_service(BenchServer::new(Echo)).serve().await?;
            Ok(())
        })
}
