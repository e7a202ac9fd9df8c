"""The bucket is input, not trust (issue 12): a record index, a record or a
listing, however crafted, costs imgfs and labctl no more memory than the
listing allows, and an index entry is used only when it is verified.

Every crafted object goes into the real local S3 server.  Memory is the
peak RSS of the process (labctl: wait4's ru_maxrss; imgfs: VmHWM before it
is unmounted); without the sanitizers labctl also runs under RLIMIT_AS.
"""
import gzip
import json
import os
import re
import resource
import subprocess
import uuid
import zlib

import pytest

from conftest import RECORD_INDEX, binary
from test_imgfs import Mount, put_raw, record_for
from test_record_index import N_GOOD, expected_mount, fill

MiB = 1 << 20
# what a listing of a dozen small records may make a reader hold: far above
# the programs' own footprint (ASan included), far below what the crafted
# objects below used to cost
RSS_LIMIT = 200 * MiB
AS_LIMIT = 512 * MiB


def labctl(*args):
    return [binary("labctl"), *args]


def sanitized():
    """The ASan build maps terabytes of shadow memory: RLIMIT_AS cannot
    apply to it, only the RSS measurement does."""
    p = subprocess.run(["ldd", binary("labctl")], capture_output=True, text=True)
    return "libasan" in p.stdout


def run_measured(args, env, tmp_path, check=0):
    """Run args; (stdout, stderr, peak RSS in bytes).  Without ASan under
    RLIMIT_AS too.  GNU time measures: the rusage of a child forked from
    pytest itself would count pytest's own high-water mark."""
    tag = uuid.uuid4().hex[:8]
    rss_file = tmp_path / f"rss-{tag}"

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] +
                       [str(a) for a in args], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True,
                       preexec_fn=None if sanitized() else limit)
    assert p.returncode == check, f"{args} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr[-5000:]
    return p.stdout, p.stderr, int(rss_file.read_text().split()[-1]) * 1024


def debug_env(bucket):
    env = bucket.env
    env["IMGSTORE_LOG"] = "debug"
    return env


def listing(bucket, tmp_path):
    """(`images list --json` by destination, records taken from the index,
    stderr, peak RSS)."""
    out, err, rss = run_measured(labctl("images", "list", "--json"), debug_env(bucket),
                                 tmp_path)
    m = re.search(r"(\d+) checksum record\(s\): (\d+) from " + re.escape(RECORD_INDEX), err)
    return ({i["destination"]: i for i in json.loads(out)}, int(m.group(2)) if m else 0, err,
            rss)


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def mounted(bucket, tmp_path):
    """A fresh mount: {path: size}, records taken from the index, the log,
    the daemon's peak RSS."""
    tag = uuid.uuid4().hex[:8]
    m = Mount(debug_env(bucket), tmp_path / f"mnt-{tag}", tmp_path / f"cache-{tag}")
    m.start()
    try:
        seen = {}
        for d, dirs, files in os.walk(m.path):
            if d == str(m.path):
                dirs.remove(".imgstore")
            for f in files:
                p = os.path.join(d, f)
                seen[os.path.relpath(p, m.path)] = os.stat(p).st_size
        rss = vm_hwm(m.proc.pid)
    finally:
        m.stop()
    log = m.log.read_text(errors="replace")
    assert "Sanitizer" not in log and "runtime error" not in log, log[-5000:]
    hit = re.search(r"record index: (\d+) of (\d+) record\(s\) taken", log)
    return seen, int(hit.group(1)) if hit else 0, log, rss


def gzip_stream(chunks):
    """gzip of the concatenated chunks, made without holding them."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + 15)
    out = [z.compress(c) for c in chunks]
    out.append(z.flush())
    return b"".join(out)


def bombs():
    """Small objects at the index key that inflate to a lot: blanks in an
    index (512 MiB: larger than the listing allows even compressed; 128 MiB
    in 125 KB), and 12 MiB of empty objects, which a JSON parser turns into
    about a GiB of nodes."""
    head = b'{"version": 1, "records": ['
    yield "blanks", gzip_stream([head] + [b" " * (64 * MiB)] * 8 + [b"]}"])
    yield "blanks-128M", gzip_stream([head] + [b" " * (64 * MiB)] * 2 + [b"]}"])
    yield "objects", gzip_stream([head] + [b"{}," * (1 * MiB)] * 4 + [b"{}]}"])


# ------------------------------------------------ finding 3: index bomb

@pytest.mark.parametrize("kind,bomb", list(bombs()), ids=lambda v: v if isinstance(v, str) else "")
def test_index_bomb_is_not_inflated(bucket, tmp_path, kind, bomb):
    fill(bucket)
    without, used, _, _ = listing(bucket, tmp_path)
    assert used == 0
    assert len(bomb) < 1 * MiB
    bucket.put(RECORD_INDEX, bomb)

    items, used, err, rss = listing(bucket, tmp_path)
    assert items == without
    assert used == 0
    assert rss < RSS_LIMIT, f"labctl images list peaked at {rss >> 20} MiB"
    assert "not using the record index" in err and "more than" in err, err

    seen, used, log, rss = mounted(bucket, tmp_path)
    assert set(seen) == expected_mount()
    assert used == 0
    assert rss < RSS_LIMIT, f"imgfs peaked at {rss >> 20} MiB"
    assert "not using the record index" in log and "more than" in log, log[-3000:]


# ------------------------------------------ finding 4: record GET caps

HUGE = 200 * MiB


def put_huge_record(bucket):
    """huge.raw: a small image whose record object is 200 MiB of JSON-ish
    bytes (no record is that large: RECINDEX_MAX_RECORD is 81 MiB)."""
    bucket.put("images/huge.raw", b"huge image")
    body = b'{"name": "' + b"x" * (HUGE - 12) + b'"}'
    bucket.put("metadata/huge.raw.json", body)
    return len(body)


def manifest(tmp_path, dests):
    lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
             "metadata:", "  name: lab", "spec:", "  images:"]
    for i, d in enumerate(dests):
        lines += [f"    - name: img{i}", "      source:",
                  f"        url: https://example.org/{i}.raw",
                  "        checksum: 'sha256:" + "0" * 64 + "'",
                  f"      destination: '{d}'"]
    m = tmp_path / "repo" / "images" / "images.yaml"
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text("\n".join(lines) + "\n")
    return m


@pytest.mark.parametrize("with_index", [False, True])
def test_huge_record_is_not_fetched(bucket, tmp_path, with_index):
    fill(bucket)
    size = put_huge_record(bucket)
    if with_index:
        run_measured(labctl("images", "index"), bucket.env, tmp_path)
    problem = (f"metadata/huge.raw.json has {size} bytes, more than the 84934656 a "
               "checksum record may have; not read")

    items, _, err, rss = listing(bucket, tmp_path)
    assert rss < RSS_LIMIT, f"labctl images list peaked at {rss >> 20} MiB"
    assert not items["huge.raw"]["complete"]
    assert items["huge.raw"]["problem"] == "invalid checksum record " + problem
    assert problem in err
    assert sorted(d for d, i in items.items() if i["complete"]) == sorted(expected_mount())

    seen, _, log, rss = mounted(bucket, tmp_path)
    assert rss < RSS_LIMIT, f"imgfs peaked at {rss >> 20} MiB"
    assert set(seen) == expected_mount()
    assert problem in log, log[-3000:]

    # labctl sync reads one record at a time (no listing): the hard cap
    m = manifest(tmp_path, ["huge.raw"])
    out, err, rss = run_measured(labctl("images", "sync", "--dry-run", "--manifest", m),
                                 bucket.env, tmp_path)
    assert rss < RSS_LIMIT, f"labctl images sync peaked at {rss >> 20} MiB"
    assert "metadata/huge.raw.json" in out and "more than" in out, out


def test_get_all_stops_at_its_cap(bucket):
    """s3_get_all refuses an object larger than its cap by the Content-Length,
    before reading it."""
    data = os.urandom(8 * MiB)
    bucket.put("metadata/big.json", data)
    env = dict(bucket.env, S3TOOL_STATS="1")
    s3tool = binary("s3tool")
    p = subprocess.run([s3tool, "get-all", "metadata/big.json", str(len(data))], env=env,
                       capture_output=True)
    assert p.returncode == 0 and p.stdout == data, p.stderr
    p = subprocess.run([s3tool, "get-all", "metadata/big.json", str(len(data) - 1)], env=env,
                       capture_output=True)
    assert p.returncode == 2, p.stderr
    err = p.stderr.decode()
    assert ("GET metadata/big.json: the object has more than 8388607 bytes, the most "
            "expected; not read") in err, err
    got = int(re.search(r"bytes_in (\d+)", err).group(1))
    assert got <= 512 * 1024, err  # at most one receive buffer, not the object


# ------------------------------------- finding 7: only verified entries

def put_multipart(bucket, key, data):
    """One-part multipart upload: an ETag that is not the MD5 of the bytes
    ("<hex>-1")."""
    s3 = bucket.s3
    up = s3.create_multipart_upload(Bucket=bucket.name, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=bucket.name, Key=key, UploadId=up, PartNumber=1, Body=data)
    r = s3.complete_multipart_upload(
        Bucket=bucket.name, Key=key, UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    listed = s3.list_objects_v2(Bucket=bucket.name, Prefix=key)["Contents"][0]["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}-1"', listed) and r["ETag"] == listed, (r, listed)
    return listed


def same_length(a, b):
    """a and b (JSON texts) padded with blanks to one length."""
    n = max(len(a), len(b))
    return a.ljust(n), b.ljust(n)


def test_entry_under_a_non_md5_etag_is_not_trusted(bucket, tmp_path):
    """Records written by multipart upload have ETags that are not the MD5
    of their bytes: an index entry under such an ETag cannot be checked, so
    it is not used, even with the listed ETag and size."""
    fill(bucket)
    forged = {}
    # badsize.raw: its record does not describe the object (size 1001); the
    # forged entry holds one that does.  img05: renamed.
    etag = bucket.s3.head_object(Bucket=bucket.name, Key="images/badsize.raw")["ETag"]
    real, fake = same_length(json.dumps(record_for(b"x" * 1001, etag, "badsize")),
                             json.dumps(record_for(b"x" * 1000, etag, "badsize")))
    forged["metadata/badsize.raw.json"] = (real, fake)
    rec = json.loads(bucket.get("metadata/d/img05.raw.json"))
    real = json.dumps(rec)
    rec["name"] = "forged"
    real, fake = same_length(real, json.dumps(rec))
    forged["metadata/d/img05.raw.json"] = (real, fake)
    entries = []
    for key, (real, fake) in forged.items():
        mp_etag = put_multipart(bucket, key, real.encode())
        entries.append({"key": key, "etag": mp_etag, "json": fake})
    without, _, _, _ = listing(bucket, tmp_path)
    assert not without["badsize.raw"]["complete"]
    assert without["d/img05.raw"]["name"] == json.loads(real)["name"] != "forged"
    mnt_without, _, _, _ = mounted(bucket, tmp_path)

    # an index of every record as it is, but the two forged entries; the
    # multipart records are fetched on every rebuild, which still finds the
    # index up to date
    run_measured(labctl("images", "index"), bucket.env, tmp_path)
    out, _, _ = run_measured(labctl("images", "index"), bucket.env, tmp_path)
    assert "already up to date" in out, out
    doc = json.loads(gzip.decompress(bucket.get(RECORD_INDEX)))
    doc["records"] = [e for e in doc["records"] if e["key"] not in forged] + entries
    bucket.put(RECORD_INDEX, gzip.compress(json.dumps(doc).encode()))

    items, used, _, _ = listing(bucket, tmp_path)
    assert used == N_GOOD + 2 - 2  # all but the two multipart records
    assert items == without
    seen, used, _, _ = mounted(bucket, tmp_path)
    assert used == N_GOOD + 2 - 2
    assert seen == mnt_without
    assert set(seen) == expected_mount()
    # and a rebuild puts the real records back
    out, _, _ = run_measured(labctl("images", "index"), bucket.env, tmp_path)
    assert "written" in out, out
    ix = {e["key"]: e for e in json.loads(gzip.decompress(bucket.get(RECORD_INDEX)))["records"]}
    for key, (real, _) in forged.items():
        assert ix[key]["json"] == real


# ------------------------- response caps of the S3 client (store/s3/s3.c)

class Flood:
    """A server that answers everything with 64 MiB (a real S3 server will
    not): a listing page, an error body, a whole object for a ranged GET."""

    SIZE = 64 * MiB

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading
        flood = self
        self.sent = {}

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if "list-type=2" in self.path:
                    status, head = 200, b"<?xml version='1.0'?><ListBucketResult>"
                    unit = b"<Contents><Key>k</Key><Size>1</Size></Contents>"
                elif self.path.endswith("/err"):
                    status, unit = 404, b" "
                    head = (b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code>"
                            b"<Message>gone</Message></Error>")
                else:
                    status, head, unit = 200, b"", b"0123456789abcdef"
                self.send_response(status)
                self.send_header("Content-Length", str(flood.SIZE))
                self.end_headers()
                chunk = (head + unit * (MiB // len(unit)))[:MiB]
                sent = 0
                try:
                    while sent < flood.SIZE:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        chunk = (unit * (MiB // len(unit) + 1))[:MiB]
                except OSError:
                    pass
                flood.sent[self.path] = sent
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("E2_", "AWS_", "SOPS_"))}
        self.env.update(E2_ENDPOINT=f"http://127.0.0.1:{self.httpd.server_address[1]}",
                        E2_BUCKET="b", E2_ACCESS_KEY="AK", E2_SECRET_KEY="SK",
                        S3TOOL_STATS="1", IMGSTORE_MAX_ATTEMPTS="1")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flood():
    f = Flood()
    yield f
    f.close()


def s3tool_stats(flood, *args):
    p = subprocess.run([binary("s3tool"), *args], env=flood.env, capture_output=True,
                       timeout=120)
    err = p.stderr.decode(errors="replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    return p, err, int(re.search(r"bytes_in (\d+)", err).group(1))


def test_listing_page_is_capped(flood):
    """A listing page of 1000 keys is a few MiB; 16 MiB is the most read."""
    p, err, got = s3tool_stats(flood, "ls", "images/")
    assert p.returncode == 1, err
    assert "ListObjectsV2 of bucket b (prefix 'images/'): response too large" in err, err
    assert got <= 16 * MiB + 512 * 1024, err


def test_error_body_is_capped(flood):
    """Only the first 64 KiB of an error answer are read (Code, Message)."""
    p, err, got = s3tool_stats(flood, "get", "err")
    assert p.returncode == 1, err
    assert "GET err: HTTP 404 NoSuchKey: gone" in err, err
    assert got <= 64 * 1024 + 512 * 1024, err


def test_ranged_get_stops_at_the_range(flood):
    """A server that ignores Range sends the whole object: the client takes
    the range it asked for and stops."""
    p, err, got = s3tool_stats(flood, "get", "obj", "16", "100")
    assert p.returncode == 0, err
    assert p.stdout == (b"0123456789abcdef" * 8)[16:116]
    assert got <= 1 * MiB, err
