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
    assert plan == [
        "dry run: 1 image to delete, 1 record to delete, 0 stale multipart uploads to "
        "abort; 0 images kept",
        "would delete images/good.raw",
        "would delete metadata/good.raw.json"], p.stdout
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
