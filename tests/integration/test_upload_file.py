"""labctl images upload of a regular file: its parts are read from the file
as they are sent (pipeline_send_file), as few and as large as keep the
workers busy, while the checksum and block map are computed in order."""
import os
import subprocess
import time

import pytest

from conftest import run
from test_history import slow_parts
from test_labctl_upload import MIB, check_record, labctl, pattern


def upload_first(bucket, src, dest, data):
    """Upload data as dest's first version; the bucket as it is then."""
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", dest),
        env=bucket.env, check=0)
    return {k: bucket.get(k) for k in bucket.keys()}


def multipart_count(bucket, dest):
    etag = bucket.s3.head_object(Bucket=bucket.name, Key=f"images/{dest}")["ETag"]
    return int(etag.strip('"').rsplit("-", 1)[1])


@pytest.mark.parametrize("args,parts", [
    ([], 3),                            # one part per worker (default 3)
    (["--parallel", "2"], 2),
    (["--parallel", "1"], 1),           # one part of the whole file
    (["--part-size", "16M"], 3),        # 16 + 16 + 8 MiB and the tail
    (["--part-size", "5M"], 9),
], ids=["default", "parallel2", "parallel1", "part16M", "part5M"])
def test_file_parts(bucket, tmp_path, args, parts):
    data = pattern(40 * MIB + 4321, seed=31)
    src = tmp_path / "f.raw"
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", "f.raw", *args),
        env=bucket.env, check=0)
    assert bucket.get("images/f.raw") == data
    check_record(bucket, "f.raw", data, name="f.raw")
    assert multipart_count(bucket, "f.raw") == parts
    assert bucket.pending_uploads() == []


def test_file_zero_blocks_and_sha512(bucket, tmp_path):
    """Zero blocks take the precomputed hash; a sha512 --checksum is checked
    in the same ordered pass and kept as manifestChecksum."""
    import hashlib
    import json
    data = bytes(9 * MIB) + pattern(5 * MIB, seed=32) + bytes(3 * MIB + 7)
    src = tmp_path / "z.raw"
    src.write_bytes(data)
    want = "sha512:" + hashlib.sha512(data).hexdigest()
    run(labctl("images", "upload", "--source", src, "--destination", "z.raw",
               "--checksum", want), env=bucket.env, check=0)
    assert bucket.get("images/z.raw") == data
    rec = check_record(bucket, "z.raw", data)
    assert json.loads(bucket.get("metadata/z.raw.json"))["manifestChecksum"] == want
    assert rec["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_file_checksum_mismatch_stores_nothing(bucket, tmp_path):
    src = tmp_path / "m.raw"
    before = upload_first(bucket, src, "m.raw", pattern(9 * MIB + 1, seed=33))
    src.write_bytes(pattern(30 * MIB, seed=34))
    p = run(labctl("images", "upload", "--source", src, "--destination", "m.raw",
                   "--checksum", "sha256:" + "0" * 64), env=bucket.env, check=1)
    assert "checksum mismatch for images/m.raw: expected sha256:" + "0" * 64 in p.stderr
    assert "nothing was stored" in p.stderr
    assert {k: bucket.get(k) for k in bucket.keys()} == before
    assert bucket.pending_uploads() == []


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_file_changed_during_upload_stores_nothing(bucket, tmp_path, change):
    """Parts are read from the file as they go out, and the checksum from a
    read of its own: a file written to meanwhile would get a record of bytes
    that were not sent.  The upload fails instead and stores nothing."""
    src = tmp_path / "c.raw"
    before = upload_first(bucket, src, "c.raw", pattern(9 * MIB + 2, seed=35))
    src.write_bytes(pattern(40 * MIB, seed=36))
    proxy = slow_parts(bucket, delay=1.0)
    try:
        env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
        proc = subprocess.Popen(labctl("images", "upload", "--source", src, "--destination",
                                       "c.raw", "--part-size", "5M", "--parallel", "1"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while not bucket.pending_uploads():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no multipart upload started"
            time.sleep(0.05)
        if change == "rewrite":
            with open(src, "r+b") as f:  # same size, other bytes, new mtime
                f.seek(20 * MIB)
                f.write(b"changed")
            st = os.stat(src)
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        else:
            os.truncate(src, 12 * MIB)
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.stop()
    assert proc.returncode == 1, err
    if change == "rewrite":
        assert ("the file changed while it was uploaded (size or modification time); "
                "nothing was stored: upload it again once it is complete") in err, err
    else:
        assert ("the file got shorter" in err
                or "the file changed while it was uploaded" in err), err
    assert {k: bucket.get(k) for k in bucket.keys()} == before
    assert bucket.pending_uploads() == []
