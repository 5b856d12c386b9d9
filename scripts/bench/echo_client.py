#!/usr/bin/env python3
"""A tiny keep-alive client for a chat-server's `POST /_bench/echo`, for counting the server's
instructions per request (scripts/bench/edge_instructions.sh): the client's own speed does not
matter there, only that every request is the same and gets its 201.

    echo_client.py PORT REQUESTS [CONNECTIONS]

Each of CONNECTIONS keep-alive connections sends one request, reads its whole answer, and sends
the next, until REQUESTS were answered in all. The request looks like chat-loadgen's ceiling
phase's: host, a bearer token, a JSON send of 32 bytes. Exits 1 on any other answer than 201.
"""
import selectors
import socket
import sys


def request_bytes(port: int, n: int) -> bytes:
    body = ('{"recipient":"lg-user-1","body":"echo %021d"}' % n).encode()
    head = (
        "POST /_bench/echo HTTP/1.1\r\n"
        f"host: 127.0.0.1:{port}\r\n"
        "authorization: Bearer 0123456789abcdef0123456789abcdef0123456789abcdef\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def main() -> int:
    port, total = int(sys.argv[1]), int(sys.argv[2])
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    selector = selectors.DefaultSelector()
    sent = answered = 0
    buffers = {}
    for _ in range(min(connections, total)):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(request_bytes(port, sent))
        sent += 1
        buffers[conn] = b""
        selector.register(conn, selectors.EVENT_READ)
    while answered < total:
        for key, _ in selector.select():
            conn = key.fileobj
            chunk = conn.recv(65536)
            if not chunk:
                print("the server closed a connection", file=sys.stderr)
                return 1
            buffer = buffers[conn] + chunk
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buffer[:end].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if len(buffer) < end + 4 + length:
                    break
                if not head.startswith("HTTP/1.1 201"):
                    print(f"unexpected answer: {head.splitlines()[0]}", file=sys.stderr)
                    return 1
                buffer = buffer[end + 4 + length:]
                answered += 1
                if sent < total:
                    conn.sendall(request_bytes(port, sent))
                    sent += 1
            buffers[conn] = buffer
    for conn in buffers:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
