"""store/s3.c through tests/tools/s3tool, checked with boto3 against the real
local S3 server (Swift + s3api), plus a small fake server for the failure
paths a real one will not produce on demand (resets, stalls, 503s).

Test hooks of the client (store/s3.h): IMGSTORE_RETRY_BUDGET=SECONDS bounds
the total retry time of one call, IMGSTORE_MAX_ATTEMPTS the attempts, and
IMGSTORE_LOW_SPEED_TIMEOUT=SECONDS how long a stalled transfer may sit.
"""
import hashlib
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SECRET_KEY, binary, clean_env, run

MIB = 1 << 20


def s3tool(*args):
    return [binary("s3tool"), *args]


def data_of(size, seed=0):
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha512(b"%d-%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:size])


def get(bucket, key, *rng, env=None, check=0):
    """s3tool get with binary stdout."""
    p = subprocess.run(s3tool("get", key, *map(str, rng)), env=env or bucket.env,
                       capture_output=True, timeout=300)
    if check is not None:
        assert p.returncode == check, p.stderr.decode(errors="replace")
    return p


def test_put_get_round_trip(bucket, tmp_path):
    data = data_of(3 * MIB + 17, 1)
    f = tmp_path / "a.bin"
    f.write_bytes(data)
    p = run(s3tool("put", "images/a.bin", f), env=bucket.env, check=0)
    assert bucket.get("images/a.bin") == data
    head = bucket.s3.head_object(Bucket=bucket.name, Key="images/a.bin")
    assert p.stdout.strip() == head["ETag"]
    assert get(bucket, "images/a.bin").stdout == data
    # written by boto3, read by us; an empty object
    bucket.put("b.bin", data[:1000])
    assert get(bucket, "b.bin").stdout == data[:1000]
    bucket.put("empty", b"")
    assert get(bucket, "empty").stdout == b""
    h = run(s3tool("head", "images/a.bin"), env=bucket.env, check=0).stdout.split()
    assert int(h[0]) == len(data) and h[1] == head["ETag"]
    # empty file upload
    e = tmp_path / "e"
    e.write_bytes(b"")
    run(s3tool("put", "e2", e), env=bucket.env, check=0)
    assert bucket.get("e2") == b""


def test_ranges(bucket):
    data = data_of(1000, 2)
    bucket.put("r", data)
    assert get(bucket, "r", 0, 10).stdout == data[:10]
    assert get(bucket, "r", 990, 10).stdout == data[990:]
    assert get(bucket, "r", 999, 1).stdout == data[999:]
    assert get(bucket, "r", 500, 100000).stdout == data[500:]  # short at EOF
    assert get(bucket, "r", 1000, 10).stdout == b""  # at EOF: nothing, no error
    assert get(bucket, "r", 5000, 10).stdout == b""
    assert get(bucket, "r", 0, 0).stdout == b""


def test_if_match(bucket):
    data = data_of(5000, 3)
    etag = bucket.put("m", data)["ETag"]
    p = subprocess.run(s3tool("get-if", "m", etag, "100", "50"), env=bucket.env,
                       capture_output=True)
    assert p.returncode == 0 and p.stdout == data[100:150]
    p = run(s3tool("get-if", "m", '"0123456789abcdef0123456789abcdef"'), env=bucket.env,
            check=1)
    assert "412" in p.stderr and "precondition" in p.stderr.lower()


def test_head_and_get_missing(bucket):
    p = run(s3tool("head", "nope"), env=bucket.env, check=1)
    assert "404" in p.stderr
    p = run(s3tool("get", "nope"), env=bucket.env, check=1)
    assert "NoSuchKey" in p.stderr


def _put_many(bucket, keys, body=b"x"):
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda k: bucket.put(k, body), keys))


def test_list_paging_and_delete_many(bucket):
    keys = [f"many/k{i:05d}" for i in range(1100)]
    _put_many(bucket, keys)
    bucket.put("other", b"y")
    p = run(s3tool("ls", "many/"), env=bucket.env, check=0)
    lines = p.stdout.splitlines()
    assert [ln.split(" ", 2)[2] for ln in lines] == keys
    assert all(ln.startswith("1 \"") for ln in lines)
    # DeleteObjects: two batches (1000 + 100)
    p = run(s3tool("rm", "-"), env=bucket.env, check=0, input="\n".join(keys) + "\n")
    assert bucket.keys("many/") == []
    assert bucket.keys() == ["other"]


def test_list_delimiter(bucket):
    for k in ["p/a/1", "p/a/2", "p/b/1", "p/c", "q"]:
        bucket.put(k, b"z")
    out = run(s3tool("ls", "p/", "/"), env=bucket.env, check=0).stdout.splitlines()
    assert out[0].endswith(" p/c") and len(out) == 3
    assert out[1:] == ["PRE p/a/", "PRE p/b/"]
    out = run(s3tool("ls", "", "/"), env=bucket.env, check=0).stdout.splitlines()
    assert out[0].endswith(" q") and out[1:] == ["PRE p/"]


ODD_KEYS = ["sp ace/a b.qcow2", "plus+sign", "eq=ual&amp", "uni/ça-日本語-ü",
            "dollar$~_-.!*'()",
            "per%25cent", "semi;colon,comma:at@", "q?mark#hash", "dot/../dot", "dbl//slash"]


def test_odd_keys(bucket, tmp_path):
    for i, k in enumerate(ODD_KEYS):
        f = tmp_path / f"{i}"
        f.write_bytes(k.encode() * 3)
        run(s3tool("put", k, f), env=bucket.env, check=0)
        assert bucket.get(k) == k.encode() * 3, k
        assert get(bucket, k).stdout == k.encode() * 3, k
    listed = [ln.split(" ", 2)[2] for ln in
              run(s3tool("ls"), env=bucket.env, check=0).stdout.splitlines()]
    assert sorted(listed) == sorted(ODD_KEYS) == bucket.keys()
    run(s3tool("rm", *ODD_KEYS[:2]), env=bucket.env, check=0)
    run(s3tool("rm", ODD_KEYS[2]), env=bucket.env, check=0)
    assert bucket.keys() == sorted(ODD_KEYS[3:])


def test_multipart(bucket, tmp_path):
    data = data_of(12 * MIB + 3, 4)
    f = tmp_path / "big"
    f.write_bytes(data)
    p = run(s3tool("mpu-put", "images/big.raw", f, "5M"), env=bucket.env, check=0)
    assert re.fullmatch(r'"[0-9a-f]{32}-3"', p.stdout.strip())
    assert bucket.get("images/big.raw") == data
    assert get(bucket, "images/big.raw", 5 * MIB - 3, 10).stdout == data[5 * MIB - 3:5 * MIB + 7]
    assert bucket.pending_uploads() == []
    # create, list (ours and boto3), abort
    ids = [run(s3tool("mpu-create", f"up/{i} x+y"), env=bucket.env, check=0).stdout.strip()
           for i in range(3)]
    out = run(s3tool("mpu-ls", "up/"), env=bucket.env, check=0).stdout.splitlines()
    assert sorted((ln.rsplit(" ", 2)[0], ln.rsplit(" ", 2)[1]) for ln in out) == \
        sorted((f"up/{i} x+y", ids[i]) for i in range(3))
    assert sorted(u["UploadId"] for u in bucket.pending_uploads()) == sorted(ids)
    for i in range(3):
        run(s3tool("mpu-abort", f"up/{i} x+y", ids[i]), env=bucket.env, check=0)
    assert bucket.pending_uploads() == []
    assert run(s3tool("mpu-ls"), env=bucket.env, check=0).stdout == ""
    p = run(s3tool("mpu-abort", "up/0 x+y", ids[0]), env=bucket.env, check=1)
    assert "NoSuchUpload" in p.stderr


def test_wrong_secret(bucket):
    env = bucket.env
    env["E2_SECRET_KEY"] = "Wr0ng-Secr3t-Value/xyz"
    env["IMGSTORE_LOG"] = "debug"
    for args in (["ls"], ["get", "k"], ["head", "k"]):
        p = run(s3tool(*args), env=env, check=1)
        assert "403" in p.stderr
        assert "Wr0ng-Secr3t-Value" not in p.stderr + p.stdout
        assert "Signature=" not in p.stderr and "Authorization" not in p.stderr
    p = run(s3tool("ls"), env=env, check=1)
    assert "SignatureDoesNotMatch" in p.stderr and "E2_SECRET_KEY" in p.stderr
    p = run(s3tool("ls"), env=bucket.env, check=0)
    assert SECRET_KEY not in p.stderr


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down(bucket):
    env = bucket.env
    env.update(E2_ENDPOINT=f"http://127.0.0.1:{closed_port()}", IMGSTORE_RETRY_BUDGET="2")
    t = time.monotonic()
    p = run(s3tool("ls"), env=env, check=1, timeout=30)
    took = time.monotonic() - t
    assert took < 6, took
    assert "cannot reach" in p.stderr and "Connection refused" in p.stderr
    assert "E2_ENDPOINT" in p.stderr


def test_usage(bucket):
    env = clean_env()
    p = run(s3tool("ls"), env=env, check=2)
    assert "E2_ENDPOINT" in p.stderr
    run(s3tool("frobnicate"), env=bucket.env, check=2)
    run(s3tool("get", "k", "x", "1"), env=bucket.env, check=2)
    env = bucket.env
    env["E2_ENDPOINT"] = "ftp://127.0.0.1:1"
    run(s3tool("ls"), env=env, check=2)


# ---------------------------------------------------------------- fake server

class Fake:
    """An S3 look-alike that serves one object and misbehaves as told."""

    def __init__(self, data):
        self.data = data
        self.etag = '"%s"' % hashlib.md5(data).hexdigest()
        self.plan = []  # per request: "ok", "reset", "stall", "503", "429", "403"
        self.seen = []  # (method, path, headers)
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                fake.seen.append(("GET", self.path, hdrs))
                what = fake.plan.pop(0) if fake.plan else "ok"
                if what in ("503", "429", "403"):
                    code = {"503": "SlowDown", "429": "SlowDown", "403": "AccessDenied"}[what]
                    body = (f"<?xml version='1.0'?><Error><Code>{code}</Code>"
                            f"<Message>m</Message></Error>").encode()
                    self.send_response(int(what))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                im = self.headers.get("If-Match")
                if im and im != fake.etag:
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(fake.data) - 1
                rng = self.headers.get("Range")
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                    start = int(m.group(1))
                    if m.group(2):
                        end = min(end, int(m.group(2)))
                body = fake.data[start:end + 1]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(fake.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", fake.etag)
                self.end_headers()
                if what == "reset":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                elif what == "stall":
                    self.wfile.write(body[:len(body) // 3])
                    self.wfile.flush()
                    time.sleep(30)
                    self.close_connection = True
                else:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = Fake(data_of(3 * MIB, 9))
    yield f
    f.close()


def fake_env(fake, **extra):
    env = clean_env()
    env.update(E2_ENDPOINT=fake.endpoint, E2_BUCKET="b", E2_ACCESS_KEY="AK",
               E2_SECRET_KEY="SK-not-shown", S3TOOL_STATS="1", **extra)
    return env


def fake_get(fake, *args, **extra):
    return subprocess.run(s3tool("get", "obj", *map(str, args)), env=fake_env(fake, **extra),
                          capture_output=True, timeout=60)


def test_resume_after_reset(fake):
    fake.plan = ["reset", "reset"]
    p = fake_get(fake)
    assert p.returncode == 0, p.stderr
    assert p.stdout == fake.data
    assert b"retries 2" in p.stderr
    # the resumed requests ask for the rest, pinned to the first answer's ETag
    assert "range" not in fake.seen[0][2]
    r1 = fake.seen[1][2]
    assert r1["range"] == f"bytes={len(fake.data) // 2}-" and r1["if-match"] == fake.etag
    assert fake.seen[0][1] == "/b/obj"
    for _, _, h in fake.seen:
        assert h["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()
        assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")


def test_resume_range_after_reset(fake):
    fake.plan = ["reset"]
    p = fake_get(fake, 1000, 200000)
    assert p.returncode == 0, p.stderr
    assert p.stdout == fake.data[1000:201000]
    assert fake.seen[1][2]["range"] == f"bytes={1000 + 100000}-{200999}"


def test_stalled_transfer_aborted_and_resumed(fake):
    fake.plan = ["stall"]
    t = time.monotonic()
    p = fake_get(fake, IMGSTORE_LOW_SPEED_TIMEOUT="1")
    assert p.returncode == 0, p.stderr
    assert p.stdout == fake.data
    # curl averages the speed over a few seconds: ~5 s to notice, not 30
    assert time.monotonic() - t < 12
    assert b"retries 1" in p.stderr


def test_retry_503_429_then_ok(fake):
    fake.plan = ["503", "429"]
    p = fake_get(fake)
    assert p.returncode == 0, p.stderr
    assert p.stdout == fake.data and b"retries 2" in p.stderr


def test_5xx_gives_up_within_budget(fake):
    fake.plan = ["503"] * 100
    t = time.monotonic()
    p = fake_get(fake, IMGSTORE_RETRY_BUDGET="1.5")
    assert p.returncode == 1
    assert time.monotonic() - t < 4
    assert b"503 SlowDown" in p.stderr and b"attempts" in p.stderr


def test_403_not_retried(fake):
    fake.plan = ["403"]
    p = fake_get(fake)
    assert p.returncode == 1 and b"403 AccessDenied" in p.stderr
    assert len(fake.seen) == 1
    assert b"SK-not-shown" not in p.stderr


# ---------------------------------------------------------------- TLS

def test_tls_verified(https):
    """Certificates are always checked; E2_CA_BUNDLE (--ca-bundle) or
    AWS_CA_BUNDLE adds the test CA.  The HTTPS file server ignores the
    signature, which is all this needs."""
    data = data_of(300000, 7)
    (https.root / "tlsb").mkdir(exist_ok=True)
    (https.root / "tlsb" / "obj").write_bytes(data)
    env = clean_env()
    env.update(E2_ENDPOINT=https.url("").rstrip("/"), E2_BUCKET="tlsb", E2_ACCESS_KEY="AK",
               E2_SECRET_KEY="SK", IMGSTORE_RETRY_BUDGET="10")
    # (a certificate error is final, so the budget costs nothing; a small one
    # turned a slow TLS handshake under ASan on a loaded machine into a timeout)
    p = subprocess.run(s3tool("get", "obj"), env=env, capture_output=True, timeout=60)
    assert p.returncode == 1 and b"not trusted" in p.stderr and b"--ca-bundle" in p.stderr
    for extra in ({"E2_CA_BUNDLE": https.ca}, {"AWS_CA_BUNDLE": https.ca}):
        p = subprocess.run(s3tool("get", "obj"), env={**env, **extra}, capture_output=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == data
