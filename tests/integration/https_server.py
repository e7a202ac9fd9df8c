"""A local HTTPS file server with a throw-away test CA, for labctl's source
downloads (tests and tests/bench/sync.sh).

- Serves the files of a directory with GET and HEAD, strong ETag and
  Last-Modified, single Range requests (206, 416) and If-Range.
- `drop_once(path, after)`: the next GET of `path` sends its headers and
  `after` bytes of the body, then drops the connection (to test resume).
- `redirect(path, location)`: answers 302 to `location`.
- `fail(path, status, times)`: answers `status` the next `times` requests.
- Records every request (method, path, Range) in `requests`.

As a program (for the benchmarks):
    https_server.py --dir DIR --cert-dir CDIR [--port PORT]
writes ca.pem/server.pem/server.key into CDIR (if missing), prints
"READY https://127.0.0.1:PORT" and serves until killed.
"""
import argparse
import email.utils
import os
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20


def make_test_ca(cert_dir):
    """A CA and a server certificate for 127.0.0.1/localhost, with openssl(1).
    Returns (ca.pem, server.pem, server.key) paths."""
    d = Path(cert_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca.key"
    crt, key = d / "server.pem", d / "server.key"
    if crt.exists() and key.exists() and ca.exists():
        return str(ca), str(crt), str(key)

    def sh(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "30",
       "-subj", "/CN=imgstore test CA",
       "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    csr = d / "server.csr"
    sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    sh("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
       "-CAcreateserial", "-out", str(crt), "-days", "30", "-extfile", str(ext))
    return str(ca), str(crt), str(key)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imgstore-test-https/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _state(self):
        return self.server.state

    def _path(self):
        return unquote(urlsplit(self.path).path)

    def _plain(self, status, text, extra=None):
        body = text.encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self):
        st = self._state()
        path = self._path()
        with st.lock:
            st.requests.append((self.command, path, self.headers.get("Range")))
            loc = st.redirects.get(path)
            fail = st.failures.get(path)
            if fail and fail[1] > 0:
                st.failures[path] = (fail[0], fail[1] - 1)
            else:
                fail = None
            drop = st.drops.pop(path, None) if self.command == "GET" else None
        if loc:
            return self._plain(302, "moved\n", {"Location": loc})
        if fail:
            return self._plain(fail[0], "injected failure\n")
        f = (Path(st.root) / path.lstrip("/")).resolve()
        if not str(f).startswith(str(Path(st.root).resolve())) or not f.is_file():
            return self._plain(404, "not found\n")
        stat = f.stat()
        size = stat.st_size
        etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
        lm = email.utils.formatdate(stat.st_mtime, usegmt=True)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (not if_range or if_range in (etag, lm)):
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                if unit.strip() != "bytes" or "," in spec:
                    raise ValueError
                if a == "":
                    start, end = max(0, size - int(b)), size - 1
                else:
                    start = int(a)
                    end = min(int(b), size - 1) if b else size - 1
                if start >= size or start > end:
                    return self._plain(416, "range not satisfiable\n",
                                       {"Content-Range": f"bytes */{size}"})
                status = 206
            except ValueError:
                start, end, status = 0, size - 1, 200
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", lm)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        left = length
        budget = drop if drop is not None else None
        with open(f, "rb") as fh:
            fh.seek(start)
            while left > 0:
                n = min(CHUNK, left)
                if budget is not None:
                    n = min(n, budget)
                    if n == 0:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                data = fh.read(n)
                if not data:
                    break
                self.wfile.write(data)
                left -= len(data)
                if budget is not None:
                    budget -= len(data)
                with st.lock:
                    st.bytes_sent += len(data)

    def do_GET(self):
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    def do_HEAD(self):
        self.do_GET()


class _State:
    def __init__(self, root):
        self.root = str(root)
        self.lock = threading.Lock()
        self.requests = []
        self.redirects = {}
        self.failures = {}
        self.drops = {}
        self.bytes_sent = 0


class HTTPSServer:
    """Serves `root` on https://127.0.0.1:<port> in a background thread."""

    def __init__(self, root, cert_dir, port=0):
        self.ca, crt, key = make_test_ca(cert_dir)
        self.state = _State(root)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        self.root = Path(root)
        self._thread = None

    def url(self, name):
        return f"{self.base}/{name}"

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def requests(self):
        with self.state.lock:
            return list(self.state.requests)

    def drop_once(self, name, after):
        with self.state.lock:
            self.state.drops["/" + name] = after

    def redirect(self, name, location):
        with self.state.lock:
            self.state.redirects["/" + name] = location

    def fail(self, name, status, times=1):
        with self.state.lock:
            self.state.failures["/" + name] = (status, times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cert-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    if not shutil.which("openssl"):
        sys.exit("openssl(1) is needed for the test CA")
    srv = HTTPSServer(a.dir, a.cert_dir, a.port)
    print(f"READY {srv.base}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
