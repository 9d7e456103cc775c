"""A thread-per-request HTTP/1.1 server for sightline's tests: each GET calls NEXT with urllib
on the handling thread, then answers with what it got. Prints "listening on ADDR"."""

import http.server
import sys
import urllib.request

port, upstream = int(sys.argv[1]), sys.argv[2]


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with urllib.request.urlopen(upstream) as r:
            body = r.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Front)
print("listening on", "127.0.0.1:%d" % server.server_address[1], flush=True)
server.serve_forever()
