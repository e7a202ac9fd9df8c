"""labctl images upload + list against the real local S3 server."""
import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from conftest import ACCESS_KEY, binary, clean_env, free_port_block, run

MIB = 1 << 20
BLOCK = MIB


def labctl(*args):
    return [binary("labctl"), *args]


def pattern(size, seed=0):
    """Deterministic, not-too-compressible bytes, quick to make."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest() + block[: MIB - 32]
        i += 1
    return bytes(out[:size])


def check_record(bucket, dest, data=None, sha=None, size=None, block_hashes=None, name=None):
    """The record is correct: checksum, size, every block hash, etag."""
    rec = json.loads(bucket.get(f"metadata/{dest}.json"))
    head = bucket.s3.head_object(Bucket=bucket.name, Key=f"images/{dest}")
    if data is not None:
        sha = hashlib.sha256(data).hexdigest()
        size = len(data)
        block_hashes = [hashlib.sha256(data[i:i + BLOCK]).hexdigest()
                        for i in range(0, len(data), BLOCK)]
    assert rec["checksum"] == "sha256:" + sha
    assert rec["size"] == size == head["ContentLength"]
    assert rec["blocks"]["size"] == BLOCK
    assert rec["blocks"]["algorithm"] == "sha256"
    assert rec["blocks"]["hashes"] == block_hashes
    assert rec["etag"].strip('"') == head["ETag"].strip('"')
    if name is not None:
        assert rec["name"] == name
    assert rec["uploadedAt"].endswith("Z")
    return rec


def list_json(bucket):
    p = run(labctl("images", "list", "--json"), env=bucket.env, check=0)
    return {i["destination"]: i for i in json.loads(p.stdout)}


def test_upload_small_round_trip(bucket, tmp_path):
    data = pattern(100_000, seed=1)
    src = tmp_path / "small.raw"
    src.write_bytes(data)
    p = run(labctl("images", "upload", "--source", src, "--destination", "lab/small.raw",
                   "--name", "small"), env=bucket.env, check=0)
    assert "sha256:" + hashlib.sha256(data).hexdigest() in p.stdout
    assert bucket.get("images/lab/small.raw") == data
    check_record(bucket, "lab/small.raw", data, name="small")
    assert bucket.pending_uploads() == []
    item = list_json(bucket)["lab/small.raw"]
    assert item["complete"] is True
    assert item["name"] == "small"
    assert item["size"] == len(data)
    assert item["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert item["uploadedAt"].endswith("Z")


def test_upload_multipart_round_trip(bucket, tmp_path):
    # several parts (8 MiB) and a short last block
    data = pattern(3 * 8 * MIB + 5 * MIB + 12345, seed=2)
    src = tmp_path / "big.qcow2"
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", "big.qcow2"),
        env=bucket.env, check=0)
    assert bucket.get("images/big.qcow2") == data
    rec = check_record(bucket, "big.qcow2", data, name="big.qcow2")
    assert "-" in rec["etag"]  # a multipart ETag
    assert bucket.pending_uploads() == []
    assert bucket.keys() == ["images/big.qcow2", "metadata/big.qcow2.json"]


@pytest.mark.parametrize("signing", ["signed", "unsigned"])
def test_upload_payload_signing(bucket, tmp_path, signing):
    """Part bodies are signed over plain HTTP (the default here) and go out as
    UNSIGNED-PAYLOAD over TLS; the server takes both, and the bytes and the
    record come out the same.  IMGSTORE_PAYLOAD_SIGNING forces either."""
    data = pattern(2 * 8 * MIB + 3 * MIB, seed=7)
    src = tmp_path / "p.raw"
    src.write_bytes(data)
    env = bucket.env
    env["IMGSTORE_LOG"] = "debug"
    if signing == "unsigned":
        env["IMGSTORE_PAYLOAD_SIGNING"] = "unsigned"
    p = run(labctl("images", "upload", "--source", src, "--destination", "p.raw"),
            env=env, check=0)
    want = "(part bodies unsigned: UNSIGNED-PAYLOAD)" if signing == "unsigned" \
        else "(part bodies signed)"
    assert want in p.stderr, p.stderr
    assert bucket.get("images/p.raw") == data
    check_record(bucket, "p.raw", data, name="p.raw")
    assert bucket.pending_uploads() == []


def test_upload_empty_and_stdin(bucket, tmp_path):
    empty = tmp_path / "empty.iso"
    empty.write_bytes(b"")
    run(labctl("images", "upload", "--source", empty, "--destination", "empty.iso"),
        env=bucket.env, check=0)
    check_record(bucket, "empty.iso", b"")
    data = pattern(9 * MIB + 1, seed=3)
    p = subprocess.run(labctl("images", "upload", "--source", "-", "--destination",
                              "piped.raw"), input=data, env=bucket.env, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert bucket.get("images/piped.raw") == data
    check_record(bucket, "piped.raw", data)


def test_upload_replaces_existing(bucket, tmp_path):
    src = tmp_path / "img.raw"
    src.write_bytes(pattern(9 * MIB, seed=4))
    run(labctl("images", "upload", "--source", src, "--destination", "img.raw"),
        env=bucket.env, check=0)
    new = pattern(2 * MIB, seed=5)
    src.write_bytes(new)
    run(labctl("images", "upload", "--source", src, "--destination", "img.raw"),
        env=bucket.env, check=0)
    assert bucket.get("images/img.raw") == new
    check_record(bucket, "img.raw", new)


@pytest.mark.parametrize("size", [1000, 17 * MIB])
def test_upload_checksum_mismatch_leaves_nothing(bucket, tmp_path, size):
    src = tmp_path / "bad.raw"
    src.write_bytes(pattern(size, seed=6))
    wrong = "sha256:" + "0" * 64
    p = run(labctl("images", "upload", "--source", src, "--destination", "bad.raw",
                   "--checksum", wrong), env=bucket.env, check=1)
    assert "checksum mismatch" in p.stderr
    assert bucket.keys() == []
    assert bucket.pending_uploads() == []


def test_upload_checksum_match(bucket, tmp_path):
    data = pattern(10 * MIB, seed=7)
    src = tmp_path / "ok.raw"
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", "ok.raw", "--checksum",
               "sha256:" + hashlib.sha256(data).hexdigest()), env=bucket.env, check=0)
    check_record(bucket, "ok.raw", data)


def test_list_incomplete_images(bucket, tmp_path):
    data = pattern(4096, seed=8)
    src = tmp_path / "good.raw"
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", "good.raw"),
        env=bucket.env, check=0)
    bucket.put("images/foreign.raw", b"not ours")            # no record at all
    bucket.put("images/stale.raw", b"changed after upload")   # a record for other bytes
    bucket.put("metadata/stale.raw.json", bucket.get("metadata/good.raw.json"))
    bucket.put("images/broken.raw", b"x")                     # a record that is not JSON
    bucket.put("metadata/broken.raw.json", b"{not json")
    items = list_json(bucket)
    assert set(items) == {"good.raw", "foreign.raw", "stale.raw", "broken.raw"}
    assert items["good.raw"]["complete"] is True
    for d in ("foreign.raw", "stale.raw", "broken.raw"):
        it = items[d]
        assert it["complete"] is False, it
        assert it["size"] == len(bucket.get(f"images/{d}"))
        for k in ("name", "destination", "size", "checksum", "uploadedAt", "complete"):
            assert k in it
        assert it["checksum"] is None
    # the table for humans
    p = run(labctl("images", "list"), env=bucket.env, check=0)
    lines = p.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DESTINATION"]
    assert any("good.raw" in line and "complete" in line for line in lines)
    assert any("foreign.raw" in line and "INCOMPLETE" in line for line in lines)


def test_list_empty_bucket(bucket):
    assert json.loads(run(labctl("images", "list", "--json"), env=bucket.env, check=0).stdout) == []
    assert "no images" in run(labctl("images", "list"), env=bucket.env, check=0).stdout


def test_wrong_secret(bucket, tmp_path):
    src = tmp_path / "x.raw"
    src.write_bytes(b"x" * 1000)
    env = dict(bucket.env, E2_SECRET_KEY="definitely-wrong-secret")
    for args in (["images", "list"],
                 ["images", "upload", "--source", src, "--destination", "x.raw"]):
        p = run(labctl(*args), env=env, check=1)
        err = p.stderr.lower()
        assert "403" in err or "denied" in err or "signature" in err, p.stderr
        assert "definitely-wrong-secret" not in p.stderr + p.stdout
    assert bucket.keys() == []


def test_server_down_bounded(tmp_path):
    port = free_port_block(1)
    env = clean_env()
    env.update(E2_ENDPOINT=f"http://127.0.0.1:{port}", E2_BUCKET="nope",
               E2_ACCESS_KEY=ACCESS_KEY, E2_SECRET_KEY="testing")
    src = tmp_path / "x.raw"
    src.write_bytes(b"x" * 1000)
    for args in (["images", "list"],
                 ["images", "upload", "--source", src, "--destination", "x.raw"]):
        t0 = time.monotonic()
        p = run(labctl(*args), env=env, check=1, timeout=120)
        assert time.monotonic() - t0 < 90
        assert f"127.0.0.1:{port}" in p.stderr or "connect" in p.stderr.lower(), p.stderr


def test_missing_credentials_is_usage_error(tmp_path):
    p = run(labctl("images", "list"), env=clean_env(), check=2)
    assert "E2_ENDPOINT" in p.stderr


def test_upload_usage_errors(bucket, tmp_path):
    run(labctl("images", "upload", "--destination", "x"), env=bucket.env, check=2)
    run(labctl("images", "upload", "--source", tmp_path / "missing", "--destination", "x"),
        env=bucket.env, check=1)
    for bad in ("/abs", "a/../b", "a//b", "./a", "a/"):
        p = run(labctl("images", "upload", "--source", "/dev/null", "--destination", bad),
                env=bucket.env, check=2)
        assert "destination" in p.stderr
    p = run(labctl("images", "upload", "--source", "/dev/null", "--destination", "x",
                   "--checksum", "md5:abc"), env=bucket.env, check=2)
    assert "--checksum" in p.stderr
    assert bucket.keys() == []


def peak_rss_kib(args, env, cwd=None):
    """Run args under /usr/bin/time (a small C parent: the peak RSS it
    reports is labctl's own, not a copy of this Python process's)."""
    p = run(["/usr/bin/time", "-f", "peak-rss-kib=%M", *args], env=env, cwd=cwd)
    m = re.search(r"peak-rss-kib=(\d+)\s*$", p.stderr)
    assert m, p.stderr
    p.stderr = p.stderr[:m.start()]
    return p, int(m.group(1))


@pytest.mark.slow
def test_upload_1gib_round_trip_bounded_memory(bucket, tmp_path):
    size = 1 << 30
    src = tmp_path / "big.raw"
    sha, blocks = hashlib.sha256(), []
    with open(src, "wb") as f:
        seed = os.urandom(MIB)
        for i in range(size // MIB):
            chunk = hashlib.sha256(b"%d" % i).digest() + seed[32:]
            if i % 7 == 3:
                chunk = bytes(MIB)  # some zero blocks, like a real image
            f.write(chunk)
            sha.update(chunk)
            blocks.append(hashlib.sha256(chunk).hexdigest())
    p, rss = peak_rss_kib(labctl("images", "upload", "--source", src, "--destination",
                                 "big/1g.raw"), bucket.env)
    assert p.returncode == 0, p.stderr
    assert rss < 64 * 1024, f"labctl peak RSS {rss} KiB"
    check_record(bucket, "big/1g.raw", sha=sha.hexdigest(), size=size, block_hashes=blocks)
    # bytes identical: stream the object back with boto3 and compare hashes
    body = bucket.s3.get_object(Bucket=bucket.name, Key="images/big/1g.raw")["Body"]
    back = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * MIB), b""):
        back.update(chunk)
    assert back.hexdigest() == sha.hexdigest()
    assert bucket.pending_uploads() == []
    item = list_json(bucket)["big/1g.raw"]
    assert item["complete"] is True and item["size"] == size
