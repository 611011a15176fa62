// The bench service on grpc-go: bench.v1.Bench/Echo answers with the
// request's payload. Built by trellis-bench (scenario h2load) against
// Debian's golang-google-grpc-dev, with the service code generated from
// bench/proto/bench/v1/bench.proto by protoc-gen-go (plugins=grpc).
//
//	bench-echo-go --listen 127.0.0.1:PORT
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
)

type echo struct{}

func (echo) Echo(_ context.Context, request *Payload) (*Payload, error) {
	return request, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on, HOST:PORT")
	flag.Parse()
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-echo-go: error: cannot listen on %s: %v\n", *listen, err)
		os.Exit(1)
	}
	server := grpc.NewServer()
	RegisterBenchServer(server, echo{})
	fmt.Fprintf(os.Stderr, "bench-echo-go: listening on %s\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintf(os.Stderr, "bench-echo-go: error: %v\n", err)
		os.Exit(1)
	}
}
