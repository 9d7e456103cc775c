"""A raw HTTP/1.1 client for sightline's tests: sends exact bytes, in the pieces and at the
pace given, on one keep-alive connection, and prints each response's status and how long the
exchange took (ms). Usage: shapes_client.py PORT."""

import socket
import sys
import time

port = int(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", port))
buf = b""


def read_response():
    """One response: its status, after its whole body (Content-Length or chunked)."""
    global buf
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {l.split(b":")[0].strip().lower(): l.split(b":", 1)[1].strip() for l in lines[1:]}
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            buf += sock.recv(65536)
        buf = buf[n:]
    elif headers.get(b"transfer-encoding") == b"chunked":
        while b"0\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        buf = buf.split(b"0\r\n\r\n", 1)[1]
    return status


def exchange(name, pieces, responses=1, pause=0.05):
    start = time.monotonic()
    for i, p in enumerate(pieces):
        if i:
            time.sleep(pause)
        sock.sendall(p)
    statuses = [read_response() for _ in range(responses)]
    ms = (time.monotonic() - start) * 1000
    print(name, *statuses, "%.3f" % ms, flush=True)


h = b"Host: shapes\r\n"
exchange("keep-alive-1", [b"GET /ka/1 HTTP/1.1\r\n" + h + b"\r\n"])
exchange("keep-alive-2", [b"GET /ka/2 HTTP/1.1\r\n" + h + b"\r\n"])
exchange("pipelined", [b"GET /pipe/1 HTTP/1.1\r\n" + h + b"\r\nGET /pipe/2 HTTP/1.1\r\n" + h + b"\r\n"], 2)
exchange(
    "chunked",
    [
        b"POST /chunked HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n",
        b"0\r\n\r\n",
    ],
)
exchange("split", [b"POST /split HTTP/1.1\r\n" + h + b"Content-Length: 10\r\n\r\n01234", b"56789"])
exchange("split-head", [b"GET /split-he", b"ad HTTP/1.1\r\n" + h, b"\r\n"])
exchange("stream", [b"GET /stream HTTP/1.1\r\n" + h + b"\r\n"])
