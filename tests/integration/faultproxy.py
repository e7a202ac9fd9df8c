"""An HTTP/1.1 proxy on loopback in front of a real S3 server that records
every exchange and answers chosen requests the way other S3 servers do:
a 503 SlowDown with Retry-After, a 500 in the middle of a multipart upload,
a connection reset in the middle of a body, a 301 to another region, a clock
skew error, a ListObjectsV2 page that says IsTruncated without a token, a
CompleteMultipartUpload answer with an empty or another ETag.

The request goes upstream unchanged (same Host header, same signature: the
server checks it as if the client had spoken to it), so everything that is
not faulted is the real server's answer.

    proxy = FaultProxy(upstream_port).start()
    proxy.add(Rule(match(method="PUT", query="partNumber"), respond(500, ...)))
    ... run labctl with E2_ENDPOINT=proxy.endpoint ...
    proxy.log    # [Exchange(method, path, query, headers, status, fault, t)]
    proxy.stop()
"""
import http.client
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass
class Exchange:
    method: str
    path: str                 # unquoted, e.g. "/bucket/images/x.raw"
    query: dict               # unquoted names -> values ("" for a bare name)
    headers: dict             # lower-case names
    status: int = 0           # what the client got (0: the connection was reset)
    fault: str = ""           # the rule's name when one fired
    t: float = field(default_factory=time.monotonic)

    @property
    def key(self):
        """The object key (path without the bucket), "" for the bucket."""
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""


class Rule:
    """When `match(exchange)` holds, apply `action` (at most `times` times,
    after letting the first `skip` matches through)."""

    def __init__(self, match, action, times=1, skip=0, name=None):
        self.match, self.action, self.times, self.skip = match, action, times, skip
        self.name = name or getattr(action, "name", "fault")
        self.fired = 0


def match(method=None, key=None, key_prefix=None, query=None, header=None):
    """A predicate on Exchange: method, exact key, key prefix, a query
    parameter that must be present, a header that must be present."""
    def pred(x):
        return ((method is None or x.method == method)
                and (key is None or x.key == key)
                and (key_prefix is None or x.key.startswith(key_prefix))
                and (query is None or query in x.query)
                and (header is None or header.lower() in x.headers))
    return pred


def s3_error(code, message, **extra):
    """An S3 <Error> document."""
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message>{fields}<RequestId>faultproxy</RequestId>"
            f"</Error>").encode()


def respond(status, body=b"", headers=None, name=None):
    """Answer without asking the server (the request body is read first)."""
    def act(proxy, handler, x):
        handler.send_canned(status, body, headers or {})
        return status
    act.name = name or f"respond {status}"
    return act


def reset_after(nbytes, name=None):
    """Forward; pass the status, headers and the first nbytes of the body,
    then reset the connection (RST)."""
    def act(proxy, handler, x):
        return handler.forward(reset_after=nbytes)
    act.name = name or f"reset after {nbytes} bytes"
    return act


def rewrite(fn, name=None):
    """Forward; replace a 200 answer's body with fn(body)."""
    def act(proxy, handler, x):
        return handler.forward(rewrite=fn)
    act.name = name or "rewrite"
    return act


def truncate_listing(max_entries, name=None):
    """Forward a ListObjectsV2; when the page has more than max_entries
    keys and common prefixes, keep the first max_entries (in key order),
    say IsTruncated=true and leave out NextContinuationToken, as some
    servers do (a client must then go on from the last key)."""
    return rewrite(lambda body: _truncate(body, max_entries),
                   name or f"truncate listing to {max_entries}")


def _truncate(body, n):
    ET.register_namespace("", S3_NS)
    root = ET.fromstring(body)
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""

    def name_of(el):
        tag = "Key" if el.tag == ns + "Contents" else "Prefix"
        return el.find(ns + tag).text or ""

    entries = [el for el in root if el.tag in (ns + "Contents", ns + "CommonPrefixes")]
    if len(entries) <= n:
        return body
    for el in sorted(entries, key=lambda el: name_of(el).encode())[n:]:
        root.remove(el)
    for tag in ("NextContinuationToken",):
        for el in root.findall(ns + tag):
            root.remove(el)
    trunc = root.find(ns + "IsTruncated")
    trunc.text = "true"
    count = root.find(ns + "KeyCount")
    if count is not None:
        count.text = str(n)
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def _exchange(self):
        u = urlsplit(self.path)
        q = dict(parse_qsl(u.query, keep_blank_values=True))
        return Exchange(self.command, unquote(u.path), q,
                        {k.lower(): v for k, v in self.headers.items()})

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        proxy = self.server.proxy
        x = self._exchange()
        self.body = self._read_body()
        rule = proxy._pick(x)
        if rule:
            x.fault = rule.name
            status = rule.action(proxy, self, x)
        else:
            status = self.forward()
        x.status = status
        proxy._record(x)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    # -- answering

    def send_canned(self, status, body, headers):
        self.send_response_only(status)
        if "Date" not in headers:
            self.send_header("Date", self.date_time_string())
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Type" not in headers and body:
            self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _upstream_conn(self):
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection("127.0.0.1", self.server.proxy.upstream,
                                                       timeout=300)
        return self.upstream

    def _drop_upstream(self):
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def forward(self, reset_after=None, rewrite=None):
        """Send the request upstream as it came; relay the answer.  Returns
        the status the client saw (0 after a reset)."""
        for attempt in (1, 2):
            conn = self._upstream_conn()
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        conn.putheader(k, v)
                if self.body or self.command in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(self.body)))
                conn.endheaders(self.body or None)
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                self._drop_upstream()  # a kept-alive connection the server closed
                if attempt == 2:
                    raise
        if self.command == "HEAD":  # the headers as they came, Content-Length too
            resp.read()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.end_headers()
            return resp.status
        if rewrite is not None or resp.chunked or resp.length is None:
            body = resp.read()
            if rewrite is not None and resp.status == 200:
                body = rewrite(body)
            length = len(body)
            chunks = [body]
        else:
            length = resp.length
            chunks = None
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        chunks = chunks if chunks is not None else iter(lambda: resp.read(1 << 16), b"")
        for c in chunks:
            if reset_after is not None and sent + len(c) >= reset_after:
                self.wfile.write(c[:reset_after - sent])
                self._reset()
                return 0
            self.wfile.write(c)
            sent += len(c)
        return resp.status

    def _reset(self):
        self._drop_upstream()
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        self._drop_upstream()


class FaultProxy:
    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.rules = []
        self.log = []
        self._lock = threading.Lock()
        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._srv.daemon_threads = True
        self._srv.proxy = self
        self.port = self._srv.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()

    def add(self, rule):
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self):
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def _pick(self, x):
        with self._lock:
            for r in self.rules:
                if r.fired < r.times and r.match(x):
                    if r.skip:
                        r.skip -= 1
                        continue
                    r.fired += 1
                    return r
        return None

    def _record(self, x):
        with self._lock:
            self.log.append(x)

    def requests(self, pred=lambda x: True):
        with self._lock:
            return [x for x in self.log if pred(x)]
