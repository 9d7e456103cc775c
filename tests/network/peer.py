"""Servers and clients for sightline's network signal tests. Each client prints one JSON line
with what the kernel itself says of its connection (TCP_INFO, what `ss -ti` shows) and what
the program itself counted, the ground truth sightline's figures are compared with.

  peer.py sink PORT             count each connection's bytes, reply with the count, close
  peer.py abort PORT            close each accepted connection at once with SO_LINGER 0 (RST)
  peer.py upload HOST PORT N    send N bytes, half-close, read the reply, report
  peer.py connect HOST PORT     one connect with a single SYN retry; report how it failed
  peer.py reset HOST PORT       connect, wait for the peer's reset, report
"""
import errno
import json
import socket
import struct
import sys

TCP_INFO_LEN = 232


def tcp_info(s):
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    # struct tcp_info: 8 bytes of u8 fields, 24 u32s (total_retrans the last), then u64
    # pacing_rate, max_pacing_rate, bytes_acked, bytes_received, u32 segs_out, segs_in.
    u32s = struct.unpack_from("24I", raw, 8)
    bytes_acked, bytes_received = struct.unpack_from("QQ", raw, 120)
    segs_out, segs_in = struct.unpack_from("II", raw, 136)
    return {
        "total_retrans": u32s[23],
        "bytes_acked": bytes_acked,
        "bytes_received": bytes_received,
        "segs_out": segs_out,
        "segs_in": segs_in,
    }


def serve(port, handle):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(64)
    print("listening", flush=True)
    while True:
        c, _ = ls.accept()
        handle(c)


def sink(c):
    n = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        n += len(b)
    c.sendall(b"%d\n" % n)
    c.close()


def abort(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def report(d):
    print(json.dumps(d), flush=True)


def main():
    mode = sys.argv[1]
    if mode == "sink":
        serve(int(sys.argv[2]), sink)
    elif mode == "abort":
        serve(int(sys.argv[2]), abort)
    host, port = sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mode == "upload":
        n = int(sys.argv[4])
        s.connect((host, port))
        local = "%s:%d" % s.getsockname()
        s.sendall(b"x" * n)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            reply += b
        info = tcp_info(s)
        s.close()
        report({"local": local, "sent": n, "server_counted": int(reply), **info})
    elif mode == "connect":
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        try:
            s.connect((host, port))
            report({"error": None})
        except OSError as e:
            report({"local": "%s:%d" % s.getsockname(), "error": errno.errorcode[e.errno],
                    **tcp_info(s)})
    elif mode == "reset":
        s.connect((host, port))
        local = "%s:%d" % s.getsockname()
        try:
            got = s.recv(1)
            error = None if got else "eof"
        except ConnectionResetError:
            error = "ECONNRESET"
        report({"local": local, "error": error})


main()
