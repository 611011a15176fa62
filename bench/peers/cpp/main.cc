// The bench service on gRPC C++: bench.v1.Bench/Echo answers with the
// request's payload. Built by trellis-bench (scenario h2load) against
// Debian's libgrpc++-dev, with the service code generated from
// bench/proto/bench/v1/bench.proto by protoc and grpc_cpp_plugin. A callback
// (reactor) server: gRPC's own threads run the handler, no thread per call.
//
//   bench-echo-cpp --listen 127.0.0.1:PORT

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "bench/v1/bench.grpc.pb.h"

namespace {

class EchoService final : public bench::v1::Bench::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context,
                                 const bench::v1::Payload* request,
                                 bench::v1::Payload* response) override {
    *response = *request;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::fprintf(stderr, "bench-echo-cpp: error: unknown argument `%s`; usage: bench-echo-cpp --listen HOST:PORT\n", argv[i]);
      return 2;
    }
  }
  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "bench-echo-cpp: error: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::fprintf(stderr, "bench-echo-cpp: listening on %s (port %d)\n", listen.c_str(), port);
  server->Wait();
  return 0;
}
