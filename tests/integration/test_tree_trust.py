"""Issue 12, "the bucket is input, not trust": listings, records and bucket
states that a well-behaved server and labctl never produce, and the two
programs' answers to them.

Most cases use the real local S3 server (records and objects are written
from Python).  A listing with keys outside the requested prefix cannot come
from a compliant server, so those tests talk to a small crafted-response
server on loopback (CraftedS3 below).
"""
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from shutil import which as shutil_which

from conftest import binary, clean_env, run
from test_imgfs import Mount

MiB = 1 << 20


def labctl(*args):
    return [binary("labctl"), *args]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def record_for(data, etag, name, bs=MiB):
    return {
        "name": name,
        "checksum": "sha256:" + sha256(data),
        "size": len(data),
        "uploadedAt": "2024-12-20T10:00:00Z",
        "source": {"url": "https://example.org/" + name},
        "etag": etag,
        "blocks": {"size": bs, "algorithm": "sha256",
                   "hashes": [sha256(data[i:i + bs]) for i in range(0, len(data), bs)]},
    }


def assert_no_sanitizer(text):
    assert "Sanitizer" not in text and "runtime error" not in text, text[-5000:]


# ------------------------------------------------- a crafted S3 server (finding 6)

class CraftedS3:
    """Answers ListObjectsV2 with exactly the keys it is given, whatever the
    prefix asked for (listings[prefix] = [(key, size, etag)]), serves
    objects[key] = bytes (GET with Range, HEAD), lists no multipart uploads
    unless told (uploads = [key]) and answers 404 to everything else.  No
    authentication: it only has to be answered, not trusted."""

    def __init__(self):
        self.listings = {}
        self.objects = {}
        self.uploads = []
        self.requests = []
        self.listing_asked = threading.Event()
        self.answer_listings = threading.Event()  # listings wait for it
        self.answer_listings.set()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _route(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
                parts = u.path.lstrip("/").split("/", 1)
                key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
                outer.requests.append((self.command, u.path, u.query))
                return key, q

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                key, q = self._route()
                if not key and "list-type" in q:
                    outer.listing_asked.set()
                    outer.answer_listings.wait(120)
                    prefix = q.get("prefix", [""])[0]
                    return self._send(200, outer.list_xml(prefix),
                                      [("Content-Type", "application/xml")])
                if not key and "uploads" in q:
                    return self._send(200, outer.uploads_xml(),
                                      [("Content-Type", "application/xml")])
                if key not in outer.objects:
                    return self._send(404, b"<Error><Code>NoSuchKey</Code>"
                                           b"<Message>no</Message></Error>")
                data = outer.objects[key]
                hdrs = [("ETag", outer.etag(key)),
                        ("Last-Modified", "Fri, 20 Dec 2024 10:00:00 GMT")]
                rng = self.headers.get("Range")
                m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
                if m and self.command == "GET":
                    a = int(m.group(1))
                    b = int(m.group(2)) if m.group(2) else len(data) - 1
                    b = min(b, len(data) - 1)
                    hdrs.append(("Content-Range", f"bytes {a}-{b}/{len(data)}"))
                    return self._send(206, data[a:b + 1], hdrs)
                if self.command == "HEAD":
                    self.send_response(200)
                    for k, v in hdrs:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return None
                return self._send(200, data, hdrs)

            def do_PUT(self):
                self._route()
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._send(403, b"<Error><Code>AccessDenied</Code>"
                                b"<Message>read-only</Message></Error>")

            do_DELETE = do_PUT
            do_POST = do_PUT

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def etag(self, key):
        return '"%s"' % hashlib.md5(self.objects.get(key, b"")).hexdigest()

    def list_xml(self, prefix):
        out = ['<?xml version="1.0" encoding="UTF-8"?>'
               '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               f'<Name>b</Name><Prefix>{prefix}</Prefix><MaxKeys>1000</MaxKeys>'
               '<IsTruncated>false</IsTruncated>']
        for key in self.listings.get(prefix, []):
            data = self.objects.get(key, b"?")
            out.append(f"<Contents><Key>{key}</Key>"
                       "<LastModified>2024-12-20T10:00:00.000Z</LastModified>"
                       f"<ETag>{self.etag(key)}</ETag><Size>{len(data)}</Size>"
                       "<StorageClass>STANDARD</StorageClass></Contents>")
        out.append("</ListBucketResult>")
        return "".join(out).encode()

    def uploads_xml(self):
        out = ['<?xml version="1.0" encoding="UTF-8"?>'
               '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               "<Bucket>b</Bucket><IsTruncated>false</IsTruncated>"]
        for i, key in enumerate(self.uploads):
            out.append(f"<Upload><Key>{key}</Key><UploadId>u{i}</UploadId>"
                       "<Initiated>2020-01-01T00:00:00.000Z</Initiated></Upload>")
        out.append("</ListMultipartUploadsResult>")
        return "".join(out).encode()

    @property
    def env(self):
        env = clean_env()
        env.update(E2_ENDPOINT=self.endpoint, E2_BUCKET="b", E2_ACCESS_KEY="AK",
                   E2_SECRET_KEY="SK", E2_REGION="us-east-1", IMGSTORE_RETRY_BUDGET="2",
                   IMGSTORE_LOG="debug")
        return env

    def close(self):
        self.answer_listings.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# keys a listing for "images/" or "metadata/" may not hold: shorter than the
# prefix, the prefix without its slash, and longer keys that only start like it
FOREIGN_IMAGES = ["x", "images", "imagesX-foreign.raw"]
FOREIGN_METAS = ["m", "metadata", "metadataX/good.raw.json"]


@pytest.fixture
def crafted():
    srv = CraftedS3()
    good = bytes(range(256)) * 4096  # 1 MiB
    srv.objects["images/good.raw"] = good
    srv.objects["metadata/good.raw.json"] = json.dumps(
        record_for(good, srv.etag("images/good.raw"), "good")).encode()
    for k in FOREIGN_IMAGES + FOREIGN_METAS:
        srv.objects[k] = b"foreign"
    srv.listings["images/"] = FOREIGN_IMAGES[:2] + ["images/good.raw"] + FOREIGN_IMAGES[2:]
    srv.listings["metadata/"] = FOREIGN_METAS[:2] + ["metadata/good.raw.json"] + \
        FOREIGN_METAS[2:]
    srv.uploads = ["x", "imagesX-foreign.raw"]
    yield srv
    srv.close()


def test_foreign_keys_in_listing_imgfs(crafted, tmp_path):
    m = Mount(crafted.env, tmp_path / "mnt", tmp_path / "cache")
    try:
        m.start()
        assert sorted(os.listdir(m.path)) == [".imgstore", "good.raw"]
        assert (m.path / "good.raw").read_bytes() == crafted.objects["images/good.raw"]
        by = m.path / ".imgstore" / "by-sha256"
        assert os.listdir(by) == [sha256(crafted.objects["images/good.raw"])]
    finally:
        m.stop()
    log = m.logtext()
    assert_no_sanitizer(log)
    for k in FOREIGN_IMAGES:
        assert f"dropping key '{k}'" in log, log


def test_foreign_keys_in_listing_labctl_list(crafted, tmp_path):
    p = run(labctl("images", "list", "--json"), env=crafted.env, check=0)
    assert_no_sanitizer(p.stderr)
    got = json.loads(p.stdout)
    assert [(x["destination"], x["complete"]) for x in got] == [("good.raw", True)]
    for k in FOREIGN_IMAGES + FOREIGN_METAS:
        assert f"dropping key '{k}'" in p.stderr, p.stderr


def test_foreign_keys_in_listing_prune_dry_run(crafted, tmp_path):
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True)
    mf = repo / "images" / "images.yaml"
    mf.write_text("apiVersion: images.lab.gilman.io/v1alpha1\nkind: ImageManifest\n"
                  "metadata:\n  name: lab\nspec:\n  images:\n    - name: keep\n"
                  "      source:\n        url: https://example.org/keep.raw\n"
                  "        checksum: 'sha256:" + "ab" * 32 + "'\n"
                  "      destination: keep.raw\n")
    p = run(labctl("images", "prune", "--manifest", mf, "--dry-run"), env=crafted.env,
            check=0)
    assert_no_sanitizer(p.stderr)
    plan = [line.strip() for line in p.stdout.splitlines()]
    assert len(plan) == 2, p.stdout
    assert plan[0] == ("dry run: 0 to delete, 1 to retire (kept as a previous version "
                       "first), 0 uploads to abort, 0 left alone; 0 kept"), p.stdout
    assert plan[1].startswith("would retire images/good.raw: no longer in the manifest"), \
        p.stdout
    for k in FOREIGN_IMAGES + FOREIGN_METAS:
        assert f"dropping key '{k}'" in p.stderr, p.stderr
    assert not [r for r in crafted.requests if r[0] in ("PUT", "POST", "DELETE")]


# ------------------------------------------------- by-sha256 claims (finding 2)

def put_image(bucket, dest, data, claim=None):
    """images/<dest> and a record with its own valid block map; `claim`
    replaces the record's checksum (a forged claim on another image's name)."""
    etag = bucket.put(f"images/{dest}", data)["ETag"]
    rec = record_for(data, etag, dest)
    if claim:
        rec["checksum"] = "sha256:" + claim
    bucket.put(f"metadata/{dest}.json", json.dumps(rec).encode())


def wait_refresh(m, before, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.stats()["refreshes"] > before:
            return
        time.sleep(0.1)
    raise AssertionError("no refresh")


@pytest.mark.parametrize("forged", ["other_size", "same_size"])
def test_by_sha256_disagreeing_claims_not_published(bucket, tmp_path, forged):
    base = bytes(range(256)) * 8192  # 2 MiB
    other = (b"evil" * (len(base) // 4)) if forged == "same_size" else b"evil" * 300000
    hexa = sha256(base)
    put_image(bucket, "base.qcow2", base)
    # sorts first: the old code gave the name to it
    put_image(bucket, "0evil.qcow2", other, claim=hexa)
    put_image(bucket, "fine.raw", b"fine" * 1000)
    m = Mount(bucket.env, tmp_path / "mnt", tmp_path / "cache")
    try:
        m.start()
        by = m.path / ".imgstore" / "by-sha256"
        assert os.listdir(by) == [sha256(b"fine" * 1000)]
        assert not (by / hexa).exists()
        # the images themselves stay (their records are valid for their bytes)
        assert (m.path / "base.qcow2").read_bytes() == base
        assert sorted(os.listdir(m.path)) == [".imgstore", "0evil.qcow2", "base.qcow2",
                                              "fine.raw"]
        before = m.stats()["refreshes"]
        m.sighup()
        wait_refresh(m, before)
        assert os.listdir(by) == [sha256(b"fine" * 1000)]
        # the forged record goes away: the name is published again
        bucket.s3.delete_object(Bucket=bucket.name, Key="metadata/0evil.qcow2.json")
        before = m.stats()["refreshes"]
        m.sighup()
        wait_refresh(m, before)
        assert sorted(os.listdir(by)) == sorted([hexa, sha256(b"fine" * 1000)])
        assert (by / hexa).read_bytes() == base
    finally:
        m.stop()
    log = m.logtext()
    assert_no_sanitizer(log)
    line = (f"warning: by-sha256/{hexa}: claimed by records that disagree "
            "(0evil.qcow2 and base.qcow2: different sizes or block maps); not published")
    assert log.count(line) == 1, log


def test_by_sha256_identical_claims_published(bucket, tmp_path):
    data = bytes(range(256)) * 4096 + b"tail"
    src = tmp_path / "img.raw"
    src.write_bytes(data)
    for dest in ("a/one.raw", "b/two.raw"):
        run(labctl("images", "upload", "--source", src, "--destination", dest),
            env=bucket.env, check=0)
    m = Mount(bucket.env, tmp_path / "mnt", tmp_path / "cache")
    try:
        m.start()
        by = m.path / ".imgstore" / "by-sha256"
        assert os.listdir(by) == [sha256(data)]
        assert (by / sha256(data)).read_bytes() == data
    finally:
        m.stop()
    log = m.logtext()
    assert_no_sanitizer(log)
    assert "disagree" not in log


# ------------------------------------------- labctl: record commit (finding 11)

class FaultProxy:
    """An HTTP proxy in front of the real S3 server: forwards every request
    as it came (the Host header included, so signatures stay valid) unless
    a rule says otherwise.  fail_put_prefix: PUTs of keys under it get 403.
    hold: {("HEAD"|"PUT", key)} -> the first such request after the object
    key was written through this proxy waits until release()."""

    def __init__(self, server):
        self.target = ("127.0.0.1", server.port)
        self.fail_put_prefix = None
        self.lose_answer = False  # forward those PUTs, then answer 403 all the same
        self.hold_rules = set()
        self.held = threading.Event()
        self.go = threading.Event()
        self.written = set()
        self.log = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _reply(self, status, headers, body):
                self.send_response(status)
                length = str(len(body))
                for k, v in headers:
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # of the object, which a HEAD does not send
                    elif k.lower() not in ("transfer-encoding", "connection",
                                           "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _any(self):
                body = self._body()
                u = urllib.parse.urlsplit(self.path)
                parts = u.path.lstrip("/").split("/", 1)
                key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
                outer.log.append((self.command, key, u.query))
                if (self.command == "PUT" and outer.fail_put_prefix and
                        key.startswith(outer.fail_put_prefix) and "partNumber" not in u.query):
                    if outer.lose_answer:
                        outer.forward(self.command, self.path, dict(self.headers), body)
                    return self._reply(403, [("Content-Type", "application/xml")],
                                       b"<?xml version='1.0' encoding='UTF-8'?><Error>"
                                       b"<Code>AccessDenied</Code><Message>Access Denied."
                                       b"</Message></Error>")
                for method, k in list(outer.hold_rules):
                    if method == self.command and k == key and \
                            ("images/" + key.split("/", 1)[1].removesuffix(".json")
                             if key.startswith("metadata/") else key) in outer.written:
                        outer.hold_rules.discard((method, k))
                        outer.held.set()
                        outer.go.wait(120)
                r, data = outer.forward(self.command, self.path, dict(self.headers), body)
                if self.command in ("PUT", "POST") and r.status == 200 and \
                        key.startswith("images/") and (self.command == "PUT") == \
                        ("uploadId" not in u.query):
                    outer.written.add(key)
                self._reply(r.status, r.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = _any

            def do_HEAD(self):
                self._any()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def forward(self, method, path, headers, body):
        import http.client
        conn = http.client.HTTPConnection(*self.target, timeout=120)
        hdrs = {k: v for k, v in headers.items()
                if k.lower() not in ("transfer-encoding", "connection")}
        if method in ("PUT", "POST"):
            hdrs["Content-Length"] = str(len(body))
        conn.request(method, path, body=body or None, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r, data

    def release(self):
        self.go.set()

    def close(self):
        self.go.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(s3server):
    p = FaultProxy(s3server)
    yield p
    p.close()


def via(bucket, proxy):
    env = bucket.env
    env["E2_ENDPOINT"] = proxy.endpoint
    env["IMGSTORE_MAX_ATTEMPTS"] = "2"
    return env


def upload_cmd(src, dest, *extra):
    return labctl("images", "upload", "--source", src, "--destination", dest,
                  "--part-size", "5M", *extra)


def listing(bucket):
    p = run(labctl("images", "list", "--json"), env=bucket.env, check=0)
    return {x["destination"]: x for x in json.loads(p.stdout)}


def head_etag(bucket, key):
    return bucket.s3.head_object(Bucket=bucket.name, Key=key)["ETag"]


def assert_not_mixed(bucket, dest):
    """The promise: a record that names the object's ETag describes its bytes."""
    keys = bucket.keys()
    if f"metadata/{dest}.json" not in keys or f"images/{dest}" not in keys:
        return
    rec = json.loads(bucket.get(f"metadata/{dest}.json"))
    data = bucket.get(f"images/{dest}")
    if rec["etag"].strip('"') == head_etag(bucket, f"images/{dest}").strip('"'):
        assert rec["checksum"] == "sha256:" + sha256(data)
        assert rec["size"] == len(data)


SIZES = {"single": 300 * 1024, "multipart": 11 * MiB + 5}


@pytest.mark.parametrize("kind", ["single", "multipart"])
def test_failed_record_put_keeps_the_new_image(bucket, proxy, tmp_path, kind):
    n = SIZES[kind]
    old, new = (b"old!" * n)[:n], (b"new." * n)[:n]
    src = tmp_path / "src.raw"
    src.write_bytes(old)
    run(upload_cmd(src, "d/x.raw"), env=bucket.env, check=0)
    src.write_bytes(new)
    proxy.fail_put_prefix = "metadata/d/"  # the record, not the version's
    p = run(upload_cmd(src, "d/x.raw"), env=via(bucket, proxy), check=1)
    assert_no_sanitizer(p.stderr)
    assert ("images/d/x.raw holds the new bytes without a checksum record: it is not "
            "served; upload or sync it again") in p.stderr, p.stderr
    # the bytes that replaced the old ones stay; no record claims them (the
    # old ones were kept as a version first)
    h = hashlib.sha256(old).hexdigest()
    assert bucket.keys() == ["images/d/x.raw", f"metadata/versions/{h}.json", f"versions/{h}"]
    assert bucket.get("images/d/x.raw") == new
    got = listing(bucket)["d/x.raw"]
    assert got["complete"] is False
    assert ("DELETE", "metadata/d/x.raw.json", "") in proxy.log
    proxy.fail_put_prefix = None
    run(upload_cmd(src, "d/x.raw"), env=bucket.env, check=0)
    assert listing(bucket)["d/x.raw"]["complete"] is True


def test_failed_record_put_same_bytes_keeps_the_record(bucket, proxy, tmp_path):
    data = b"same" * 1000
    src = tmp_path / "src.raw"
    src.write_bytes(data)
    run(upload_cmd(src, "x.raw"), env=bucket.env, check=0)
    before = bucket.get("metadata/x.raw.json")
    proxy.fail_put_prefix = "metadata/"
    # another name: not the same record, but the same bytes
    p = run(upload_cmd(src, "x.raw", "--name", "other"), env=via(bucket, proxy), check=1)
    assert "the previous record still describes images/x.raw" in p.stderr, p.stderr
    assert bucket.get("metadata/x.raw.json") == before
    assert listing(bucket)["x.raw"]["complete"] is True


def test_record_put_answer_lost(bucket, proxy, tmp_path):
    """The record PUT reached the server, its answer did not: the record is
    there, the upload succeeded."""
    data = b"lost" * 1000
    src = tmp_path / "src.raw"
    src.write_bytes(data)
    proxy.fail_put_prefix = "metadata/"
    proxy.lose_answer = True
    p = run(upload_cmd(src, "x.raw"), env=via(bucket, proxy), check=0)
    assert "the record is there all the same" in p.stderr, p.stderr
    assert listing(bucket)["x.raw"]["complete"] is True


def start_upload(cmd, env, log):
    import subprocess
    return subprocess.Popen([str(a) for a in cmd], env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)


@pytest.mark.parametrize("kind", ["single", "multipart"])
def test_race_replaced_before_the_record(bucket, proxy, tmp_path, kind):
    """A completes, B replaces the object, A checks it: A must not write a
    record that names B's ETag with A's block map."""
    n = SIZES[kind]
    a_data, b_data = (b"AAAA" * n)[:n], (b"BBBB" * n)[:n]
    (tmp_path / "a").write_bytes(a_data)
    (tmp_path / "b").write_bytes(b_data)
    proxy.hold_rules.add(("HEAD", "images/r.raw"))
    a = start_upload(upload_cmd(tmp_path / "a", "r.raw"), via(bucket, proxy), tmp_path / "a.log")
    assert proxy.held.wait(120), (tmp_path / "a.log").read_text()
    run(upload_cmd(tmp_path / "b", "r.raw"), env=bucket.env, check=0)
    proxy.release()
    assert a.wait(120) == 1, (tmp_path / "a.log").read_text()
    err = (tmp_path / "a.log").read_text()
    assert_no_sanitizer(err)
    assert "images/r.raw was replaced by another upload while this one finished" in err, err
    assert_not_mixed(bucket, "r.raw")
    got = listing(bucket)["r.raw"]
    assert got["complete"] is True and got["checksum"] == "sha256:" + sha256(b_data)


def test_race_replaced_before_the_record_lands(bucket, proxy, tmp_path):
    """A checked its object and PUTs the record; B replaced the object (and
    wrote its record) meanwhile: A's record must not stay as if complete,
    and A must not report success."""
    n = SIZES["single"]
    a_data, b_data = (b"AAAA" * n)[:n], (b"BBBB" * n)[:n]
    (tmp_path / "a").write_bytes(a_data)
    (tmp_path / "b").write_bytes(b_data)
    proxy.hold_rules.add(("PUT", "metadata/r.raw.json"))
    a = start_upload(upload_cmd(tmp_path / "a", "r.raw"), via(bucket, proxy), tmp_path / "a.log")
    assert proxy.held.wait(120), (tmp_path / "a.log").read_text()
    run(upload_cmd(tmp_path / "b", "r.raw"), env=bucket.env, check=0)
    proxy.release()
    assert a.wait(120) == 1, (tmp_path / "a.log").read_text()
    err = (tmp_path / "a.log").read_text()
    assert_no_sanitizer(err)
    assert "images/r.raw was replaced by another upload while its record was written" in err
    assert_not_mixed(bucket, "r.raw")
    # B's bytes, and no record that claims them with A's checksum
    assert bucket.get("images/r.raw") == b_data
    assert listing(bucket)["r.raw"]["complete"] is False
    assert "metadata/r.raw.json" not in bucket.keys()


# ------------------------------------------------ secrets in memory (finding 10)

NOBODY = 65534


def nobody_dir(prefix):
    import tempfile
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chown(d, NOBODY, NOBODY)
    return d


def as_nobody(args):
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all", *[str(a) for a in args]]


def proc_owner(pid):
    return os.stat(f"/proc/{pid}/environ").st_uid


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def test_imgfs_undumpable_as_a_user(crafted):
    """Running as an ordinary user, imgfs holds the secret key: its /proc
    files (mem, environ...) belong to root, so no other process of that user
    can read them, and no core file is written.  It is looked at while the
    listing it asks for before mounting is held back (here /dev/fuse is
    root's alone, so the mount itself would fail as that user)."""
    import shutil
    import subprocess
    top = nobody_dir("imgfs-nobody-")
    mnt, cache = top / "mnt", top / "cache"
    for d in (mnt, cache):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    env = crafted.env
    env["HOME"] = str(top)
    crafted.answer_listings.clear()
    p = subprocess.Popen(as_nobody([binary("imgfs"), "-f", "--cache-dir", cache, mnt]),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert crafted.listing_asked.wait(60)
        assert p.poll() is None
        assert proc_owner(p.pid) == 0, "imgfs is dumpable"
    finally:
        crafted.answer_listings.set()
        p.terminate()
        err = p.communicate(timeout=60)[1].decode(errors="replace")
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(top, ignore_errors=True)
    assert_no_sanitizer(err)


def test_labctl_undumpable_as_a_user(tmp_path):
    """labctl too: while it waits for a server that does not answer, its
    /proc files belong to root."""
    import socket
    import subprocess
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)  # accepts into the backlog, never answers
    env = clean_env()
    env.update(E2_ENDPOINT=f"http://127.0.0.1:{s.getsockname()[1]}", E2_BUCKET="b",
               E2_ACCESS_KEY="AK", E2_SECRET_KEY="SK", IMGSTORE_LOW_SPEED_TIMEOUT="30",
               IMGSTORE_RETRY_BUDGET="30", HOME="/")
    p = subprocess.Popen(as_nobody([binary("labctl"), "images", "list"]), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, _ = s.accept()  # it has connected: the credentials are resolved
        assert p.poll() is None
        assert proc_owner(p.pid) == 0, "labctl is dumpable"
        conn.close()
    finally:
        p.kill()
        p.wait()
        s.close()


def secret_copies(pid, secret, env_name=b"E2_SECRET_KEY="):
    """How many times the bytes of `secret` are in the process's memory,
    not counting those right after `env_name` (the environment the process
    got, and the sanitizer runtime's copy of it).  Mappings of 4 GiB and
    more are skipped: the sanitizers' shadow."""
    n, step = 0, 64 * MiB
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            f = line.split()
            a, b = (int(x, 16) for x in f[0].split("-"))
            if "r" not in f[1] or b - a >= 4 << 30 or \
                    (len(f) > 5 and f[5] in ("[vvar]", "[vsyscall]")):
                continue
            tail = b""
            for off in range(a, b, step):
                try:
                    mem.seek(off)
                    chunk = tail + mem.read(min(step, b - off))
                except (OSError, ValueError, OverflowError):
                    tail = b""
                    continue
                n += chunk.count(secret) - chunk.count(env_name + secret)
                tail = chunk[-(len(env_name) + len(secret) - 1):]
    return n


def test_imgfs_one_copy_of_the_secret(crafted, tmp_path):
    """After a mount and reads over several connections, the secret key is
    in imgfs's memory once, besides the environment it was started with:
    one heap copy that every connection uses."""
    secret = "SK-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:24]
    env = crafted.env
    env["E2_SECRET_KEY"] = secret
    m = Mount(env, tmp_path / "mnt", tmp_path / "cache")
    try:
        m.start()
        data = crafted.objects["images/good.raw"]
        assert (m.path / "good.raw").read_bytes() == data
        assert secret_copies(m.proc.pid, secret.encode()) == 1
    finally:
        m.stop()
    assert_no_sanitizer(m.logtext())


@pytest.mark.parametrize("endpoint,warned", [
    ("http://example.invalid:9000", True),
    ("http://10.1.2.3", True),
    ("http://127.0.0.1:9", False),
    ("http://localhost:9", False),
    ("http://[::1]:9", False),
    ("https://example.invalid", False),
])
def test_plain_http_to_another_host_warns(endpoint, warned):
    """`credentials check` resolves the settings and sends nothing."""
    env = clean_env()
    env.update(E2_ENDPOINT=endpoint, E2_BUCKET="b", E2_ACCESS_KEY="AK", E2_SECRET_KEY="SK")
    p = run(labctl("credentials", "check"), env=env, check=0)
    line = (f"labctl: warning: endpoint {endpoint} is plain http:// to another host: "
            "requests and data travel unencrypted and can be read or altered on the way; "
            "use https://\n")
    assert p.stderr.count(line) == (1 if warned else 0), p.stderr
    assert "plain http://" in p.stderr if warned else "plain http://" not in p.stderr


# ------------------------------------------ the systemd unit's sandbox (finding 10)

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "imgfs@.service"


def unit_settings():
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[", " ")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def syscall_groups():
    out = run(["systemd-analyze", "syscall-filter"], check=0).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.split()[0], [])
        elif cur is not None and line.strip() and not line.strip().startswith("#"):
            cur.append(line.strip())
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    res = set()
    for n in names:
        if not n.startswith("@"):
            res.add(n)
        elif n not in seen:
            seen.add(n)
            res |= expand(groups[n], groups, seen)
    return res


@pytest.mark.skipif(not shutil_which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify (with ExecStart= on the built imgfs) has nothing
    to say, and no setting sets up a mount namespace: those "disconnect
    propagation of mounts from the unit's processes to the host"
    (systemd.exec(5)), and the mount is what the unit is for."""
    d = tmp_path / "units"
    d.mkdir()
    # the unit is a meson template: fill in its paths as meson install does
    # (test_install.py checks the installed unit with its man page; this
    # copy has none, so its Documentation= line would send verify to man)
    text = UNIT.read_text().replace("@BINDIR@/imgfs", str(binary("imgfs")))
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("Documentation="))
    (d / "imgfs@.service").write_text(text.replace("@SYSCONFDIR@", str(tmp_path / "etc")))
    p = run(["systemd-analyze", "verify", d / "imgfs@srv-images.service"], check=0)
    assert p.stdout == "" and p.stderr == "", p.stdout + p.stderr
    s = unit_settings()
    namespacing = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                   "PrivateMounts", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                   "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
                   "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                   "ProtectControlGroups", "ProtectProc", "ProcSubset", "PrivateUsers",
                   "MountFlags", "RootDirectory", "RootImage", "LogNamespace"}
    assert not namespacing & set(s), namespacing & set(s)
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    assert s["DeviceAllow"] == ["/dev/fuse rw"] and s["DevicePolicy"] == ["closed"]


@pytest.mark.skipif(not (shutil_which("systemd-analyze") and shutil_which("strace")),
                    reason="needs systemd-analyze and strace")
def test_systemd_unit_sandbox_runs_imgfs(crafted, tmp_path):
    """What the unit grants is enough: imgfs with no new privileges and only
    the unit's capabilities (setpriv, as systemd would set them) mounts,
    serves, refreshes and is unmounted by fusermount3 the same way, and every
    system call it makes (strace) is in the unit's SystemCallFilter."""
    import signal
    import subprocess
    s = unit_settings()
    caps = ",".join("+" + c.lower().removeprefix("cap_")
                    for c in s["CapabilityBoundingSet"][0].split())
    jail = ["setpriv", "--no-new-privs", f"--bounding-set=-all,{caps}"]
    allowed = expand(s["SystemCallFilter"][0].split(), syscall_groups())
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    env = crafted.env
    env["IMGSTORE_LOG"] = "info"
    # LeakSanitizer cannot work under ptrace (a sanitizer build only)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    trace = tmp_path / "trace"
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, *jail, binary("imgfs"), "-f",
                          "--cache-dir", cache, "-o", "allow_other", mnt],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not mounted(mnt):
            assert p.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        good = crafted.objects["images/good.raw"]
        assert (mnt / "good.raw").read_bytes() == good
        assert os.getxattr(mnt / "good.raw", "user.imgstore.checksum") == \
            b"sha256:" + sha256(good).encode()
        assert json.loads((mnt / ".imgstore" / "stats").read_text())["cache_misses"] >= 1
        before = json.loads((mnt / ".imgstore" / "stats").read_text())["refreshes"]
        imgfs_pid = int(run(["pgrep", "-P", str(p.pid)], check=0).stdout.split()[0])
        os.kill(imgfs_pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while json.loads((mnt / ".imgstore" / "stats").read_text())["refreshes"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        run(["strace", "-f", "-qq", "-o", tmp_path / "trace-stop", *jail, "fusermount3",
             "-u", mnt], check=0)
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        log.close()
    used = set()
    for f in (trace, tmp_path / "trace-stop"):
        for line in f.read_text().splitlines():
            m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
            if m:
                used.add(m.group(1))
    assert {"mount", "umount2", "read", "openat"} <= used
    assert used - allowed == set(), sorted(used - allowed)
    assert_no_sanitizer((tmp_path / "log").read_text(errors="replace"))
