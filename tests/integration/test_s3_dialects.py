"""S3 dialects (issue 18): what other S3 servers answer, played by a faulting
proxy (faultproxy.py) in front of the real local server, Swift or radosgw
(IMGSTORE_S3_SERVER).  Everything the proxy does not fault is the real
server's answer, so each case also checks that the client's retry lands on
a server that accepts it.
"""
import email.utils
import hashlib
import json
import time

import pytest

from conftest import binary, run
from faultproxy import FaultProxy, Rule, match, reset_after, respond, rewrite, s3_error, \
    truncate_listing
from test_imgfs import Mount

MiB = 1 << 20


@pytest.fixture
def proxy(s3server):
    p = FaultProxy(s3server.port).start()
    yield p
    p.stop()


def via(bucket, proxy, **extra):
    """The bucket's environment with the endpoint pointed at the proxy."""
    env = bucket.env
    env.update(E2_ENDPOINT=proxy.endpoint, **extra)
    return env


def labctl(*args):
    return [binary("labctl"), *args]


def s3tool(*args):
    return [binary("s3tool"), *args]


def data_of(size, seed=0):
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest() * 2048
        i += 1
    return bytes(out[:size])


def upload(bucket, tmp_path, dest, data, env=None, check=0, extra=()):
    src = tmp_path / ("src-" + hashlib.sha256(dest.encode()).hexdigest()[:12])
    src.write_bytes(data)
    return run(labctl("images", "upload", "--source", src, "--destination", dest, *extra),
               env=env or bucket.env, check=check)


SLOWDOWN = s3_error("SlowDown", "Please reduce your request rate.")
INTERNAL = s3_error("InternalError", "We encountered an internal error. Please try again.")


# ------------------------------------------------------- 503 SlowDown, Retry-After

def test_slowdown_retry_after_is_honoured(bucket, proxy, tmp_path):
    data = data_of(300_000)
    key = "images/d/slow.raw"
    proxy.add(Rule(match(method="PUT", key=key),
                   respond(503, SLOWDOWN, {"Retry-After": "2"}), name="slowdown"))
    upload(bucket, tmp_path, "d/slow.raw", data,
           env=via(bucket, proxy, IMGSTORE_RETRY_BUDGET="20"))
    puts = proxy.requests(lambda x: x.method == "PUT" and x.key == key)
    assert [(x.status, x.fault) for x in puts] == [(503, "slowdown"), (200, "")]
    # the jittered backoff alone would have come back within 0.25 s
    assert puts[1].t - puts[0].t >= 2.0
    assert bucket.get(key) == data


def test_slowdown_retry_after_beyond_the_budget_fails_at_once(bucket, proxy, tmp_path):
    data = data_of(300_000)
    key = "images/d/slow.raw"
    proxy.add(Rule(match(method="PUT", key=key),
                   respond(503, SLOWDOWN, {"Retry-After": "600"}), times=100))
    t0 = time.monotonic()
    p = upload(bucket, tmp_path, "d/slow.raw", data, check=1,
               env=via(bucket, proxy, IMGSTORE_RETRY_BUDGET="10"))
    took = time.monotonic() - t0
    assert took < 10, f"waited {took:.1f} s although the server asked for 600"
    assert len(proxy.requests(lambda x: x.method == "PUT" and x.key == key)) == 1
    assert "HTTP 503 SlowDown: Please reduce your request rate." in p.stderr
    assert "the server asked to retry after 600 s, beyond the retry budget" in p.stderr
    assert bucket.keys() == []


# ----------------------------------------------- 500 in the middle of a multipart upload

def test_internal_error_on_a_part_is_retried(bucket, proxy, tmp_path):
    data = data_of(12 * MiB, seed=1)
    key = "images/d/mpu.raw"
    proxy.add(Rule(match(method="PUT", key=key, query="partNumber"),
                   respond(500, INTERNAL), skip=1, name="500"))
    upload(bucket, tmp_path, "d/mpu.raw", data, env=via(bucket, proxy),
           extra=("--part-size", "5M", "--parallel", "1"))
    parts = proxy.requests(lambda x: x.method == "PUT" and x.key == key)
    assert [(x.query["partNumber"], x.status) for x in parts] == \
        [("1", 200), ("2", 500), ("2", 200), ("3", 200)]
    assert bucket.get(key) == data
    assert bucket.pending_uploads() == []
    # the record names the ETag the server has (HEAD), whatever Complete said
    head = bucket.s3.head_object(Bucket=bucket.name, Key=key)
    rec = json.loads(bucket.get("metadata/d/mpu.raw.json"))
    assert rec["etag"] == head["ETag"] and rec["size"] == len(data)


def test_internal_error_that_persists_aborts_the_upload(bucket, proxy, tmp_path):
    data = data_of(12 * MiB, seed=2)
    key = "images/d/mpu.raw"
    proxy.add(Rule(match(method="PUT", key=key, query="partNumber"),
                   respond(500, INTERNAL), skip=1, times=1000, name="500"))
    p = upload(bucket, tmp_path, "d/mpu.raw", data, check=1,
               env=via(bucket, proxy, IMGSTORE_RETRY_BUDGET="3", IMGSTORE_MAX_ATTEMPTS="3"),
               extra=("--part-size", "5M", "--parallel", "1"))
    assert "UploadPart 2 of images/d/mpu.raw: HTTP 500 InternalError" in p.stderr
    aborts = proxy.requests(lambda x: x.method == "DELETE" and "uploadId" in x.query)
    assert [x.status for x in aborts] == [204]
    assert bucket.pending_uploads() == []
    assert bucket.keys() == []


def test_complete_empty_etag_is_read_back_with_head(bucket, proxy, tmp_path):
    """radosgw 16.2 answers CompleteMultipartUpload with <ETag></ETag>; the
    record must carry the ETag that HEAD, GET and listings give."""
    import re
    data = data_of(12 * MiB, seed=4)
    key = "images/d/etag.raw"
    empty = rewrite(lambda body: re.sub(rb"<ETag>[^<]*</ETag>", b"<ETag></ETag>", body))
    proxy.add(Rule(match(method="POST", key=key, query="uploadId"), empty, name="etag"))
    upload(bucket, tmp_path, "d/etag.raw", data, env=via(bucket, proxy),
           extra=("--part-size", "5M"))
    assert [x.fault for x in proxy.requests(lambda x: x.method == "POST")] == ["", "etag"]
    head = bucket.s3.head_object(Bucket=bucket.name, Key=key)["ETag"]
    rec = json.loads(bucket.get("metadata/d/etag.raw.json"))
    assert rec["etag"] == head
    assert head.endswith('-3"')
    # the client library itself (s3_mpu_complete) hands out HEAD's ETag then
    key2 = "other/etag.raw"
    proxy.add(Rule(match(method="POST", key=key2, query="uploadId"), empty, name="etag"))
    src = tmp_path / "etag.raw"
    src.write_bytes(data)
    p = run(s3tool("mpu-put", key2, src, "5M"), env=via(bucket, proxy), check=0)
    assert p.stdout == bucket.s3.head_object(Bucket=bucket.name, Key=key2)["ETag"] + "\n"


def test_complete_etag_other_than_head_writes_no_record(bucket, proxy, tmp_path):
    """An answer whose ETag is not the object's cannot be told from another
    upload that replaced ours meanwhile: no record is written (the image is
    not shown as complete), rather than one whose ETag and block map
    disagree."""
    import re
    data = data_of(12 * MiB, seed=4)
    key = "images/d/etag.raw"
    other = b"&quot;0123456789abcdef0123456789abcdef-3&quot;"
    proxy.add(Rule(match(method="POST", key=key, query="uploadId"),
                   rewrite(lambda body: re.sub(rb"<ETag>[^<]*</ETag>",
                                               b"<ETag>" + other + b"</ETag>", body)),
                   name="etag"))
    p = upload(bucket, tmp_path, "d/etag.raw", data, env=via(bucket, proxy),
               extra=("--part-size", "5M"), check=1)
    assert "was replaced by another upload while this one finished" in p.stderr
    assert "metadata/d/etag.raw.json" not in bucket.keys()


# ------------------------------------------- a connection reset in the middle of a GET

def test_reset_in_a_ranged_get_is_resumed_by_imgfs(bucket, proxy, tmp_path):
    data = data_of(3 * MiB, seed=3)
    upload(bucket, tmp_path, "d/reset.raw", data)  # straight to the server
    key = "images/d/reset.raw"
    proxy.add(Rule(match(method="GET", key=key, header="range"), reset_after(100_000),
                   name="reset"))
    m = Mount(via(bucket, proxy), tmp_path / "mnt", tmp_path / "cache").start()
    try:
        got = (m.path / "d" / "reset.raw").read_bytes()
        stats = m.stats()
    finally:
        m.stop()
    log = m.log.read_text(errors="replace")  # ASan/UBSan builds report here
    assert "Sanitizer" not in log and "runtime error" not in log, log[-5000:]
    assert got == data
    gets = proxy.requests(lambda x: x.method == "GET" and x.key == key)
    reset = [x for x in gets if x.fault == "reset"]
    assert len(reset) == 1 and reset[0].status == 0
    others = [x for x in gets if x is not reset[0]]
    assert all(x.status == 206 for x in others), [(x.headers["range"], x.status) for x in gets]
    # the retry asks for the rest of the same range (readahead runs beside it)
    start, end = (int(v) for v in reset[0].headers["range"][len("bytes="):].split("-"))
    resumed = [x for x in others if x.headers["range"].endswith(f"-{end}")]
    assert len(resumed) == 1, [x.headers["range"] for x in gets]
    rstart = int(resumed[0].headers["range"][len("bytes="):].split("-")[0])
    assert start <= rstart <= start + 100_000
    if rstart > start:  # pinned to the version it began with
        assert resumed[0].headers["if-match"] == \
            bucket.s3.head_object(Bucket=bucket.name, Key=key)["ETag"]
    assert stats["verify_failures"] == 0


# ---------------------------------------------------------- 301 to another region

REDIRECT = s3_error(
    "PermanentRedirect",
    "The bucket you are attempting to access must be addressed using the specified "
    "endpoint. Please send all future requests to this endpoint.",
    Endpoint="s3.eu-central-1.amazonaws.com", Bucket="b")


def test_permanent_redirect_names_the_region_from_the_header(bucket, proxy):
    proxy.add(Rule(lambda x: True, respond(301, REDIRECT,
                                           {"x-amz-bucket-region": "eu-central-1"}),
                   times=100))
    p = run(labctl("images", "list"), env=via(bucket, proxy), check=1)
    assert "HTTP 301 PermanentRedirect" in p.stderr
    assert "the bucket is in region eu-central-1: set E2_REGION=eu-central-1" in p.stderr
    # HEAD: no body, the header alone
    p = run(s3tool("head", "images/x"), env=via(bucket, proxy), check=1)
    assert "HEAD images/x: HTTP 301" in p.stderr
    assert "the bucket is in region eu-central-1: set E2_REGION=eu-central-1" in p.stderr


def test_wrong_region_named_from_the_error_body(bucket, proxy):
    body = s3_error("AuthorizationHeaderMalformed",
                    "The authorization header is malformed; the region 'us-east-1' is "
                    "wrong; expecting 'eu-west-1'", Region="eu-west-1")
    proxy.add(Rule(lambda x: True, respond(400, body), times=100))
    p = run(s3tool("ls", "images/"), env=via(bucket, proxy), check=1)
    assert "HTTP 400 AuthorizationHeaderMalformed" in p.stderr
    assert "the bucket is in region eu-west-1: set E2_REGION=eu-west-1" in p.stderr


# ---------------------------------------------------------------- clock skew

def test_clock_skew_reported_as_such(bucket, proxy):
    now = time.time()
    body = s3_error("RequestTimeTooSkewed",
                    "The difference between the request time and the current time is too "
                    "large.", MaxAllowedSkewMilliseconds="900000")
    server_date = email.utils.formatdate(now + 3600, usegmt=True)
    proxy.add(Rule(lambda x: True, respond(403, body, {"Date": server_date}), times=100))
    p = run(labctl("images", "list"), env=via(bucket, proxy), check=1)
    assert "HTTP 403 RequestTimeTooSkewed" in p.stderr
    assert "check the system clock (the server's is 60 min ahead)" in p.stderr
    assert "E2_SECRET_KEY" not in p.stderr and "E2_ACCESS_KEY" not in p.stderr
    # HEAD: a bare 403; the server's Date tells it apart from a bad key
    p = run(s3tool("head", "images/x"), env=via(bucket, proxy), check=1)
    assert "HEAD images/x: HTTP 403" in p.stderr
    assert "check the system clock (the server's is 60 min ahead)" in p.stderr


# ----------------------------------- ListObjectsV2 truncated without a continuation token

def test_listing_truncated_without_token_goes_on_from_the_last_key(bucket, proxy, tmp_path):
    names = [f"d/img{i}.raw" for i in range(5)]
    for i, n in enumerate(names):
        upload(bucket, tmp_path, n, data_of(1000 + i, seed=i))
    proxy.add(Rule(match(method="GET", query="list-type"), truncate_listing(2), times=1000,
                   name="truncated"))
    p = run(labctl("images", "list"), env=via(bucket, proxy), check=0)
    listed = [line.split()[1] for line in p.stdout.splitlines()[1:]]
    assert listed == names
    lists = proxy.requests(lambda x: "list-type" in x.query
                           and x.query.get("prefix") == "images/")
    assert [x.query.get("start-after") for x in lists] == \
        [None, "images/d/img1.raw", "images/d/img3.raw"]
    assert all("continuation-token" not in x.query for x in lists)
    # s3tool ls: every key once, in order
    p = run(s3tool("ls", "metadata/"), env=via(bucket, proxy), check=0)
    assert [line.split()[-1] for line in p.stdout.splitlines()] == \
        [f"metadata/{n}.json" for n in names]


def test_listing_with_delimiter_truncated_on_a_common_prefix(bucket, proxy):
    for k in ["a/1", "a/2", "b/1", "b/2", "c", "d/1"]:
        bucket.put(k, b"x")
    proxy.add(Rule(match(method="GET", query="list-type"), truncate_listing(2), times=1000))
    p = run(s3tool("ls", "", "/"), env=via(bucket, proxy), check=0)
    assert [line.split()[-1] for line in p.stdout.splitlines()] == ["c", "a/", "b/", "d/"]
