"""A test service: serves `version=<VERSION>` over HTTP on 127.0.0.1:<PORT>,
or misbehaves as FAULT says.

    versioned_server.py PORT VERSION [FAULT [OTHER_PORT]]

FAULT is one of:
  none          serve 200 with the version
  exit-now      exit with code 3 before listening
  exit-later    serve, then exit with code 3 after 300 ms
  never-listen  run, never listen
  other-port    serve on OTHER_PORT instead of PORT
  http-500      answer every request with 500
  hang          accept connections, never answer
  foreign       as none (the port is held by another process: the test's)

While the port is taken the server retries binding every 50 ms, as servers
that wait for their port do, so that a probe of the port reaches whoever
holds it.
"""
import http.server
import os
import sys
import threading
import time

port = int(sys.argv[1])
version = sys.argv[2]
fault = sys.argv[3] if len(sys.argv) > 3 else "none"

if fault == "exit-now":
    sys.exit(3)
if fault == "never-listen":
    while True:
        time.sleep(3600)
if fault == "other-port":
    port = int(sys.argv[4])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if fault == "hang":
            time.sleep(3600)
        body = f"version={version}\n".encode()
        self.send_response(500 if fault == "http-500" else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer.daemon_threads = True
while True:
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        break
    except OSError:
        time.sleep(0.05)
print(f"serving version={version} on {port} ({fault})", flush=True)
if fault == "exit-later":
    threading.Timer(0.3, lambda: os._exit(3)).start()
server.serve_forever()
